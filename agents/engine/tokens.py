"""Token estimates: the engine's one heuristic, ``ceil(chars / 4)``.

Used for budget reservations and for ``fruxon-local`` default usage, so both
agree on what a prompt "costs" before a provider reports real counts.
"""

from __future__ import annotations

import json
import math
from typing import Any


def count_tokens(chars: int) -> int:
    return math.ceil(chars / 4)


def _message_chars(message: dict[str, Any]) -> int:
    content = message.get("content")
    chars = len(content) if isinstance(content, str) else 0
    if message.get("tool_calls"):
        chars += len(json.dumps(message["tool_calls"], ensure_ascii=False))
    return chars


def estimate_input_tokens(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> int:
    """Tokens of the messages plus the tool schemas (both are billed as input)."""
    chars = sum(_message_chars(message) for message in messages)
    if tools:
        chars += len(json.dumps(tools, ensure_ascii=False))
    return count_tokens(chars)
