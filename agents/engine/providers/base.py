"""The provider contract: one chat-completions call, with tools.

Messages and tools use the OpenAI chat format, which every supported provider
speaks or is adapted to. A provider's ``acomplete(request, *, deadline, progress=None,
on_delta=None)`` coroutine (the engine awaits it; ``complete`` is its sync form):

* returns within ``deadline`` (a :func:`time.monotonic` timestamp) or raises
  :class:`~agents.engine.errors.ProviderTimeout`;
* raises :class:`~agents.engine.errors.ProviderError` for every other failure;
* reports ``provider_ms``, the time spent waiting on the model (network, retries,
  simulated latency), which the platform subtracts to report its own overhead;
* streams when ``on_delta`` is given: awaits ``on_delta(text)`` for each piece of the
  answer's content as it arrives (their concatenation is ``content``), and the final
  ``ChatResponse`` is the same as without streaming (content, tool calls, usage);
* keeps ``progress`` (:class:`agents.engine.transport.Progress`) up to date: whether the
  request was sent, and the bytes of output streamed so far; the engine bills an
  interrupted call (cancelled, deadline) from it;
* on cancellation of the awaiting task, closes its connection at once and lets the
  :class:`asyncio.CancelledError` through.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..transport import Progress


@dataclass(frozen=True)
class Usage:
    """Token counts, OpenAI accounting: cached tokens are part of ``input_tokens``,
    reasoning tokens part of ``output_tokens``."""

    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.cached_input_tokens + other.cached_input_tokens,
            self.output_tokens + other.output_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
        )


@dataclass(frozen=True)
class ToolCall:
    """A tool call requested by the model. ``arguments_error`` is set (and
    ``arguments`` empty) when the model sent arguments that are not a JSON object."""

    id: str
    name: str
    arguments: dict[str, Any]
    arguments_error: str | None = None


@dataclass(frozen=True)
class ChatRequest:
    """One model call.

    ``model`` is the step's model config with every template already rendered
    (secrets resolved: never record it). ``context`` holds the trace-safe template
    variables (``input``, ``steps``, ``prompt``) for providers that template their
    own config, i.e. ``fruxon-local`` script replies.
    """

    model: Mapping[str, Any]
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] = field(default_factory=list)
    context: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ChatResponse:
    """``usage_reported`` is false when a streamed answer came without a usage chunk (the
    provider ignored ``stream_options.include_usage``): the engine then bills the bound."""

    content: str
    tool_calls: list[ToolCall]
    usage: Usage
    provider_ms: float
    usage_reported: bool = True


OnDelta = Callable[[str], Awaitable[None]]


class Provider(Protocol):
    async def acomplete(self, request: ChatRequest, *, deadline: float, progress: Progress | None = None,
                        on_delta: OnDelta | None = None) -> ChatResponse: ...

    def complete(self, request: ChatRequest, *, deadline: float) -> ChatResponse: ...
