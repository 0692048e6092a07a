"""The API's JSON parser: DRF's, refusing what PostgreSQL cannot store.

DRF's ``JSONParser`` already refuses NaN and Infinity (``STRICT_JSON``). A NUL
character (``"\\u0000"``) or a lone surrogate (``"\\ud800"``) is accepted by
Python's JSON decoder, but PostgreSQL refuses both in ``jsonb`` and in text
columns, so a body carrying one would fail at the write with a 500 and a
half-done request. They are refused here, before any view runs, as malformed
input (400 ``invalid_request``). The raw body is scanned first (bytes, in C);
only a body that may hold one is walked.
"""
from __future__ import annotations

import io

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


class StoredJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        raw = stream.read() if stream is not None else b""
        data = super().parse(io.BytesIO(raw), media_type, parser_context)
        if UNSTORABLE_ESCAPE_BYTES.search(raw) and _holds_unstorable(data):
            raise ParseError("strings may not contain the NUL character (\\u0000) or lone surrogates.")
        return data
