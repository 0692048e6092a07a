"""Provider ``fruxon-local``: deterministic and offline, for demos and tests.

Model config keys: ``name`` (default ``local``), ``latencyMs`` (simulated wait
for every call), ``script`` (a list of entries), ``temperature``, ``maxTokens``
(accepted for parity with real providers, ignored).

The k-th call within one step's tool loop (k = the number of assistant messages
already in the conversation) plays ``script[k]``; the last entry repeats. An
entry::

    {"reply": "text with {{input.x}}, {{steps.NAME.output}} and {{prompt}}",
     "toolCalls": [{"name": "lookup_order", "arguments": {...}}],
     "usage": {"inputTokens": 1, "outputTokens": 1, "cachedInputTokens": 0, "reasoningTokens": 0},
     "latencyMs": 200,
     "error": "provider_error" | "provider_timeout"}

``{{prompt}}`` is the step's rendered user prompt. Without ``reply`` the answer
is ``"echo: " + prompt`` (or empty when the entry makes tool calls). Missing usage
counts default to ``ceil(chars / 4)`` of the input (messages and tool schemas)
and of the reply. ``latencyMs`` (entry, else model) is slept and reported as
``provider_ms``; when it would pass the deadline the provider sleeps until the
deadline and raises :class:`ProviderTimeout`, as a hung real provider would.
``error`` fails the call after the latency.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..errors import ProviderError, ProviderTimeout
from ..templating import render_for_trace
from ..tokens import count_tokens, estimate_input_tokens
from .base import ChatRequest, ChatResponse, ToolCall, Usage


def _last_user_prompt(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user" and isinstance(message.get("content"), str):
            return message["content"]
    return ""


class LocalProvider:
    def __init__(self, *, sleep: Callable[[float], None] = time.sleep):
        self._sleep = sleep

    def _wait(self, latency_ms: float, deadline: float) -> float:
        """Sleep ``latency_ms`` but not past ``deadline``; return the milliseconds slept."""
        if latency_ms <= 0:
            return 0.0
        started = time.monotonic()
        remaining = deadline - started
        if latency_ms / 1000.0 > remaining:
            self._sleep(max(0.0, remaining))
            raise ProviderTimeout("fruxon-local: simulated latency passes the run deadline",
                                  provider_ms=(time.monotonic() - started) * 1000.0)
        self._sleep(latency_ms / 1000.0)
        return (time.monotonic() - started) * 1000.0

    def complete(self, request: ChatRequest, *, deadline: float) -> ChatResponse:
        model = request.model
        turn = sum(1 for message in request.messages if message.get("role") == "assistant")
        script = model.get("script") or []
        entry: dict[str, Any] = script[min(turn, len(script) - 1)] if script else {}
        provider_ms = self._wait(entry.get("latencyMs", model.get("latencyMs", 0)), deadline)

        if entry.get("error") == "provider_timeout":
            raise ProviderTimeout("fruxon-local: simulated provider timeout", provider_ms=provider_ms)
        if entry.get("error") == "provider_error":
            raise ProviderError("fruxon-local: simulated provider error", provider_ms=provider_ms)

        prompt = _last_user_prompt(request.messages)
        tool_calls = [
            ToolCall(id=f"call_{turn}_{index}", name=call["name"], arguments=dict(call.get("arguments") or {}))
            for index, call in enumerate(entry.get("toolCalls") or [])
        ]
        if "reply" in entry:
            reply = render_for_trace(entry["reply"], {**request.context, "prompt": prompt})
        else:
            reply = "" if tool_calls else f"echo: {prompt}"

        given = entry.get("usage") or {}
        usage = Usage(
            input_tokens=given.get("inputTokens", estimate_input_tokens(request.messages, request.tools)),
            cached_input_tokens=given.get("cachedInputTokens", 0),
            output_tokens=given.get("outputTokens", count_tokens(len(reply))),
            reasoning_tokens=given.get("reasoningTokens", 0),
        )
        return ChatResponse(content=reply, tool_calls=tool_calls, usage=usage, provider_ms=provider_ms)
