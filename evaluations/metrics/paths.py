"""Paths into JSON values, for a metric's ``field`` and for jsonMatch/numeric ``path``.

Syntax: an optional ``$`` root, then segments ``.key``, ``[3]`` (a list index,
negative counts from the end) or ``["any key"]`` (a JSON string, for keys with
dots or brackets). ``$.order.items[0].sku`` and ``$["a.b"]`` are paths; ``$``
alone is the whole value. A dotted segment made of digits (``items.0``)
indexes a list and names a key in an object.

``field`` is written without the root (``answer``, ``order.items.0.sku``); the
word ``output`` is the root of the run's output, so ``output`` is the whole
output and ``output.answer`` is the same as ``answer`` (a top-level key named
``output`` is ``output.output``). jsonMatch and numeric ``path`` must start
with ``$``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .values import show

# ("key", name) or ("index", n)
Segment = tuple[str, Any]

_TOKEN_RE = re.compile(r"""\.([^.\[\]"']+)|\[(-?\d+)\]|\[("(?:[^"\\]|\\.)*")\]""")
_IDENTIFIER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_INDEX_RE = re.compile(r"^-?[0-9]+$")


class PathSyntaxError(ValueError):
    """The text is not a path."""


class PathMissing(LookupError):
    """The path selects nothing in the value; the message says where it stopped."""


def parse_path(text: str) -> tuple[Segment, ...]:
    """Parse a ``$``-rooted path; raise :class:`PathSyntaxError` with a human message."""
    if not isinstance(text, str) or not text.startswith("$"):
        raise PathSyntaxError('must start with "$", like $.order.items[0].sku')
    segments: list[Segment] = []
    position = 1
    while position < len(text):
        match = _TOKEN_RE.match(text, position)
        if match is None:
            raise PathSyntaxError(f"cannot read the path at character {position + 1} ({text[position:]!r}); "
                                  'use .key, [index] or ["key"] segments')
        key, index, quoted = match.groups()
        if key is not None:
            segments.append(("key", key))
        elif index is not None:
            segments.append(("index", int(index)))
        else:
            try:
                segments.append(("key", json.loads(quoted)))
            except ValueError as exc:
                raise PathSyntaxError(f"bad quoted key {quoted}: {exc}") from None
        position = match.end()
    return tuple(segments)


def parse_field(text: str) -> tuple[Segment, ...]:
    """Parse a ``field`` (``answer``, ``output.answer``, ``$.answer``); ``output`` alone is ``()``."""
    if not isinstance(text, str) or not text:
        raise PathSyntaxError("must be a non-empty path like answer or order.items.0.sku")
    if text.startswith("$"):
        return parse_path(text)
    if text == "output":
        return ()
    if text.startswith(("output.", "output[")):
        text = text[len("output"):]
    elif not text.startswith("["):
        text = "." + text
    return parse_path("$" + text)


def format_path(segments: tuple[Segment, ...]) -> str:
    """The canonical ``$``-rooted text of ``segments``."""
    parts = ["$"]
    for kind, value in segments:
        if kind == "index":
            parts.append(f"[{value}]")
        elif _IDENTIFIER_RE.match(value):
            parts.append(f".{value}")
        else:
            parts.append(f"[{json.dumps(value, ensure_ascii=False)}]")
    return "".join(parts)


def child_path(path: str, key: str) -> str:
    """``$.a`` + ``b`` -> ``$.a.b``; keys that are not identifiers use ``["..."]``."""
    if _IDENTIFIER_RE.match(key):
        return f"{path}.{key}"
    return f"{path}[{json.dumps(key, ensure_ascii=False)}]"


def select(value: Any, segments: tuple[Segment, ...]) -> Any:
    """The value at ``segments``; raise :class:`PathMissing` naming where the path stopped."""
    current = value
    for depth, (kind, part) in enumerate(segments):
        here = format_path(segments[:depth])
        if isinstance(current, dict) and kind == "key":
            if part not in current:
                raise PathMissing(f"{here} has no key {show(part)}")
            current = current[part]
        elif isinstance(current, list) and (kind == "index" or _INDEX_RE.match(part)):
            index = int(part)
            if not -len(current) <= index < len(current):
                raise PathMissing(f"{here} has {len(current)} items, so there is no item {index}")
            current = current[index]
        else:
            expected = "a list" if kind == "index" else "an object"
            actual = ("an object" if isinstance(current, dict)
                      else "a list" if isinstance(current, list) else show(current))
            raise PathMissing(f"{here} is {actual}, not {expected}")
    return current
