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
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from .. import egress
from ..errors import ProviderError, ProviderTimeout
from ..limits import loads_bounded
from ..tokens import max_output_tokens
from ..transport import DeadlineReached, HttpReply, ResponseTooLarge, default_client, post_json
from .base import ChatRequest, ChatResponse, ToolCall, Usage

DEFAULT_BASE_URL = "https://api.openai.com/v1"
# Failures where the provider never produced an answer: safe to send again.
_RETRYABLE_TRANSPORT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError)


def _ms_since(started: float) -> float:
    return (time.monotonic() - started) * 1000.0


def _provider_message(reply: HttpReply) -> str:
    try:
        error = reply.json().get("error")
    except (ValueError, AttributeError):  # not JSON, or not an object
        error = None
    message = error.get("message") if isinstance(error, dict) else error
    if isinstance(message, str) and message:
        return message[:300]
    return reply.text()[:300] or "no body"


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


def build_body(request: ChatRequest) -> dict[str, Any]:
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
    return body


def build_headers(model: Mapping[str, Any]) -> dict[str, str]:
    headers = {"Accept": "application/json"}
    headers.update(model.get("headers") or {})
    if model.get("apiKey"):
        headers["Authorization"] = f"Bearer {model['apiKey']}"
    return headers


class OpenAIProvider:
    """Chat completions over a (shared, pooled) ``httpx.Client``."""

    def __init__(self, client: httpx.Client | None = None, *, max_retries: int = 3, backoff_base: float = 0.25,
                 backoff_cap: float = 8.0, connect_timeout: float = 5.0,
                 sleep: Callable[[float], None] = time.sleep, jitter: Callable[[], float] = random.random):
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

    def complete(self, request: ChatRequest, *, deadline: float) -> ChatResponse:
        url = str(request.model.get("baseUrl") or DEFAULT_BASE_URL).rstrip("/") + "/chat/completions"
        headers = build_headers(request.model)
        body = build_body(request)
        client = self.client or default_client()
        started = time.monotonic()
        attempt = 0
        while True:
            retry_after: float | None = None
            try:
                reply = post_json(client, url, payload=body, headers=headers, deadline=deadline,
                                  connect_timeout=self.connect_timeout)
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
            self._sleep(delay)
            attempt += 1

    def _response(self, reply: HttpReply, started: float) -> ChatResponse:
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
