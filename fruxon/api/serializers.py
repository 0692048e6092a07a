"""Serializer bases: strict input (unknown fields are a 400, never ignored)."""
from __future__ import annotations

from collections.abc import Mapping

from rest_framework import serializers


class StrictSerializer(serializers.Serializer):
    """Input serializer that refuses unknown keys and non-object bodies."""

    def to_internal_value(self, data):
        if not isinstance(data, Mapping):
            raise serializers.ValidationError({"body": ["Expected a JSON object."]})
        writable = {name for name, field in self.fields.items() if not field.read_only}
        unknown = sorted(set(data) - writable)
        if unknown:
            raise serializers.ValidationError({key: ["Unknown field."] for key in unknown})
        return super().to_internal_value(data)


def validated(serializer_class, data, *, partial: bool = False, context: dict | None = None) -> dict:
    """Validate ``data`` or raise the 400 error shape; returns validated_data."""
    serializer = serializer_class(data=data, partial=partial, context=context or {})
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data
