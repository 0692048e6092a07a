"""Token counts before a provider reports real ones: an upper bound for budgets, a guess for ``fruxon-local``.

* :func:`input_token_bound` is what budget reservations use: an UPPER BOUND
  of the input tokens a provider can bill for a request. A byte-level BPE
  tokenizer (OpenAI's, Llama's, Qwen's, Mistral's, ...) never produces more
  tokens than the UTF-8 bytes of the text it encodes, so the bound is the
  UTF-8 byte count of everything sent (every message's content, role, name,
  tool-call id and tool calls, and the tool definitions as JSON) plus fixed
  overheads for what a provider's chat template adds around them:
  :data:`PER_MESSAGE_OVERHEAD_TOKENS` per message (role and separator markers:
  OpenAI counts 3-4, ChatML, Llama 3 and Gemma templates 4-6),
  :data:`PER_REQUEST_OVERHEAD_TOKENS` per request (the reply priming and
  begin-of-text markers), and, when tools are offered,
  :data:`TOOLS_OVERHEAD_TOKENS` once (the provider's fixed tool-use
  instructions) plus :data:`PER_TOOL_OVERHEAD_TOKENS` per tool (the wrapper a
  template renders each definition in).
* :func:`max_output_tokens` is the output bound: the ``max_tokens`` the
  ``openai`` provider sends (reasoning tokens included), the spec's
  ``maxTokens`` or :data:`~agents.engine.spec.DEFAULT_MAX_TOKENS`. The
  provider and the reservation both call it, so what is sent and what is
  reserved cannot disagree.
* :func:`count_tokens` / :func:`estimate_input_tokens` (``ceil(chars / 4)``)
  are only a realistic-looking default for ``fruxon-local``'s reported usage;
  never a bound.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from .spec import DEFAULT_MAX_TOKENS

PER_MESSAGE_OVERHEAD_TOKENS = 8
PER_REQUEST_OVERHEAD_TOKENS = 16
TOOLS_OVERHEAD_TOKENS = 128
PER_TOOL_OVERHEAD_TOKENS = 16


def count_tokens(chars: int) -> int:
    return math.ceil(chars / 4)


def _message_chars(message: dict[str, Any]) -> int:
    content = message.get("content")
    chars = len(content) if isinstance(content, str) else 0
    if message.get("tool_calls"):
        chars += len(json.dumps(message["tool_calls"], ensure_ascii=False))
    return chars


def estimate_input_tokens(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> int:
    """``fruxon-local``'s default input usage: ``ceil(chars / 4)`` of the messages and tool schemas. Not a bound."""
    chars = sum(_message_chars(message) for message in messages)
    if tools:
        chars += len(json.dumps(tools, ensure_ascii=False))
    return count_tokens(chars)


def utf8_length(text: str) -> int:
    """UTF-8 bytes of ``text`` (ASCII, the common case, without encoding it)."""
    if text.isascii():
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


def _json_length(value: Any) -> int:
    # Default separators (with spaces): the looser of the forms a template may render.
    return utf8_length(json.dumps(value, ensure_ascii=False))


def _message_bytes(message: Mapping[str, Any]) -> int:
    size = 0
    for key, value in message.items():
        if isinstance(value, str):
            size += utf8_length(value)
        elif value is not None:  # content parts, tool_calls
            size += _json_length(value)
    return size


def input_token_bound(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> int:
    """An upper bound of the input tokens a provider can bill for ``messages`` and ``tools`` (module docstring)."""
    tokens = PER_REQUEST_OVERHEAD_TOKENS
    for message in messages:
        tokens += PER_MESSAGE_OVERHEAD_TOKENS + _message_bytes(message)
    if tools:
        tokens += TOOLS_OVERHEAD_TOKENS + PER_TOOL_OVERHEAD_TOKENS * len(tools) + _json_length(tools)
    return tokens


def max_output_tokens(model: Mapping[str, Any]) -> int:
    """The output limit a call is sent with (and reserved for): ``maxTokens``, else the default."""
    return model.get("maxTokens", DEFAULT_MAX_TOKENS)
