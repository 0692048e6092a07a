"""Provider ``openai``: the OpenAI-compatible chat-completions wire format over httpx.

Covers OpenAI, Azure, Anthropic's compatible endpoint, Ollama, vLLM, llama.cpp
server and LM Studio. Model config keys: ``name`` (sent as ``model``),
``baseUrl`` (default ``https://api.openai.com/v1``; the request goes to
``{baseUrl}/chat/completions``), ``apiKey`` (sent as ``Authorization: Bearer``),
``headers`` (extra headers, e.g. Azure's ``api-key``), ``temperature``,
``maxTokens`` (sent as ``max_tokens``; always sent, default 1024, from
:func:`agents.engine.tokens.max_output_tokens`, the same value the budget
reservation bounds the answer with).

Retries: up to ``max_retries`` (3) more attempts on HTTP 429, HTTP 5xx and on
failures to reach the provider (connect errors, a connection dropped before any
answer). The wait is ``Retry-After`` (seconds) when the provider sends one, else
exponential backoff with jitter; a wait that would pass the run deadline is not
taken and the last failure is raised. Other 4xx answers are not retried.

Errors: :class:`ProviderTimeout` when the run deadline passes while waiting,
:class:`ProviderError` otherwise. Messages carry the HTTP status the provider
answered and nothing else from it: never its body, a transport exception's text,
the resolved address or anything that tells an open port from a closed one (a
run's error is readable by its viewers; a base URL is chosen by an editor).
A destination the egress policy refuses (:mod:`..egress`) fails at once, without
retries, with :data:`..egress.DENIED_MESSAGE`.

Streaming (``on_delta`` given): the request adds ``"stream": true`` and
``"stream_options": {"include_usage": true}``; the answer's server-sent events are read as
they come: ``choices[0].delta.content`` pieces go to ``on_delta``, ``delta.tool_calls``
pieces are assembled by ``index`` (``id`` and ``function.name`` as given, ``arguments``
concatenated), the chunk with ``usage`` gives the usage (read exactly as a non-streamed
answer's), ``data: [DONE]`` ends it. A failure before the first chunk is retried as above;
after it nothing is retried (part of the answer is out): a stream that breaks off, or an
``error`` event, is a :class:`ProviderError`. A stream without a usage chunk is flagged
(``usage_reported=False``) so the engine bills its bound.

The call runs on the run's event loop over a pooled ``httpx.AsyncClient``; ``complete`` is
the sync form (the calling thread's loop, :func:`agents.engine.aio.run_sync`).
"""

from __future__ import annotations

import asyncio
import inspect
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from .. import egress
from ..aio import run_sync
from ..errors import ProviderError, ProviderTimeout
from ..limits import loads_bounded
from ..tokens import max_output_tokens, utf8_length
from ..transport import (
    DeadlineReached,
    HttpReply,
    Progress,
    ResponseTooLarge,
    StreamReply,
    apost_json,
    apost_stream,
    default_async_client,
)
from .base import ChatRequest, ChatResponse, OnDelta, ToolCall, Usage

DEFAULT_BASE_URL = "https://api.openai.com/v1"
# Failures where the provider never produced an answer: safe to send again.
_RETRYABLE_TRANSPORT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError)


def _ms_since(started: float) -> float:
    return (time.monotonic() - started) * 1000.0


def _retry_after(reply: HttpReply) -> float | None:
    value = reply.headers.get("retry-after")
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP-date: fall back to backoff
    return seconds if seconds is not None and seconds >= 0 else None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def parse_usage(usage: Any) -> Usage:
    """Read ``prompt_tokens``, ``completion_tokens`` and their cached/reasoning details."""
    if not isinstance(usage, dict):
        return Usage()
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return Usage(
        input_tokens=_int(usage.get("prompt_tokens")),
        cached_input_tokens=_int(prompt_details.get("cached_tokens")) if isinstance(prompt_details, dict) else 0,
        output_tokens=_int(usage.get("completion_tokens")),
        reasoning_tokens=(_int(completion_details.get("reasoning_tokens"))
                          if isinstance(completion_details, dict) else 0),
    )


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # some compatible servers answer with content parts
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON; forwarding them would fail later, far from the cause.
    raise ValueError(f"{name} is not valid JSON")


def parse_tool_calls(raw: Any) -> list[ToolCall]:
    calls: list[ToolCall] = []
    for index, item in enumerate(raw or []):
        function = item.get("function") or {}
        arguments_text = function.get("arguments") or "{}"
        arguments: Any
        error = None
        try:
            arguments = (loads_bounded(arguments_text, parse_constant=_reject_constant)
                         if isinstance(arguments_text, str) else arguments_text)
        except ValueError:
            arguments, error = {}, "arguments are not valid JSON"
        if not isinstance(arguments, dict):
            arguments, error = {}, "arguments must be a JSON object"
        calls.append(ToolCall(id=str(item.get("id") or f"call_{index}"), name=str(function.get("name", "")),
                              arguments=arguments, arguments_error=error))
    return calls


def parse_completion(data: Any) -> tuple[str, list[ToolCall], Usage]:
    """Parse a chat.completion body; raises ``ProviderError`` when it is not one."""
    try:
        message = data["choices"][0]["message"]
        return _content_text(message.get("content")), parse_tool_calls(message.get("tool_calls")), \
            parse_usage(data.get("usage"))
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise ProviderError(f"malformed chat completion from the provider ({type(exc).__name__})") from exc


def build_body(request: ChatRequest, *, stream: bool = False) -> dict[str, Any]:
    model = request.model
    body: dict[str, Any] = {
        "model": model.get("name", ""),
        "messages": request.messages,
        "max_tokens": max_output_tokens(model),  # what the budget reserved for the answer, reasoning included
    }
    if request.tools:
        body["tools"] = request.tools
    if "temperature" in model:
        body["temperature"] = model["temperature"]
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def build_headers(model: Mapping[str, Any]) -> dict[str, str]:
    headers = {"Accept": "application/json"}
    headers.update(model.get("headers") or {})
    if model.get("apiKey"):
        headers["Authorization"] = f"Bearer {model['apiKey']}"
    return headers


class _Stream:
    """The answer assembled from a stream's chunks."""

    def __init__(self) -> None:
        self.content: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}
        self.usage: Any = None
        self.done = False
        self.finished = False  # a choice said its finish_reason

    def tool_calls(self) -> list[ToolCall]:
        raw = [{"id": call["id"], "function": {"name": call["name"], "arguments": "".join(call["arguments"])}}
               for _, call in sorted(self.calls.items())]
        return parse_tool_calls(raw)


class OpenAIProvider:
    """Chat completions over a (shared, pooled) ``httpx.AsyncClient``.

    ``client`` is the client to use; a sync ``httpx.Client`` (older callers) or ``None`` means
    the running loop's :func:`~agents.engine.transport.default_async_client`. ``sleep`` may be
    a coroutine function (default :func:`asyncio.sleep`) or a plain function (tests record waits).
    """

    def __init__(self, client: httpx.AsyncClient | httpx.Client | None = None, *, max_retries: int = 3,
                 backoff_base: float = 0.25, backoff_cap: float = 8.0, connect_timeout: float = 5.0,
                 sleep: Callable[[float], Any] = asyncio.sleep, jitter: Callable[[], float] = random.random):
        self.client = client
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.connect_timeout = connect_timeout
        self._sleep = sleep
        self._jitter = jitter

    def _backoff(self, attempt: int) -> float:
        # "Equal jitter": at least half the exponential delay, so retries from many
        # runs spread out without collapsing to zero.
        delay = min(self.backoff_cap, self.backoff_base * (2 ** attempt))
        return delay / 2 + self._jitter() * delay / 2

    async def _pause(self, seconds: float) -> None:
        waited = self._sleep(seconds)
        if inspect.isawaitable(waited):
            await waited

    def complete(self, request: ChatRequest, *, deadline: float) -> ChatResponse:
        """The sync form of :meth:`acomplete` (not streamed), on the calling thread's loop."""
        return run_sync(self.acomplete(request, deadline=deadline))

    async def acomplete(self, request: ChatRequest, *, deadline: float, progress: Progress | None = None,
                        on_delta: OnDelta | None = None) -> ChatResponse:
        url = str(request.model.get("baseUrl") or DEFAULT_BASE_URL).rstrip("/") + "/chat/completions"
        headers = build_headers(request.model)
        stream = on_delta is not None
        if stream:
            headers["Accept"] = "text/event-stream"
        body = build_body(request, stream=stream)
        client = self.client if isinstance(self.client, httpx.AsyncClient) else default_async_client()
        started = time.monotonic()
        attempt = 0
        while True:
            retry_after: float | None = None
            try:
                if stream:
                    result = await self._stream(client, url, body, headers, deadline, started, progress, on_delta)
                    if isinstance(result, ChatResponse):
                        return result
                    reply = result
                else:
                    reply = await apost_json(client, url, payload=body, headers=headers, deadline=deadline,
                                             connect_timeout=self.connect_timeout, progress=progress)
            except DeadlineReached:
                raise ProviderTimeout("the model provider did not answer before the run deadline",
                                      provider_ms=_ms_since(started)) from None
            except _RETRYABLE_TRANSPORT as exc:
                if egress.is_denied(exc):
                    raise ProviderError(egress.DENIED_MESSAGE, provider_ms=_ms_since(started)) from None
                failure = "the model provider could not be reached"
            except ResponseTooLarge:
                raise ProviderError("the model provider's answer was too large",
                                    provider_ms=_ms_since(started)) from None
            except httpx.HTTPError:
                raise ProviderError("the model provider could not be reached",
                                    provider_ms=_ms_since(started)) from None
            else:
                if 200 <= reply.status < 300:
                    return self._response(reply, started)
                failure = f"the model provider answered HTTP {reply.status}"
                if reply.status != 429 and reply.status < 500:
                    raise ProviderError(failure, provider_ms=_ms_since(started))
                retry_after = _retry_after(reply)

            if attempt >= self.max_retries:
                raise ProviderError(f"{failure} (after {attempt + 1} attempts)", provider_ms=_ms_since(started))
            delay = retry_after if retry_after is not None else self._backoff(attempt)
            if time.monotonic() + delay >= deadline:
                raise ProviderError(f"{failure} (no time left to retry before the run deadline)",
                                    provider_ms=_ms_since(started))
            await self._pause(delay)
            attempt += 1

    async def _stream(self, client: httpx.AsyncClient, url: str, body: dict[str, Any], headers: dict[str, str],
                      deadline: float, started: float, progress: Progress | None,
                      on_delta: OnDelta) -> ChatResponse | StreamReply:
        """One streamed attempt: the assembled answer, or the non-2xx reply (to retry or refuse)."""
        async with apost_stream(client, url, payload=body, headers=headers, deadline=deadline,
                                connect_timeout=self.connect_timeout, progress=progress) as reply:
            if not 200 <= reply.status < 300:
                return reply
            if progress is not None:
                progress.streaming = True
            answer = _Stream()
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    async for line in reply.lines():
                        if not line.startswith(b"data:"):
                            continue  # comments, event names, blank separators
                        data = line[5:].strip()
                        if data == b"[DONE]":
                            answer.done = True
                            break
                        await self._chunk(data, answer, progress, on_delta, started)
            except TimeoutError:
                raise DeadlineReached() from None
            except (httpx.HTTPError, ResponseTooLarge) as exc:
                # Part of the answer may be out: never retried.
                what = "was too large" if isinstance(exc, ResponseTooLarge) else "broke off"
                raise ProviderError(f"the model provider's stream {what}", provider_ms=_ms_since(started)) from None
        if not (answer.done or answer.finished):
            raise ProviderError("the model provider's stream ended before the answer was complete",
                                provider_ms=_ms_since(started))
        usage = parse_usage(answer.usage)
        return ChatResponse(content="".join(answer.content), tool_calls=answer.tool_calls(), usage=usage,
                            provider_ms=_ms_since(started), usage_reported=isinstance(answer.usage, dict))

    async def _chunk(self, data: bytes, answer: _Stream, progress: Progress | None, on_delta: OnDelta,
                     started: float) -> None:
        try:
            chunk = loads_bounded(data)
        except ValueError:
            raise ProviderError("the model provider streamed a chunk that is not JSON",
                                provider_ms=_ms_since(started)) from None
        if not isinstance(chunk, dict):
            raise ProviderError("the model provider streamed a malformed chunk", provider_ms=_ms_since(started))
        if chunk.get("error") is not None:
            # Its text is the provider's: never shown (see the module docstring).
            raise ProviderError("the model provider reported an error in its stream", provider_ms=_ms_since(started))
        if isinstance(chunk.get("usage"), dict):
            answer.usage = chunk["usage"]
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return
        choice = choices[0]
        if choice.get("finish_reason"):
            answer.finished = True
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            return
        received = 0
        text = _content_text(delta.get("content"))
        if text:
            received += utf8_length(text)
            answer.content.append(text)
        for piece in delta.get("tool_calls") or []:
            if not isinstance(piece, dict):
                continue
            index = piece.get("index", 0)
            call = answer.calls.setdefault(index if isinstance(index, int) else 0,
                                           {"id": None, "name": "", "arguments": []})
            if piece.get("id"):
                call["id"] = str(piece["id"])
            function = piece.get("function") or {}
            if isinstance(function, dict):
                if isinstance(function.get("name"), str):
                    call["name"] += function["name"]
                    received += utf8_length(function["name"])
                if isinstance(function.get("arguments"), str):
                    call["arguments"].append(function["arguments"])
                    received += utf8_length(function["arguments"])
        if received and progress is not None:
            progress.streamed_bytes += received
            progress.chunks += 1
        if text:
            await on_delta(text)

    def _response(self, reply: HttpReply | StreamReply, started: float) -> ChatResponse:
        try:
            data = reply.json()
        except ValueError:
            raise ProviderError("model provider answered with a body that is not JSON",
                                provider_ms=_ms_since(started)) from None
        try:
            content, tool_calls, usage = parse_completion(data)
        except ProviderError as exc:
            exc.provider_ms = _ms_since(started)
            raise
        return ChatResponse(content=content, tool_calls=tool_calls, usage=usage, provider_ms=_ms_since(started))
