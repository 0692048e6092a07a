"""Provider ``fruxon-local``: deterministic and offline, for demos and tests.

Model config keys: ``name`` (default ``local``), ``latencyMs`` (simulated wait
for every call), ``chunks`` and ``chunkDelayMs`` (streaming defaults for every entry,
below), ``script`` (a list of entries), ``temperature``, ``maxTokens``
(accepted for parity with real providers, ignored).

The k-th call within one step's tool loop (k = the number of assistant messages
already in the conversation) plays ``script[k]``; the last entry repeats. An
entry::

    {"reply": "text with {{input.x}}, {{steps.NAME.output}} and {{prompt}}",
     "toolCalls": [{"name": "lookup_order", "arguments": {...}}],
     "usage": {"inputTokens": 1, "outputTokens": 1, "cachedInputTokens": 0, "reasoningTokens": 0},
     "latencyMs": 200,
     "chunks": ["Hel", "lo {{input.x}}"] | 4,
     "chunkDelayMs": 30,
     "error": "provider_error" | "provider_timeout"}

``{{prompt}}`` is the step's rendered user prompt. Without ``reply`` the answer
is ``"echo: " + prompt`` (or empty when the entry makes tool calls). Missing usage
counts default to ``ceil(chars / 4)`` of the input (messages and tool schemas)
and of the reply. ``latencyMs`` (entry, else model) is slept and reported as
``provider_ms``; when it would pass the deadline the provider sleeps until the
deadline and raises :class:`ProviderTimeout`, as a hung real provider would.
``error`` fails the call after the latency.

Streaming, scripted: the reply is delivered in pieces. ``chunks`` is either the list
of pieces (each a template like ``reply``; the reply is their concatenation, so an
entry gives ``reply`` or a list of ``chunks``, not both) or a number of nearly equal
pieces to cut the reply into (default 1). ``latencyMs`` is the wait before the first
piece (time to first token), ``chunkDelayMs`` (entry, else model; default 0) the wait
before each later one. A streamed call (the engine streams the run's output step when
its caller listens to events) hands each piece over when its wait ends; a call that is
not streamed waits the same total and returns the whole reply, so both give the same
output, usage and provider time. ``error`` with chunks fails the call after the
pieces: a provider error mid-stream. The deadline cuts a stream like a latency.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..aio import run_sync
from ..errors import ProviderError, ProviderTimeout
from ..templating import render_for_trace
from ..tokens import count_tokens, estimate_input_tokens, utf8_length
from .base import ChatRequest, ChatResponse, OnDelta, ToolCall, Usage

if TYPE_CHECKING:
    from ..transport import Progress


def _last_user_prompt(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user" and isinstance(message.get("content"), str):
            return message["content"]
    return ""


def split_evenly(text: str, count: int) -> list[str]:
    """``text`` cut into ``count`` nearly equal pieces (fewer when it is shorter), in order."""
    count = max(1, min(count, len(text) or 1))
    size, extra = divmod(len(text), count)
    pieces, start = [], 0
    for index in range(count):
        end = start + size + (1 if index < extra else 0)
        pieces.append(text[start:end])
        start = end
    return pieces


class LocalProvider:
    """``sleep`` may be a coroutine function (default :func:`asyncio.sleep`) or a plain one."""

    def __init__(self, *, sleep: Callable[[float], Any] = asyncio.sleep):
        self._sleep = sleep

    async def _pause(self, seconds: float) -> None:
        waited = self._sleep(seconds)
        if inspect.isawaitable(waited):
            await waited

    async def _wait(self, latency_ms: float, deadline: float, waited_ms: float) -> float:
        """Sleep ``latency_ms`` but not past ``deadline`` (past it, raise :class:`ProviderTimeout`);
        return ``waited_ms`` plus the milliseconds slept (the provider time: no wait, none)."""
        if latency_ms <= 0:
            return waited_ms
        started = time.monotonic()
        remaining = deadline - started
        if latency_ms / 1000.0 > remaining:
            await self._pause(max(0.0, remaining))
            raise ProviderTimeout("fruxon-local: simulated latency passes the run deadline",
                                  provider_ms=waited_ms + (time.monotonic() - started) * 1000.0)
        await self._pause(latency_ms / 1000.0)
        return waited_ms + (time.monotonic() - started) * 1000.0

    def complete(self, request: ChatRequest, *, deadline: float) -> ChatResponse:
        """The sync form of :meth:`acomplete` (not streamed), on the calling thread's loop."""
        return run_sync(self.acomplete(request, deadline=deadline))

    async def acomplete(self, request: ChatRequest, *, deadline: float, progress: Progress | None = None,
                        on_delta: OnDelta | None = None) -> ChatResponse:
        if progress is not None:
            progress.sent = True  # the simulated provider has the request at once
            progress.streaming = on_delta is not None
        model = request.model
        turn = sum(1 for message in request.messages if message.get("role") == "assistant")
        script = model.get("script") or []
        entry: dict[str, Any] = script[min(turn, len(script) - 1)] if script else {}
        prompt = _last_user_prompt(request.messages)
        tool_calls = [
            ToolCall(id=f"call_{turn}_{index}", name=call["name"], arguments=dict(call.get("arguments") or {}))
            for index, call in enumerate(entry.get("toolCalls") or [])
        ]
        context = {**request.context, "prompt": prompt}
        chunks = entry.get("chunks", model.get("chunks", 1))
        if isinstance(chunks, list):
            pieces = [render_for_trace(piece, context) for piece in chunks]
            reply = "".join(pieces)
        else:
            if "reply" in entry:
                reply = render_for_trace(entry["reply"], context)
            else:
                reply = "" if tool_calls else f"echo: {prompt}"
            pieces = split_evenly(reply, int(chunks)) if reply else []
        chunk_delay = entry.get("chunkDelayMs", model.get("chunkDelayMs", 0))

        provider_ms = await self._wait(entry.get("latencyMs", model.get("latencyMs", 0)), deadline, 0.0)
        for index, piece in enumerate(pieces):
            if index:
                provider_ms = await self._wait(chunk_delay, deadline, provider_ms)
            if on_delta is not None and piece:
                if progress is not None:
                    progress.streamed_bytes += utf8_length(piece)
                    progress.chunks += 1
                await on_delta(piece)

        if entry.get("error") == "provider_timeout":
            raise ProviderTimeout("fruxon-local: simulated provider timeout", provider_ms=provider_ms)
        if entry.get("error") == "provider_error":
            raise ProviderError("fruxon-local: simulated provider error", provider_ms=provider_ms)

        given = entry.get("usage") or {}
        usage = Usage(
            input_tokens=given.get("inputTokens", estimate_input_tokens(request.messages, request.tools)),
            cached_input_tokens=given.get("cachedInputTokens", 0),
            output_tokens=given.get("outputTokens", count_tokens(len(reply))),
            reasoning_tokens=given.get("reasoningTokens", 0),
        )
        return ChatResponse(content=reply, tool_calls=tool_calls, usage=usage, provider_ms=provider_ms)
