"""Validation of an execute call's ``input`` against the spec's declared ``inputs``.

Contract of :func:`validate_inputs`:

* the input must be a JSON object;
* every declared input with ``"required": true`` must be present and not null;
* a present value must match its declared type (``string``, ``number``,
  ``integer``, ``boolean``, ``object``, ``array``); ``true``/``false`` are never
  numbers, and an integral float such as ``3.0`` counts as an integer (JSON does
  not distinguish them) and is returned as ``3``;
* names that are not declared are rejected, so a typo fails loudly instead of
  silently rendering an empty prompt;
* all problems are reported at once in :class:`InputError.errors`, each with a
  ``path`` of the form ``input.<name>``.

The returned dict holds every declared input: given values, then declared
``default`` values, then ``None`` for optional inputs that were not given (they
render as the empty string in templates).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import InputError

INPUT_TYPES = ("string", "number", "integer", "boolean", "object", "array")


def type_matches(type_name: str, value: Any) -> bool:
    """True when ``value`` (parsed JSON) is of the declared input type."""
    if isinstance(value, bool):
        return type_name == "boolean"
    if type_name == "string":
        return isinstance(value, str)
    if type_name == "number":
        return isinstance(value, (int, float))
    if type_name == "integer":
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if type_name == "object":
        return isinstance(value, Mapping)
    if type_name == "array":
        return isinstance(value, list)
    return False


def _article(type_name: str) -> str:
    return "an" if type_name[0] in "aeiou" else "a"


def validate_inputs(declared: Mapping[str, Mapping[str, Any]] | None, given: Any) -> dict[str, Any]:
    """Check ``given`` against ``declared`` (the spec's ``inputs``); return the inputs to render with.

    Raises :class:`InputError` listing every problem.
    """
    declared = declared or {}
    if given is None:
        given = {}
    if not isinstance(given, Mapping):
        raise InputError([{"path": "input", "message": "must be an object"}])

    errors: list[dict[str, str]] = []
    for name in given:
        if name not in declared:
            errors.append({"path": f"input.{name}", "message": "is not a declared input"})

    values: dict[str, Any] = {}
    for name, declaration in declared.items():
        type_name = declaration.get("type", "string")
        value = given.get(name)
        if value is None:
            if declaration.get("required", False):
                errors.append({"path": f"input.{name}", "message": f"is required ({type_name})"})
            values[name] = declaration.get("default")
        elif not type_matches(type_name, value):
            errors.append(
                {"path": f"input.{name}", "message": f"must be {_article(type_name)} {type_name}"}
            )
        elif type_name == "integer":
            values[name] = int(value)
        else:
            values[name] = value

    if errors:
        raise InputError(errors)
    return values
