"""Input validation against the spec's declared inputs."""

from __future__ import annotations

import pytest

from agents.engine.errors import InputError
from agents.engine.inputs import validate_inputs

DECLARED = {
    "customer": {"type": "string", "required": True},
    "count": {"type": "integer"},
    "ratio": {"type": "number"},
    "flag": {"type": "boolean"},
    "meta": {"type": "object"},
    "tags": {"type": "array", "default": ["none"]},
}


def errors_of(given):
    with pytest.raises(InputError) as caught:
        validate_inputs(DECLARED, given)
    return caught.value.errors


def test_valid_input_is_returned_with_defaults_and_absent_optionals():
    values = validate_inputs(DECLARED, {"customer": "Acme", "count": 3, "ratio": 0.5})
    assert values == {"customer": "Acme", "count": 3, "ratio": 0.5, "flag": None, "meta": None, "tags": ["none"]}


def test_missing_required_input_is_named():
    assert errors_of({"count": 1}) == [{"path": "input.customer", "message": "is required (string)"}]


def test_wrong_type_is_named():
    assert errors_of({"customer": 5}) == [{"path": "input.customer", "message": "must be a string"}]


@pytest.mark.parametrize("name", ["count", "ratio"])
def test_bool_is_not_a_number(name):
    assert errors_of({"customer": "a", name: True})[0]["path"] == f"input.{name}"


def test_integral_float_counts_as_integer_but_fraction_does_not():
    assert validate_inputs(DECLARED, {"customer": "a", "count": 3.0})["count"] == 3
    assert errors_of({"customer": "a", "count": 3.5}) == [{"path": "input.count", "message": "must be an integer"}]


def test_unknown_input_is_rejected():
    assert errors_of({"customer": "a", "custmer": "typo"}) == [
        {"path": "input.custmer", "message": "is not a declared input"}]


def test_all_problems_are_reported_together():
    paths = {error["path"] for error in errors_of({"meta": [], "tags": {}, "extra": 1})}
    assert paths == {"input.customer", "input.meta", "input.tags", "input.extra"}


def test_input_must_be_an_object():
    with pytest.raises(InputError) as caught:
        validate_inputs(DECLARED, ["customer"])
    assert caught.value.errors == [{"path": "input", "message": "must be an object"}]


def test_null_optional_input_means_absent():
    assert validate_inputs(DECLARED, {"customer": "a", "flag": None})["flag"] is None
