"""URL converters. ``name`` stops at "/" and ":" so ``/x/{id}:action`` routes work."""
from django.urls import register_converter


class NameConverter:
    regex = r"[^/:]+"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(NameConverter, "name")
