"""One step: render its prompts, then the tool loop.

Contract of :func:`run_step`:

* templates are rendered twice: for the call (secrets resolved) and for the
  trace (``{{secret.NAME}}`` kept as text); only the trace form is recorded;
* a secret is resolved only into a credential position (the model's ``apiKey``
  and ``headers``, an integration's credentials) and only for a request whose
  host the secret allows; otherwise the step fails with ``secret_destination``
  before anything is sent;
* the loop calls the model; while it answers with tool calls, each call runs in
  order (tools via integrations, ``agent__*`` via sub-agents) and its result is
  appended to the conversation; the first answer without tool calls is the
  step's output;
* a tool call beyond the step's ``maxToolCalls`` (default 8) ends the run with
  ``max_tool_calls``; the excess call is not executed;
* a model call past the run's ``Limits.max_model_calls`` (sub-runs included) ends
  the run with ``max_model_calls_per_run``; that call is not made;
* before every model call the worst-case cost (an upper bound: see
  :mod:`agents.engine.tokens` and :func:`agents.engine.pricing.estimate_usd`) is
  offered to ``Runtime.before_model_call`` and after it the actual cost to
  ``Runtime.after_model_call`` (``0`` when the call failed), even when the
  provider reported more than the bound; such a call is flagged
  (``usageOverReservation`` on its span and on the run);
* a provider's error message is redacted, then cut to :data:`MAX_ERROR_CHARS`,
  before it is settled, logged or recorded;
* the returned :class:`StepOutcome` carries the time spent waiting on model
  providers, sub-runs included, for the overhead figure.

Billing a call that did not finish. A provider reports no usage for a call it did not
complete, but may bill what it processed. So a call interrupted after its request went out,
by the run's cancellation (:class:`asyncio.CancelledError`) or by the deadline
(``provider_timeout``), is recorded and settled at the most it can have cost: the input's
bound plus, for a streamed call, the output streamed so far (its UTF-8 bytes, capped at
``maxTokens``: no tokenizer makes more tokens than bytes) or, for a call not streamed,
``maxTokens`` (nothing of the answer was seen), each side at its dearer rate; its span says
``usageBound: true``. A stream that fails after part of the answer came (it broke off, or
an error event) is billed the same way: the part that came was generated. A call interrupted
before its request went out costs 0, as does a call the provider refused or failed before
answering (HTTP errors, malformed answers). A streamed answer without a usage chunk is billed
the same bound. Settling is never abandoned half way: a
cancellation that arrives while a reservation is made or settled waits for it.

Events (when the run has ``events``; top-level steps only, not those of sub-runs):
``step.started {step}``; ``tool.call {step, tool, arguments}`` before each tool or
sub-agent call and ``tool.result {step, tool, status}`` after it (status as its span's);
``output.delta {text}`` as the output step's final answer streams (see
:class:`_OutputStream`); ``step.completed {step, status, usage}``, also when the step
fails (``usage``: its model calls', sub-runs included, as ``inputTokens``,
``cachedInputTokens``, ``outputTokens``, ``reasoningTokens``, ``costUsd``). A cancelled
step sends no more events: nobody is listening.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from . import subagents
from .aio import settle
from .destinations import model_base_url
from .errors import EngineError, MaxToolCallsExceeded, ProviderError, ProviderTimeout, SecretDestinationRefused
from .pricing import QUANTUM, cost_usd, estimate_usd
from .providers.base import ChatRequest, ChatResponse, ToolCall, Usage
from .spec import DEFAULT_MAX_TOOL_CALLS
from .state import Frame, RunState
from .templating import iter_references, render_for_call, render_for_trace
from .tokens import input_token_bound, max_output_tokens
from .tools import call_tool, require_usable, tool_definition
from .transport import Progress

_CREDENTIAL_MODEL_KEYS = ("apiKey",)


@dataclass(frozen=True)
class StepOutcome:
    name: str
    output: str
    started: float  # time.monotonic()
    ended: float
    provider_ms: float


def _no_secret(where: str) -> Callable[[str], str]:
    """A resolver for a position that may never carry a secret (prompts, URLs)."""
    def refuse(name: str) -> str:
        raise SecretDestinationRefused(f"secret {name!r} cannot be used in {where}: only a model's apiKey and "
                                       "headers may carry a secret")
    return refuse


def _secret_names(template: Any) -> list[str]:
    if not isinstance(template, str):
        return []
    return [parts[1] for _expression, parts in iter_references(template)
            if parts and parts[0] == "secret" and len(parts) == 2]


async def _render_model(model: Mapping[str, Any], context: Mapping[str, Any], frame: Frame,
                        state: RunState) -> tuple[dict[str, Any], dict[str, Any]]:
    """The model config for the call (secrets resolved) and for the trace (no script, secrets as text).

    The base URL is rendered first, without secrets: it is where the credentials go,
    and each one is resolved for that destination (:meth:`RunState.secret_to`), in the
    order they appear (``apiKey``, then ``headers``).
    """
    call = dict(model)
    trace = {key: value for key, value in model.items() if key != "script"}
    if "baseUrl" in model:
        call["baseUrl"] = render_for_call(model["baseUrl"], context, _no_secret("a model's baseUrl"))
        trace["baseUrl"] = render_for_trace(model["baseUrl"], context)
    destination = model_base_url(call) or ""

    templates = [model[key] for key in _CREDENTIAL_MODEL_KEYS if key in model]
    templates += list((model.get("headers") or {}).values())
    values: dict[str, str] = {}
    for template in templates:
        for name in _secret_names(template):
            if name not in values:
                values[name] = await state.secret_to(frame.agent, name, destination)
    resolve = values.__getitem__

    for key in _CREDENTIAL_MODEL_KEYS:
        if key in model:
            call[key] = render_for_call(model[key], context, resolve)
            trace[key] = render_for_trace(model[key], context)
    if "headers" in model:
        call["headers"] = {name: render_for_call(value, context, resolve) for name, value in model["headers"].items()}
        trace["headers"] = {name: render_for_trace(value, context) for name, value in model["headers"].items()}
    return call, trace


@dataclass
class _Conversation:
    """The messages sent to the model, and the same conversation as the trace stores it.

    Only the leading system and user prompts differ (secrets stay ``{{secret.NAME}}``
    in the trace); later assistant and tool messages are shared.
    """

    messages: list[dict[str, Any]] = field(default_factory=list)
    trace_head: list[dict[str, Any]] = field(default_factory=list)

    def open_with(self, role: str, call_text: str, trace_text: str) -> None:
        self.messages.append({"role": role, "content": call_text})
        self.trace_head.append({"role": role, "content": trace_text})

    def add(self, message: dict[str, Any]) -> None:
        self.messages.append(message)

    def for_trace(self) -> list[dict[str, Any]]:
        return self.trace_head + self.messages[len(self.trace_head):]


def _tool_call_message(call: ToolCall) -> dict[str, Any]:
    return {"id": call.id, "type": "function",
            "function": {"name": call.name, "arguments": json.dumps(call.arguments, ensure_ascii=False)}}


@dataclass
class _UsageSum:
    """A step's usage for its ``step.completed`` event (its model calls, sub-runs included)."""

    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: Decimal = Decimal(0)

    def add(self, usage: Usage, cost: Decimal) -> None:
        self.input_tokens += usage.input_tokens
        self.cached_input_tokens += usage.cached_input_tokens
        self.output_tokens += usage.output_tokens
        self.reasoning_tokens += usage.reasoning_tokens
        self.cost_usd += cost

    def to_dict(self) -> dict[str, Any]:
        return {"inputTokens": self.input_tokens, "cachedInputTokens": self.cached_input_tokens,
                "outputTokens": self.output_tokens, "reasoningTokens": self.reasoning_tokens,
                "costUsd": format(self.cost_usd.quantize(QUANTUM), "f")}


# The usage sums of the steps the running code is inside (a sub-run's step is inside its caller's).
_STEP_USAGE: contextvars.ContextVar[tuple[_UsageSum, ...]] = contextvars.ContextVar("fruxon_step_usage", default=())


def _count_usage(usage: Usage, cost: Decimal) -> None:
    for total in _STEP_USAGE.get():
        total.add(usage, cost)


class _OutputStream:
    """``output.delta`` events for the step whose output is the run's output.

    The deltas concatenated equal that output when it is a string: only the step's final
    answer streams (a model call that ends in tool calls is not the output). In a step that
    offers no tools every call is final, so pieces go out as they arrive; in a step that
    offers tools a call's pieces wait until the call has ended without tool calls (only then
    is it known to be the answer). Redaction holds back the end of the text while it could
    be the start of a secret value (:meth:`~agents.engine.templating.Redactor.held_back`).
    """

    def __init__(self, state: RunState, *, buffered: bool):
        self.state = state
        self.buffered = buffered
        self.pending: list[str] = []
        self.tail = ""

    async def delta(self, text: str) -> None:
        if self.buffered:
            self.pending.append(text)
        else:
            await self._send(text)

    async def _send(self, text: str, *, final: bool = False) -> None:
        redactor = self.state.redactor
        if redactor.active:
            text = self.tail + text
            keep = 0 if final else redactor.held_back(text)
            text, self.tail = redactor.redact_text(text[:len(text) - keep]), text[len(text) - keep:]
        if text:
            await self.state.emit("output.delta", {"text": text})

    async def end_call(self, *, answer: bool) -> None:
        """A model call ended: its pieces are the answer (sent) or led to tool calls (dropped)."""
        pending, self.pending = self.pending, []
        if answer:
            for text in pending:
                await self._send(text)
            await self._send("", final=True)


class _Toolbox:
    """The tools and sub-agents one step offers its model, and their dispatch."""

    def __init__(self, frame: Frame, state: RunState, step: Mapping[str, Any], span_id: str):
        self.frame, self.state, self.span_id = frame, state, span_id
        self.step_name = step["name"]
        self.tools = {tool["name"]: tool for tool in step.get("tools", [])}
        self.subagents: dict[str, subagents.SubAgent] = {}
        self.definitions = [tool_definition(tool) for tool in step.get("tools", [])]

    async def prepare(self, step: Mapping[str, Any]) -> None:
        for ref in step.get("subAgents", []):
            sub = await subagents.prepare(self.frame, self.state, ref)
            self.subagents[sub.tool_name] = sub
            self.definitions.append(subagents.tool_definition(sub, ref))

    async def call(self, tool_call: ToolCall) -> tuple[str, float]:
        """Run one tool call; return the text for the model and the provider ms it spent (sub-agents)."""
        self.frame.check(self.state)
        events = self.frame.top_level and self.state.events is not None
        if events:
            await self.state.emit("tool.call", {"step": self.step_name, "tool": tool_call.name,
                                                "arguments": self.state.redactor.redact(tool_call.arguments)})
        status = "error"
        try:
            if tool_call.name in self.subagents and tool_call.arguments_error is None:
                content, spent = await subagents.call(self.frame, self.state, self.subagents[tool_call.name],
                                                      tool_call, self.span_id)
                status = "ok"
                return content, spent
            content, status = await self._call_integration(tool_call)
            return content, 0.0
        except EngineError as exc:
            status = exc.status
            raise
        finally:
            if events and not _cancelling():
                await self.state.emit("tool.result", {"step": self.step_name, "tool": tool_call.name,
                                                      "status": status})

    async def _call_integration(self, tool_call: ToolCall) -> tuple[str, str]:
        recorder = self.state.recorder
        tool = self.tools.get(tool_call.name)
        span = recorder.start("tool", tool_call.name, self.span_id, input=tool_call.arguments,
                              attributes={"integration": tool.get("integration") if tool else None})
        problem = tool_call.arguments_error or (None if tool else f"there is no tool named {tool_call.name!r}")
        if problem:
            body = {"error": {"message": problem}}
            recorder.finish(span, status="error", output=body, error={"code": "invalid_tool_call", "message": problem})
            return json.dumps(body), "error"
        try:
            integration = require_usable(tool["integration"], await self.state.integration(tool["integration"]))
            outcome = await call_tool(
                tool, tool_call.arguments, integration=integration,
                resolve_secret=lambda name, url: self.state.secret_to(self.frame.agent, name, url),
                client=self.state.client, deadline=self.frame.deadline, shadow=self.state.shadow,
                clip=self.state.redactor.clip)
        except EngineError as exc:
            recorder.finish(span, status=exc.status, error={"code": exc.code, "message": exc.message})
            raise
        except asyncio.CancelledError:
            recorder.finish(span, status="cancelled", error={"code": "cancelled", "message": "the run was cancelled"})
            raise
        error = {"code": "tool_error", "message": outcome.output["error"]["message"]} \
            if outcome.status == "error" else None
        recorder.finish(span, status=outcome.status, output=outcome.output, attributes=outcome.attributes,
                        error=error)
        # The model never needs a credential: keep resolved secrets an integration
        # may echo back out of the conversation sent to the provider.
        return self.state.redactor.redact_text(outcome.content), outcome.status


def _cancelling() -> bool:
    """Is the running task being cancelled (its caller went away)? Then no more events are sent."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


# A provider's error message is kept (on spans, the run, the API answer) to this many characters.
MAX_ERROR_CHARS = 300


def _interrupted_usage(progress: Progress, input_bound: int, max_tokens: int) -> Usage | None:
    """The most an interrupted call can be billed (module docstring), or None when nothing went out."""
    if not progress.sent:
        return None
    output = min(max_tokens, progress.streamed_bytes) if progress.streaming else max_tokens
    return Usage(input_tokens=input_bound, output_tokens=output)


async def _call_model(frame: Frame, state: RunState, span_id: str, model: Mapping[str, Any],
                      trace_model: Mapping[str, Any], conversation: _Conversation, tools: list[dict[str, Any]],
                      context: Mapping[str, Any], output: _OutputStream | None) -> ChatResponse:
    frame.check(state)
    state.count_model_call()  # the run's model-call limit: past it, no span, no reservation, no call
    provider_name = model["provider"]
    model_name = model.get("name", "local")
    price = await state.price(provider_name, model_name)
    # Upper bounds of what the provider can bill (agents.engine.tokens): reserving less lets
    # concurrent calls add up past a hard cap.
    max_tokens = max_output_tokens(model)
    input_bound = input_token_bound(conversation.messages, tools)
    estimate = estimate_usd(input_bound, max_tokens, price)
    recorder = state.recorder
    span = recorder.start(
        "llm", model_name, span_id, model=model_name, provider=provider_name,
        input={"messages": conversation.for_trace()},
        attributes={"tools": [tool["function"]["name"] for tool in tools], "estimateUsd": format(estimate, "f"),
                    **{key: trace_model[key] for key in ("baseUrl", "temperature", "maxTokens") if key in trace_model}},
    )
    runtime = state.runtime
    try:
        reservation, cancelled = await settle(runtime.before_model_call(estimate, tokens=input_bound + max_tokens))
    except EngineError as exc:  # BudgetExceeded, or the host's own refusal (e.g. ledger unreachable)
        recorder.finish(span, status=exc.status, error={"code": exc.code, "message": exc.message})
        raise
    if cancelled:  # reserved, then cancelled before anything was sent: release it
        await settle(runtime.after_model_call(Decimal(0), tokens=0, reservation=reservation))
        recorder.finish(span, status="cancelled", error={"code": "cancelled", "message": "the run was cancelled"})
        raise asyncio.CancelledError()

    progress = Progress(streaming=output is not None)
    try:
        response = await state.providers[provider_name].acomplete(
            ChatRequest(model=model, messages=list(conversation.messages), tools=tools, context=context),
            deadline=frame.deadline, progress=progress, on_delta=output.delta if output is not None else None)
    except BaseException as exc:
        # A stream that broke off after part of the answer came was billed for that part, too.
        interrupted = isinstance(exc, (asyncio.CancelledError, ProviderTimeout)) or (
            isinstance(exc, ProviderError) and progress.streaming and progress.streamed_bytes > 0)
        billed = _interrupted_usage(progress, input_bound, max_tokens) if interrupted else None
        cost = estimate_usd(billed.input_tokens, billed.output_tokens, price) if billed else Decimal(0)
        if isinstance(exc, EngineError):
            # Redact, then cut, before anything (a log record, the run) holds the message:
            # a provider's error may quote the key it was sent.
            exc.message = state.redactor.clip(exc.message, MAX_ERROR_CHARS)
            exc.args = (exc.message,)
        tokens = billed.input_tokens + billed.output_tokens if billed else 0
        await settle(runtime.after_model_call(cost, tokens=tokens, reservation=reservation))
        if output is not None:
            await output.end_call(answer=False)
        fields: dict[str, Any] = {}
        attributes: dict[str, Any] = {}
        if billed is not None:
            fields = {"input_tokens": billed.input_tokens, "output_tokens": billed.output_tokens, "cost_usd": cost}
            attributes["usageBound"] = True
            _count_usage(billed, cost)
        if isinstance(exc, EngineError):
            spent = exc.provider_ms if isinstance(exc, ProviderError) else 0.0
            recorder.finish(span, status=exc.status, error={"code": exc.code, "message": exc.message},
                            attributes={"providerMs": round(spent, 3), **attributes}, **fields)
        elif isinstance(exc, asyncio.CancelledError):
            recorder.finish(span, status="cancelled", error={"code": "cancelled", "message": "the run was cancelled"},
                            attributes=attributes, **fields)
        raise
    usage = response.usage
    attributes = {}
    if not response.usage_reported:  # a stream without its usage chunk: bill the bound
        usage = Usage(input_tokens=input_bound, output_tokens=min(max_tokens, progress.streamed_bytes))
        attributes["usageBound"] = True
    cost = cost_usd(usage, price) if response.usage_reported else estimate_usd(usage.input_tokens,
                                                                               usage.output_tokens, price)
    # The actual, even above the reservation: it was billed.
    _, cancelled = await settle(runtime.after_model_call(cost, tokens=usage.input_tokens + usage.output_tokens,
                                                         reservation=reservation))
    if usage.input_tokens > input_bound or usage.output_tokens > max_tokens or cost > estimate:
        state.usage_over_reservation = True
        attributes["usageOverReservation"] = True
    _count_usage(usage, cost)
    recorder.finish(
        span,
        output={"content": response.content,
                "toolCalls": [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in response.tool_calls]},
        input_tokens=usage.input_tokens, cached_input_tokens=usage.cached_input_tokens,
        output_tokens=usage.output_tokens, reasoning_tokens=usage.reasoning_tokens, cost_usd=cost,
        attributes={"providerMs": round(response.provider_ms, 3), **attributes},
    )
    if cancelled:
        raise asyncio.CancelledError()
    if output is not None:
        await output.end_call(answer=not response.tool_calls)
    return response


async def run_step(frame: Frame, state: RunState, step: Mapping[str, Any], outputs: Mapping[str, str], *,
                   streams_output: bool = False) -> StepOutcome:
    """Run ``step`` given the outputs of the steps it depends on (see the module contract).

    ``streams_output``: this step's output is the run's output and the caller listens to
    events, so its final answer streams as ``output.delta`` events.
    """
    started = time.monotonic()
    name = step["name"]
    recorder = state.recorder
    span = recorder.start("step", name, frame.parent_span_id)
    events = frame.top_level and state.events is not None
    usage = _UsageSum()
    token = _STEP_USAGE.set((*_STEP_USAGE.get(), usage))
    if events:
        await state.emit("step.started", {"step": name})
    context = {"input": frame.inputs, "steps": {key: {"output": value} for key, value in outputs.items()}}
    trace_input: dict[str, Any] = {}
    attributes: dict[str, Any] = {}
    status, cancelled = "ok", False
    try:
        conversation = _Conversation()
        for key, role in (("systemPrompt", "system"), ("prompt", "user")):
            if key in step:
                trace_input[key] = render_for_trace(step[key], context)
                # A prompt goes to the model: a secret in it would be readable by whoever runs the model.
                conversation.open_with(role, render_for_call(step[key], context, _no_secret(f"a step's {key}")),
                                       trace_input[key])
        model, trace_model = await _render_model(step["model"], context, frame, state)
        attributes["model"] = trace_model

        toolbox = _Toolbox(frame, state, step, span.id)
        await toolbox.prepare(step)
        output = _OutputStream(state, buffered=bool(toolbox.definitions)) if streams_output and events else None
        max_calls = step.get("maxToolCalls", DEFAULT_MAX_TOOL_CALLS)
        calls_made = 0
        provider_ms = 0.0
        while True:
            response = await _call_model(frame, state, span.id, model, trace_model, conversation,
                                         toolbox.definitions, context, output)
            provider_ms += response.provider_ms
            if not response.tool_calls:
                break
            conversation.add({"role": "assistant", "content": response.content or None,
                              "tool_calls": [_tool_call_message(call) for call in response.tool_calls]})
            for tool_call in response.tool_calls:
                if calls_made >= max_calls:
                    raise MaxToolCallsExceeded(f"step {name!r} asked for more than {max_calls} tool calls")
                calls_made += 1
                content, spent = await toolbox.call(tool_call)
                provider_ms += spent
                conversation.add({"role": "tool", "tool_call_id": tool_call.id, "content": content})
    except EngineError as exc:
        status = exc.status
        recorder.finish(span, status=exc.status, input=trace_input, error={"code": exc.code, "message": exc.message},
                        attributes=attributes)
        raise
    except asyncio.CancelledError:
        cancelled = True
        recorder.finish(span, status="cancelled", input=trace_input,
                        error={"code": "cancelled", "message": "the run was cancelled"}, attributes=attributes)
        raise
    finally:
        _STEP_USAGE.reset(token)
        if events and not cancelled:
            await state.emit("step.completed", {"step": name, "status": status, "usage": usage.to_dict()})
    attributes.update(toolCalls=calls_made, providerMs=round(provider_ms, 3))
    recorder.finish(span, input=trace_input, output=response.content, attributes=attributes)
    return StepOutcome(name=name, output=response.content, started=started, ended=time.monotonic(),
                       provider_ms=provider_ms)
