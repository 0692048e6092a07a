"""Choice fields whose OpenAPI enum has one fixed name: ``RunStatusEnum``, ``RunSourceEnum``.

Run statuses and sources appear in several response shapes (a run, a run
with its spans, a conversation turn) and as query filters. drf-spectacular
names an enum after its field, and ``status``/``source`` mean other choice
sets elsewhere in the API, so shared uses would get hash-suffixed names and
warnings. These fields reference one named component instead.
"""
from __future__ import annotations

from drf_spectacular.extensions import OpenApiSerializerFieldExtension
from drf_spectacular.plumbing import ResolvedComponent
from rest_framework import serializers

from ..models import RUN_SOURCES, RUN_STATUSES


class NamedChoiceField(serializers.ChoiceField):
    """A ChoiceField documented as ``#/components/schemas/<enum_name>``."""

    choice_values: list[str] = []
    enum_name = ""
    enum_description = ""

    def __init__(self, **kwargs):
        super().__init__(self.choice_values, **kwargs)


class RunStatusField(NamedChoiceField):
    choice_values = RUN_STATUSES
    enum_name = "RunStatusEnum"
    enum_description = "how a run ended"


class RunSourceField(NamedChoiceField):
    choice_values = RUN_SOURCES
    enum_name = "RunSourceEnum"
    enum_description = "what started a run"


class NamedChoiceFieldExtension(OpenApiSerializerFieldExtension):
    target_class = NamedChoiceField
    match_subclasses = True

    def map_serializer_field(self, auto_schema, direction):
        field = self.target
        component = ResolvedComponent(
            name=field.enum_name, type=ResolvedComponent.SCHEMA, object=field.enum_name,
            schema={"type": "string", "enum": list(field.choice_values), "description": field.enum_description},
        )
        auto_schema.registry.register_on_missing(component)
        return component.ref
