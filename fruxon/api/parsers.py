"""The API's JSON parser: DRF's, refusing what PostgreSQL cannot store.

DRF's ``JSONParser`` already refuses NaN and Infinity (``STRICT_JSON``). A NUL
character (``"\\u0000"``) or a lone surrogate (``"\\ud800"``) is accepted by
Python's JSON decoder, but PostgreSQL refuses both in ``jsonb`` and in text
columns, so a body carrying one would fail at the write with a 500 and a
half-done request. They are refused here, before any view runs, as malformed
input (400 ``invalid_request``). The raw body is scanned first (bytes, in C);
only a body that may hold one is walked.

Nesting is bounded too (``FRUXON_MAX_JSON_DEPTH``, default 64): every walk over
a request body after this point (validation, templates, hashing, rendering) may
then recurse safely. A body nested deeper, even one too deep for Python's own
decoder (which raises ``RecursionError``), is a 400 ``invalid_request``. Only a
body with more brackets than the limit may be that deep, so only such a body
is measured.
"""
from __future__ import annotations

import io
import json

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

from fruxon.db import UNSTORABLE_CHAR, UNSTORABLE_ESCAPE_BYTES


def _holds_unstorable(value) -> bool:
    stack = [value]
    while stack:  # iterative: nesting depth is the decoder's business, not a RecursionError here
        item = stack.pop()
        if isinstance(item, str):
            if UNSTORABLE_CHAR.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def json_depth_exceeds(value, limit: int) -> bool:
    """Whether ``value`` nests objects/arrays more than ``limit`` deep (iteratively)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


class StoredJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        raw = stream.read() if stream is not None else b""
        limit = settings.FRUXON_MAX_JSON_DEPTH
        too_deep = ParseError(f"JSON may nest objects and arrays at most {limit} deep.")
        try:
            data = super().parse(io.BytesIO(raw), media_type, parser_context)
        except RecursionError:  # deeper than Python's decoder goes
            raise too_deep from None
        if raw.count(b"[") + raw.count(b"{") > limit and json_depth_exceeds(data, limit):
            raise too_deep
        if UNSTORABLE_ESCAPE_BYTES.search(raw) and _holds_unstorable(data):
            raise ParseError("strings may not contain the NUL character (\\u0000) or lone surrogates.")
        return data


class BoundedJSONDecoder(json.JSONDecoder):
    """The same depth bound for JSON typed into a form (``forms.JSONField(decoder=...)`` in the admin).

    Django's form field turns a ``JSONDecodeError`` into "Enter a valid JSON." but lets a
    ``RecursionError`` through (a 500); this decoder raises the former for both kinds of too deep.
    """

    def decode(self, s, *args, **kwargs):
        limit = settings.FRUXON_MAX_JSON_DEPTH
        try:
            value = super().decode(s, *args, **kwargs)
        except RecursionError:
            raise json.JSONDecodeError(f"nested deeper than {limit} levels", s, 0) from None
        if s.count("[") + s.count("{") > limit and json_depth_exceeds(value, limit):
            raise json.JSONDecodeError(f"nested deeper than {limit} levels", s, 0)
        return value
