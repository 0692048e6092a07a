"""Value helpers shared by the metrics: JSON parsing of outputs, text, numbers, display.

Contracts:

* :func:`parse_json_text` is strict JSON (``NaN``/``Infinity`` are refused); a text
  that is exactly one fenced code block (```` ```json ... ``` ````, as models like
  to answer) is parsed from inside the fence. It raises :class:`NotJson`.
* :func:`to_text` renders a value for text metrics: a string as itself, ``None``
  as the empty string, anything else as compact JSON.
* :func:`to_decimal` reads a finite number (``int``, ``float``, ``Decimal`` or a
  numeric string) exactly; booleans are not numbers. ``None`` when it is not one.
* :func:`show` is a short, JSON-looking rendering for reasons (truncated).
"""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal, InvalidOperation
from typing import Any

_FENCE_RE = re.compile(r"^\s*```[A-Za-z0-9_-]*[ \t]*\r?\n(.*?)\r?\n?[ \t]*```\s*$", re.DOTALL)
_NUMBER_RE = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")
SHOW_LIMIT = 80


class NotJson(ValueError):
    """The text is not a JSON document."""


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads_strict(text: str) -> Any:
    """``json.loads`` that refuses ``NaN``, ``Infinity`` and ``-Infinity``."""
    return json.loads(text, parse_constant=_refuse_constant)


def parse_json_text(text: str) -> Any:
    """Parse ``text`` as JSON, or the content of a single fenced code block; raise :class:`NotJson`."""
    candidates = [text]
    fenced = _FENCE_RE.match(text)
    if fenced:
        candidates.append(fenced.group(1))
    for candidate in candidates:
        try:
            return loads_strict(candidate)
        except (ValueError, RecursionError):
            continue
    raise NotJson(f"not JSON: {show(text)}")


def to_text(value: Any) -> str:
    """A string as itself, ``None`` as ``''``, any other value as compact JSON."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json.dumps(value, ensure_ascii=False, default=str)


def is_number(value: Any) -> bool:
    """``int``, ``float`` or ``Decimal``, but not ``bool``."""
    return isinstance(value, (int, float, Decimal)) and not isinstance(value, bool)


def to_decimal(value: Any) -> Decimal | None:
    """The exact finite number ``value`` denotes (numbers and numeric strings), else ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, Decimal):
        return value if value.is_finite() else None
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value)) if math.isfinite(value) else None
    if isinstance(value, str) and _NUMBER_RE.match(value.strip()):
        try:
            return Decimal(value.strip())
        except InvalidOperation:
            return None
    return None


def numbers_equal(a: Any, b: Any) -> bool:
    """Numeric equality of two numbers (``1 == 1.0``); False when either is not a finite number."""
    left, right = to_decimal(a), to_decimal(b)
    return left is not None and right is not None and left == right


def format_decimal(value: Decimal) -> str:
    """``Decimal`` as plain text without exponent or trailing zeros (``1E+3`` -> ``1000``)."""
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "") else text


def show(value: Any, limit: int = SHOW_LIMIT) -> str:
    """A short rendering for human reasons: JSON form, cut to ``limit`` characters with an ellipsis."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
