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
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from . import subagents
from .destinations import model_base_url
from .errors import EngineError, MaxToolCallsExceeded, ProviderError, SecretDestinationRefused
from .pricing import cost_usd, estimate_usd
from .providers.base import ChatRequest, ChatResponse, ToolCall
from .spec import DEFAULT_MAX_TOOL_CALLS
from .state import Frame, RunState
from .templating import render_for_call, render_for_trace
from .tokens import input_token_bound, max_output_tokens
from .tools import call_tool, require_usable, tool_definition

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


def _render_model(model: Mapping[str, Any], context: Mapping[str, Any],
                  resolve_to: Callable[[str, str], str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The model config for the call (secrets resolved) and for the trace (no script, secrets as text).

    The base URL is rendered first, without secrets: it is where the credentials go,
    and each one is resolved for that destination (``resolve_to(name, url)``).
    """
    call = dict(model)
    trace = {key: value for key, value in model.items() if key != "script"}
    if "baseUrl" in model:
        call["baseUrl"] = render_for_call(model["baseUrl"], context, _no_secret("a model's baseUrl"))
        trace["baseUrl"] = render_for_trace(model["baseUrl"], context)
    destination = model_base_url(call) or ""

    def resolve(name: str) -> str:
        return resolve_to(name, destination)

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


class _Toolbox:
    """The tools and sub-agents one step offers its model, and their dispatch."""

    def __init__(self, frame: Frame, state: RunState, step: Mapping[str, Any], span_id: str):
        self.frame, self.state, self.span_id = frame, state, span_id
        self.tools = {tool["name"]: tool for tool in step.get("tools", [])}
        self.subagents: dict[str, subagents.SubAgent] = {}
        self.definitions = [tool_definition(tool) for tool in step.get("tools", [])]
        for ref in step.get("subAgents", []):
            sub = subagents.prepare(frame, state, ref)
            self.subagents[sub.tool_name] = sub
            self.definitions.append(subagents.tool_definition(sub, ref))

    def call(self, tool_call: ToolCall) -> tuple[str, float]:
        """Run one tool call; return the text for the model and the provider ms it spent (sub-agents)."""
        self.frame.check(self.state)
        if tool_call.name in self.subagents and tool_call.arguments_error is None:
            return subagents.call(self.frame, self.state, self.subagents[tool_call.name], tool_call, self.span_id)
        return self._call_integration(tool_call), 0.0

    def _call_integration(self, tool_call: ToolCall) -> str:
        recorder = self.state.recorder
        tool = self.tools.get(tool_call.name)
        span = recorder.start("tool", tool_call.name, self.span_id, input=tool_call.arguments,
                              attributes={"integration": tool.get("integration") if tool else None})
        problem = tool_call.arguments_error or (None if tool else f"there is no tool named {tool_call.name!r}")
        if problem:
            body = {"error": {"message": problem}}
            recorder.finish(span, status="error", output=body, error={"code": "invalid_tool_call", "message": problem})
            return json.dumps(body)
        try:
            integration = require_usable(tool["integration"], self.state.integration(tool["integration"]))
            outcome = call_tool(tool, tool_call.arguments, integration=integration,
                                resolve_secret=lambda name, url: self.state.secret_to(self.frame.agent, name, url),
                                client=self.state.client, deadline=self.frame.deadline, shadow=self.state.shadow,
                                clip=self.state.redactor.clip)
        except EngineError as exc:
            recorder.finish(span, status=exc.status, error={"code": exc.code, "message": exc.message})
            raise
        error = {"code": "tool_error", "message": outcome.output["error"]["message"]} \
            if outcome.status == "error" else None
        recorder.finish(span, status=outcome.status, output=outcome.output, attributes=outcome.attributes,
                        error=error)
        # The model never needs a credential: keep resolved secrets an integration
        # may echo back out of the conversation sent to the provider.
        return self.state.redactor.redact_text(outcome.content)


# A provider's error message is kept (on spans, the run, the API answer) to this many characters.
MAX_ERROR_CHARS = 300


def _call_model(frame: Frame, state: RunState, span_id: str, model: Mapping[str, Any], trace_model: Mapping[str, Any],
                conversation: _Conversation, tools: list[dict[str, Any]], context: Mapping[str, Any]) -> ChatResponse:
    frame.check(state)
    state.count_model_call()  # the run's model-call limit: past it, no span, no reservation, no call
    provider_name = model["provider"]
    model_name = model.get("name", "local")
    price = state.price(provider_name, model_name)
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
    try:
        state.runtime.before_model_call(estimate)
    except EngineError as exc:  # BudgetExceeded, or the host's own refusal (e.g. ledger unreachable)
        recorder.finish(span, status=exc.status, error={"code": exc.code, "message": exc.message})
        raise
    try:
        response = state.providers[provider_name].complete(
            ChatRequest(model=model, messages=list(conversation.messages), tools=tools, context=context),
            deadline=frame.deadline)
    except BaseException as exc:
        if isinstance(exc, EngineError):
            # Redact, then cut, before anything (a log record, the run) holds the message:
            # a provider's error may quote the key it was sent.
            exc.message = state.redactor.clip(exc.message, MAX_ERROR_CHARS)
            exc.args = (exc.message,)
        state.runtime.after_model_call(Decimal(0))
        if isinstance(exc, EngineError):
            spent = exc.provider_ms if isinstance(exc, ProviderError) else 0.0
            recorder.finish(span, status=exc.status, error={"code": exc.code, "message": exc.message},
                            attributes={"providerMs": round(spent, 3)})
        raise
    cost = cost_usd(response.usage, price)
    state.runtime.after_model_call(cost)  # the actual, even above the reservation: it was billed
    usage = response.usage
    over = {}
    if usage.input_tokens > input_bound or usage.output_tokens > max_tokens or cost > estimate:
        state.usage_over_reservation = True
        over = {"usageOverReservation": True}
    recorder.finish(
        span,
        output={"content": response.content,
                "toolCalls": [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in response.tool_calls]},
        input_tokens=usage.input_tokens, cached_input_tokens=usage.cached_input_tokens,
        output_tokens=usage.output_tokens, reasoning_tokens=usage.reasoning_tokens, cost_usd=cost,
        attributes={"providerMs": round(response.provider_ms, 3), **over},
    )
    return response


def run_step(frame: Frame, state: RunState, step: Mapping[str, Any], outputs: Mapping[str, str]) -> StepOutcome:
    """Run ``step`` given the outputs of the steps it depends on (see the module contract)."""
    started = time.monotonic()
    name = step["name"]
    recorder = state.recorder
    span = recorder.start("step", name, frame.parent_span_id)
    context = {"input": frame.inputs, "steps": {key: {"output": value} for key, value in outputs.items()}}
    trace_input: dict[str, Any] = {}
    attributes: dict[str, Any] = {}
    try:
        def resolve_to(secret_name: str, url: str) -> str:
            return state.secret_to(frame.agent, secret_name, url)

        conversation = _Conversation()
        for key, role in (("systemPrompt", "system"), ("prompt", "user")):
            if key in step:
                trace_input[key] = render_for_trace(step[key], context)
                # A prompt goes to the model: a secret in it would be readable by whoever runs the model.
                conversation.open_with(role, render_for_call(step[key], context, _no_secret(f"a step's {key}")),
                                       trace_input[key])
        model, trace_model = _render_model(step["model"], context, resolve_to)
        attributes["model"] = trace_model

        toolbox = _Toolbox(frame, state, step, span.id)
        max_calls = step.get("maxToolCalls", DEFAULT_MAX_TOOL_CALLS)
        calls_made = 0
        provider_ms = 0.0
        while True:
            response = _call_model(frame, state, span.id, model, trace_model, conversation, toolbox.definitions,
                                   context)
            provider_ms += response.provider_ms
            if not response.tool_calls:
                break
            conversation.add({"role": "assistant", "content": response.content or None,
                              "tool_calls": [_tool_call_message(call) for call in response.tool_calls]})
            for tool_call in response.tool_calls:
                if calls_made >= max_calls:
                    raise MaxToolCallsExceeded(f"step {name!r} asked for more than {max_calls} tool calls")
                calls_made += 1
                content, spent = toolbox.call(tool_call)
                provider_ms += spent
                conversation.add({"role": "tool", "tool_call_id": tool_call.id, "content": content})
    except EngineError as exc:
        recorder.finish(span, status=exc.status, input=trace_input, error={"code": exc.code, "message": exc.message},
                        attributes=attributes)
        raise
    attributes.update(toolCalls=calls_made, providerMs=round(provider_ms, 3))
    recorder.finish(span, input=trace_input, output=response.content, attributes=attributes)
    return StepOutcome(name=name, output=response.content, started=started, ended=time.monotonic(),
                       provider_ms=provider_ms)
