"""Structural comparison of JSON values: subset matching (jsonMatch) and equality.

Scalars compare by kind: numbers numerically (``1 == 1.0``; a boolean is never
a number), strings exactly (or through a ``normalize`` function), ``null`` only
with ``null``.

:func:`subset_match` counts the *leaves* of the expected value (scalars, and
empty objects/lists, which count as one leaf each) that the actual value
matches:

* objects: every expected key must be present with a matching value; extra
  keys in the actual value are fine;
* lists, ``list_mode="exact"``: same length, matched element by element; a
  length mismatch fails every leaf of that list;
* lists, ``list_mode="contains"``: each expected element must fully match some
  element of the actual list (elements may be reused; order is free); an
  element with no full match earns the leaves of its best partial match.

``list_mode`` applies to every list in the value. ``passed`` holds exactly when
every leaf matched, and ``mismatch`` then is ``None``; otherwise it describes
the first mismatch with its path (``$.order.items[0].sku: expected "A", got "B"``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .paths import child_path
from .values import is_number, numbers_equal, show

Normalize = Callable[[str], str]
LIST_MODES = ("exact", "contains")


@dataclass(frozen=True)
class MatchResult:
    """``matched`` of ``total`` expected leaves matched; ``mismatch`` describes the first failure."""

    matched: int
    total: int
    mismatch: str | None

    @property
    def passed(self) -> bool:
        return self.matched == self.total

    @property
    def score(self) -> float:
        return self.matched / self.total


def leaf_count(value: Any) -> int:
    """Scalars and empty containers are one leaf; containers add up their children."""
    if isinstance(value, dict):
        return sum(leaf_count(child) for child in value.values()) or 1
    if isinstance(value, list):
        return sum(leaf_count(child) for child in value) or 1
    return 1


def scalar_equal(expected: Any, actual: Any, normalize: Normalize | None = None) -> bool:
    """Equality of two non-container values by JSON kind (see the module docstring)."""
    if isinstance(expected, bool) or isinstance(actual, bool):
        return isinstance(expected, bool) and isinstance(actual, bool) and expected == actual
    if is_number(expected) or is_number(actual):
        return is_number(expected) and is_number(actual) and numbers_equal(expected, actual)
    if isinstance(expected, str) and isinstance(actual, str):
        return normalize(expected) == normalize(actual) if normalize else expected == actual
    if expected is None or actual is None:
        return expected is None and actual is None
    return type(expected) is type(actual) and expected == actual


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return f"a list of {len(value)} items"
    return show(value)


def subset_match(expected: Any, actual: Any, *, list_mode: str = "exact", path: str = "$") -> MatchResult:
    """How much of ``expected`` ``actual`` contains (see the module docstring)."""
    matched, mismatch = _subset(expected, actual, path, list_mode)
    return MatchResult(matched, leaf_count(expected), mismatch)


def _subset(expected: Any, actual: Any, path: str, list_mode: str) -> tuple[int, str | None]:
    """(matched leaves, first mismatch) of ``expected`` within ``actual``."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return 0, f"{path}: expected an object, got {_describe(actual)}"
        if not expected:
            return 1, None
        matched, first = 0, None
        for key, child in expected.items():
            where = child_path(path, str(key))
            if key in actual:
                count, why = _subset(child, actual[key], where, list_mode)
            else:
                count, why = 0, f"{where} is missing"
            matched += count
            first = first or why
        return matched, first
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return 0, f"{path}: expected a list, got {_describe(actual)}"
        if list_mode == "contains":
            return _contains(expected, actual, path)
        if len(expected) != len(actual):
            return 0, f"{path}: expected {len(expected)} items, got {len(actual)}"
        if not expected:
            return 1, None
        matched, first = 0, None
        for index, (want, got) in enumerate(zip(expected, actual)):
            count, why = _subset(want, got, f"{path}[{index}]", list_mode)
            matched += count
            first = first or why
        return matched, first
    if scalar_equal(expected, actual):
        return 1, None
    return 0, f"{path}: expected {show(expected)}, got {_describe(actual)}"


def _contains(expected: list, actual: list, path: str) -> tuple[int, str | None]:
    if not expected:
        return 1, None
    matched, first = 0, None
    for index, want in enumerate(expected):
        needed = leaf_count(want)
        best = 0
        for got in actual:
            count, _ = _subset(want, got, path, "contains")
            best = max(best, count)
            if best == needed:
                break
        matched += best
        if best < needed and first is None:
            first = f"{path}[{index}]: no item of the output list matches {show(want)}"
    return matched, first


def first_difference(expected: Any, actual: Any, *, path: str = "$", normalize: Normalize | None = None) -> str | None:
    """``None`` when the values are structurally equal; else the first difference, with its path.

    Objects need the same keys, lists the same length and equal elements in order.
    ``normalize`` applies to every pair of strings compared.
    """
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return f"{path}: expected an object, got {_describe(actual)}"
        for key, child in expected.items():
            where = child_path(path, str(key))
            if key not in actual:
                return f"{where} is missing"
            why = first_difference(child, actual[key], path=where, normalize=normalize)
            if why:
                return why
        for key in actual:
            if key not in expected:
                return f"{child_path(path, str(key))} is not expected"
        return None
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return f"{path}: expected a list, got {_describe(actual)}"
        if len(expected) != len(actual):
            return f"{path}: expected {len(expected)} items, got {len(actual)}"
        for index, (want, got) in enumerate(zip(expected, actual)):
            why = first_difference(want, got, path=f"{path}[{index}]", normalize=normalize)
            if why:
                return why
        return None
    if isinstance(actual, (dict, list)) or not scalar_equal(expected, actual, normalize):
        return f"{path}: expected {show(expected)}, got {_describe(actual)}"
    return None
