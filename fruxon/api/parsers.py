"""The API's JSON parser: DRF's, refusing what PostgreSQL cannot store.

DRF's ``JSONParser`` already refuses NaN and Infinity (``STRICT_JSON``). A NUL
character (``"\\u0000"``) is valid JSON, but PostgreSQL refuses it in ``jsonb``
and in text columns, so a body carrying one would fail at the write with a 500
and a half-done request. It is refused here, before any view runs, as
malformed input (400 ``invalid_request``).
"""
from __future__ import annotations

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser


def _has_nul(value) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


class StoredJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        data = super().parse(stream, media_type, parser_context)
        if _has_nul(data):
            raise ParseError("strings may not contain the NUL character (\\u0000).")
        return data
