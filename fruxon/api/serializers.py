"""Serializer bases: strict input.

JSON clients deserve exact answers, so input serializers here refuse what
DRF would silently coerce or drop: unknown keys, non-object bodies, numbers
where strings are expected ("value": 123), strings where booleans or integers
are expected ("true", "5").
"""
from __future__ import annotations

from collections.abc import Mapping

from rest_framework import serializers

_EXPECT = (
    (serializers.BooleanField, (bool,), "a boolean"),
    (serializers.IntegerField, (int,), "an integer"),
    (serializers.FloatField, (int, float), "a number"),
    (serializers.DecimalField, (int, float, str), "a number"),
    (serializers.DateTimeField, (str,), "an ISO 8601 date-time string"),
    (serializers.ChoiceField, (str,), "a string"),
    (serializers.CharField, (str,), "a string"),
)


def _type_error(field, value) -> str | None:
    if value is None:
        return None
    for cls, types, label in _EXPECT:
        if isinstance(field, cls):
            wrong_bool = isinstance(value, bool) and bool not in types
            return None if isinstance(value, types) and not wrong_bool else f"Expected {label}."
    if isinstance(field, serializers.ListField) and isinstance(value, list):
        for index, item in enumerate(value):
            message = _type_error(field.child, item)
            if message:
                return f"Item {index}: {message}"
    return None


class StrictSerializer(serializers.Serializer):
    """Input serializer that refuses unknown keys, non-object bodies and loose types."""

    def to_internal_value(self, data):
        if not isinstance(data, Mapping):
            raise serializers.ValidationError({"body": ["Expected a JSON object."]})
        writable = {name: field for name, field in self.fields.items() if not field.read_only}
        errors = {key: ["Unknown field."] for key in sorted(set(data) - set(writable))}
        for name, field in writable.items():
            if name in data and (message := _type_error(field, data[name])):
                errors[name] = [message]
        if errors:
            raise serializers.ValidationError(errors)
        return super().to_internal_value(data)


def validated(serializer_class, data, *, partial: bool = False, context: dict | None = None) -> dict:
    """Validate ``data`` or raise the 400 error shape; returns validated_data."""
    serializer = serializer_class(data=data, partial=partial, context=context or {})
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data
