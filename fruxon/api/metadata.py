"""OPTIONS answers: what an endpoint is, never a probe of objects.

DRF's ``SimpleMetadata`` describes the PUT/POST forms by calling ``get_object()``
for the caller's permission checks, which assumes a model queryset on every view
and turns OPTIONS on a missing object into a 404 or a crash. The OpenAPI schema
at /v1/schema is the description of the API; OPTIONS says the name, the
description and the media types only.
"""
from rest_framework.metadata import SimpleMetadata


class Metadata(SimpleMetadata):
    def determine_metadata(self, request, view):
        return {"name": view.get_view_name(), "description": view.get_view_description(),
                "renders": [r.media_type for r in view.renderer_classes],
                "parses": [p.media_type for p in view.parser_classes]}
