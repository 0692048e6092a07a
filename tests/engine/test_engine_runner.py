"""The runner end to end on the offline provider: ordering, parallelism, tools, shadow,
sub-agents, limits, secrets, budgets and cost."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from decimal import Decimal

import pytest

from agents.engine import InputError, IntegrationInfo, Price, RunContext, SpecError, run
from agents.engine.providers import LocalProvider
from agents.engine.testing import StaticAgent, StaticRuntime, StaticSecret, StubReply

TOKEN = "shop-token-s3cr3t-value"


def local(script=None, **extra):
    model = {"provider": "fruxon-local", "name": "local", **extra}
    if script is not None:
        model["script"] = script
    return model


def step(name, prompt, model=None, **extra):
    return {"name": name, "model": model or local(), "prompt": prompt, **extra}


def spec_of(*steps, **extra):
    return {"steps": list(steps), **extra}


def execute(spec, inputs=None, *, runtime=None, agent="support", shadow=False, deadline=None, providers=None):
    context = RunContext(agent=agent, revision_id="rev_test", shadow=shadow, deadline=deadline)
    return run(spec, inputs or {}, context=context, runtime=runtime or StaticRuntime(), providers=providers)


class RecordingLocal(LocalProvider):
    """The offline provider, keeping every request it was sent (what the model saw)."""

    def __init__(self):
        super().__init__()
        self.requests = []

    def complete(self, request, *, deadline):
        self.requests.append(request)
        return super().complete(request, deadline=deadline)

    async def acomplete(self, request, **kwargs):  # what the (async) engine calls
        self.requests.append(request)
        return await super().acomplete(request, **kwargs)


def spans_of(result, kind=None, name=None):
    return [span for span in result.spans
            if (kind is None or span.kind == kind) and (name is None or span.name == name)]


def ended(span):
    return span.started_at + timedelta(milliseconds=span.latency_ms)


def lookup_tool(**extra):
    return {"name": "lookup_order", "integration": "shop-api", "description": "Find an order",
            "parameters": {"type": "object", "properties": {"id": {"type": "string"}}}, **extra}


@pytest.fixture
def shop(json_server):
    """A loopback integration answering every tool with the order it was asked about."""

    def handle(request):
        return StubReply(200, {"order": request.body, "status": "shipped", "tool": request.path.rsplit("/", 1)[-1]})

    base_url, server = json_server(handle)
    return base_url, server


def shop_runtime(base_url, http_client, *, status="connected", side_effects=False, **extra):
    return StaticRuntime(
        secrets={"SHOP_TOKEN": TOKEN},
        integrations={"shop-api": IntegrationInfo("shop-api", base_url, {"X-Client": "fruxon"}, "SHOP_TOKEN",
                                                  side_effects, status)},
        http_client=http_client, **extra)


# --- ordering and parallelism ------------------------------------------------------


def test_steps_run_in_dependency_order_not_listed_order():
    spec = spec_of(step("polish", "Shorten: {{steps.answer.output}}"), step("answer", "{{input.q}}"),
                   inputs={"q": {"type": "string", "required": True}})
    result = execute(spec, {"q": "where is my order?"})
    assert result.status == "ok"
    assert [span.name for span in spans_of(result, "step")] == ["answer", "polish"]
    # No output template: the output is the last step in dependency order.
    assert result.output == "echo: Shorten: echo: where is my order?"


def test_independent_steps_run_in_parallel():
    spec = spec_of(step("a", "A", local(latencyMs=200)), step("b", "B", local(latencyMs=200)),
                   step("joined", "{{steps.a.output}} + {{steps.b.output}}"),
                   output={"joined": "{{steps.joined.output}}"})
    result = execute(spec)
    assert result.status == "ok"
    a, b = spans_of(result, "step", "a")[0], spans_of(result, "step", "b")[0]
    assert a.started_at < ended(b) and b.started_at < ended(a), "independent steps did not overlap"
    joined = spans_of(result, "step", "joined")[0]
    assert joined.started_at >= max(ended(a), ended(b)) - timedelta(milliseconds=1)
    assert result.output == {"joined": "echo: echo: A + echo: B"}
    # Provider time on the critical path counts one 200 ms wait, not both.
    assert 190 <= result.provider_ms < 350
    assert result.latency_ms >= result.provider_ms


# --- tools -----------------------------------------------------------------------


def test_tool_loop_calls_the_integration_and_feeds_the_result_back(shop, http_client):
    base_url, server = shop
    script = [{"toolCalls": [{"name": "lookup_order", "arguments": {"id": "42"}}]},
              {"reply": "Order for {{input.customer}}: done ({{prompt}})"}]
    spec = spec_of(step("answer", "Where is order 42?", local(script), tools=[lookup_tool()]),
                   inputs={"customer": {"type": "string"}})
    result = execute(spec, {"customer": "Acme"}, runtime=shop_runtime(base_url, http_client))

    assert result.status == "ok", result.error
    assert result.output == "Order for Acme: done (Where is order 42?)"
    [request] = server.requests
    assert (request.method, request.path, request.body) == ("POST", "/lookup_order", {"id": "42"})
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["X-Client"] == "fruxon"

    assert [span.kind for span in result.spans] == ["step", "llm", "tool", "llm"]
    step_span, _, tool_span, second_llm = result.spans
    assert tool_span.parent_id == step_span.id and second_llm.parent_id == step_span.id
    assert tool_span.status == "ok" and tool_span.input == {"id": "42"}
    assert tool_span.output["status"] == "shipped"
    assert tool_span.attributes["httpStatus"] == 200
    tool_message = second_llm.input["messages"][-1]
    assert tool_message["role"] == "tool" and json.loads(tool_message["content"])["status"] == "shipped"
    assert TOKEN not in json.dumps(result.to_dict())


@pytest.mark.parametrize("status", ["disconnected", None])
def test_unavailable_integration_fails_the_run(shop, http_client, status):
    base_url, server = shop
    runtime = shop_runtime(base_url, http_client, status=status or "connected")
    if status is None:
        runtime.integrations.clear()
    script = [{"toolCalls": [{"name": "lookup_order", "arguments": {"id": "1"}}]}, {"reply": "never"}]
    result = execute(spec_of(step("answer", "go", local(script), tools=[lookup_tool()])), runtime=runtime)
    assert result.status == "error"
    assert result.error["code"] == "integration_unavailable"
    assert "shop-api" in result.error["message"]
    assert server.requests == []
    assert spans_of(result, "tool")[0].status == "error"
    assert result.output is None


def test_integration_http_error_goes_back_to_the_model(json_server, http_client):
    base_url, _ = json_server(lambda request: StubReply(503, {"message": "down"}))
    script = [{"toolCalls": [{"name": "lookup_order", "arguments": {}}]}, {"reply": "sorry"}]
    result = execute(spec_of(step("answer", "go", local(script), tools=[lookup_tool()])),
                     runtime=shop_runtime(base_url, http_client))
    assert result.status == "ok" and result.output == "sorry"
    tool_span = spans_of(result, "tool")[0]
    assert tool_span.status == "error" and tool_span.attributes["httpStatus"] == 503
    assert tool_span.error == {"code": "tool_error", "message": "integration 'shop-api' answered HTTP 503"}
    assert "503" in spans_of(result, "llm")[1].input["messages"][-1]["content"]


def test_shadow_run_skips_side_effecting_tools(shop, http_client):
    base_url, server = shop
    runtime = shop_runtime(base_url, http_client, side_effects=True)
    script = [{"toolCalls": [{"name": "lookup_order", "arguments": {"id": "7"}}]}, {"reply": "done"}]
    spec = spec_of(step("answer", "refund order 7", local(script), tools=[lookup_tool()]))

    result = execute(spec, runtime=runtime, shadow=True)
    assert result.status == "ok"
    assert server.requests == []
    tool_span = spans_of(result, "tool")[0]
    assert tool_span.status == "skipped"
    assert tool_span.attributes["skipped"] == "side effects in shadow mode"
    synthetic = json.loads(spans_of(result, "llm")[1].input["messages"][-1]["content"])
    assert synthetic["skipped"] == "side effects in shadow mode"

    live = execute(spec, runtime=runtime, shadow=False)
    assert live.status == "ok" and len(server.requests) == 1


def test_shadow_run_still_calls_tools_without_side_effects(shop, http_client):
    base_url, server = shop
    script = [{"toolCalls": [{"name": "lookup_order", "arguments": {"id": "7"}}]}, {"reply": "done"}]
    result = execute(spec_of(step("answer", "x", local(script), tools=[lookup_tool()])),
                     runtime=shop_runtime(base_url, http_client), shadow=True)
    assert result.status == "ok" and len(server.requests) == 1


def test_max_tool_calls_stops_the_run(shop, http_client):
    base_url, server = shop
    looping = [{"toolCalls": [{"name": "lookup_order", "arguments": {"id": "1"}}]}]  # the last entry repeats
    result = execute(spec_of(step("answer", "loop", local(looping), tools=[lookup_tool()], maxToolCalls=2)),
                     runtime=shop_runtime(base_url, http_client))
    assert result.status == "max_tool_calls"
    assert result.error["code"] == "max_tool_calls" and "answer" in result.error["message"]
    assert len(server.requests) == 2 and len(spans_of(result, "tool")) == 2
    assert spans_of(result, "step")[0].status == "max_tool_calls"


def test_unknown_tool_name_is_reported_to_the_model():
    script = [{"toolCalls": [{"name": "delete_everything", "arguments": {}}]}, {"reply": "ok then"}]
    result = execute(spec_of(step("answer", "x", local(script))))
    assert result.status == "ok"
    assert spans_of(result, "tool")[0].error["code"] == "invalid_tool_call"


# --- sub-agents --------------------------------------------------------------------


SUMMARIZER = spec_of(step("summarize", "Summarize {{input.text}}", local([{"reply": "summary of {{input.text}}"}])),
                     inputs={"text": {"type": "string", "required": True}})


def router_spec(sub_ref, reply="Router: done"):
    script = [{"toolCalls": [{"name": f"agent__{sub_ref['agent']}", "arguments": {"input": {"text": "long"}}}]},
              {"reply": reply}]
    return spec_of(step("route", "route this", local(script), subAgents=[sub_ref]))


def test_subagent_runs_as_nested_spans():
    runtime = StaticRuntime(agents={"summarizer": StaticAgent({"rev_sum1": SUMMARIZER}, deployed="rev_sum1")})
    result = execute(router_spec({"agent": "summarizer"}), runtime=runtime, agent="router")
    assert result.status == "ok", result.error

    route_step = spans_of(result, "step", "route")[0]
    sub_span = spans_of(result, "subAgent")[0]
    sub_step = spans_of(result, "step", "summarize")[0]
    sub_llm = [span for span in spans_of(result, "llm") if span.parent_id == sub_step.id]
    assert route_step.parent_id is None
    assert sub_span.parent_id == route_step.id
    assert sub_step.parent_id == sub_span.id
    assert len(sub_llm) == 1
    assert sub_span.attributes == {"agent": "summarizer", "revisionId": "rev_sum1", "pinned": False,
                                   "providerMs": 0.0}
    assert sub_span.output == "summary of long"
    router_llms = [span for span in spans_of(result, "llm") if span.parent_id == route_step.id]
    assert router_llms[1].input["messages"][-1]["content"] == "summary of long"
    assert router_llms[0].attributes["tools"] == ["agent__summarizer"]
    assert result.totals.input_tokens == sum(span.input_tokens for span in spans_of(result, "llm"))
    assert len(spans_of(result, "llm")) == 3


def test_pinned_subagent_revision_is_used_even_if_another_is_deployed():
    older = spec_of(step("summarize", "x", local([{"reply": "old summary"}])),
                    inputs={"text": {"type": "string"}})
    runtime = StaticRuntime(agents={"summarizer": StaticAgent({"rev_old": older, "rev_new": SUMMARIZER},
                                                              deployed="rev_new")})
    result = execute(router_spec({"agent": "summarizer", "revisionId": "rev_old"}), runtime=runtime, agent="router")
    sub_span = spans_of(result, "subAgent")[0]
    assert sub_span.attributes["revisionId"] == "rev_old" and sub_span.attributes["pinned"] is True
    assert sub_span.output == "old summary"


def test_subagent_bad_input_goes_back_to_the_model():
    script = [{"toolCalls": [{"name": "agent__summarizer", "arguments": {"input": {"txt": 1}}}]}, {"reply": "hm"}]
    runtime = StaticRuntime(agents={"summarizer": StaticAgent({"rev_s": SUMMARIZER}, deployed="rev_s")})
    result = execute(spec_of(step("route", "x", local(script), subAgents=[{"agent": "summarizer"}])),
                     runtime=runtime, agent="router")
    assert result.status == "ok"
    assert spans_of(result, "subAgent")[0].error["code"] == "invalid_input"


def test_subagent_cycle_is_refused():
    back_to_router = spec_of(step("summarize", "x", local([{"reply": "never"}]), subAgents=[{"agent": "router"}]),
                             inputs={"text": {"type": "string"}})
    router = router_spec({"agent": "summarizer"})
    runtime = StaticRuntime(agents={"summarizer": StaticAgent({"rev_s": back_to_router}, deployed="rev_s"),
                                    "router": StaticAgent({"rev_r": router}, deployed="rev_r")})
    result = execute(router, runtime=runtime, agent="router")
    assert result.status == "error"
    assert result.error["code"] == "subagent_cycle"
    assert "router -> summarizer -> router" in result.error["message"]
    # Refused before the sub-agent's model was called.
    assert [span.parent_id for span in spans_of(result, "llm")] == [spans_of(result, "step", "route")[0].id]


def test_subagent_depth_is_limited():
    agents = {}
    for level in range(8):
        script = [{"toolCalls": [{"name": f"agent__a{level + 1}", "arguments": {"input": {}}}]}, {"reply": "up"}]
        agents[f"a{level}"] = StaticAgent({"rev_x": spec_of(step("s", "x", local(script),
                                                                  subAgents=[{"agent": f"a{level + 1}"}]))},
                                          deployed="rev_x")
    result = execute(agents["a0"].revisions["rev_x"], runtime=StaticRuntime(agents=agents), agent="a0")
    assert result.status == "error" and result.error["code"] == "subagent_depth"
    assert len(spans_of(result, "subAgent")) == 5


def test_missing_subagent_fails_the_run():
    result = execute(router_spec({"agent": "ghost"}), agent="router")
    assert result.status == "error" and result.error["code"] == "subagent_not_found"


# --- limits: timeout, provider failures ------------------------------------------


def test_timeout_seconds_ends_the_run_with_status_timeout():
    spec = spec_of(step("slow", "x", local(latencyMs=5000)), timeoutSeconds=1)
    started = time.monotonic()
    result = execute(spec)
    elapsed = time.monotonic() - started
    assert result.status == "timeout"
    assert result.error["code"] == "provider_timeout"
    assert 0.9 <= elapsed < 2.0
    assert spans_of(result, "llm")[0].status == "timeout"


def test_deadline_passing_during_a_tool_call_is_a_timeout(json_server, http_client):
    base_url, _ = json_server(lambda request: StubReply(200, {"late": True}, delay_ms=3000))
    script = [{"toolCalls": [{"name": "lookup_order", "arguments": {}}]}, {"reply": "never"}]
    started = time.monotonic()
    result = execute(spec_of(step("answer", "x", local(script), tools=[lookup_tool()])),
                     runtime=shop_runtime(base_url, http_client), deadline=time.monotonic() + 0.4)
    assert result.status == "timeout" and result.error["code"] == "timeout"
    assert time.monotonic() - started < 1.5


def test_parallel_step_failure_cancels_the_other_step():
    spec = spec_of(step("fails", "x", local([{"error": "provider_error", "latencyMs": 50}])),
                   step("slow", "y", local([{"latencyMs": 300, "toolCalls": [{"name": "lookup_order"}]},
                                            {"reply": "never"}]), tools=[lookup_tool()]))
    result = execute(spec)
    assert result.status == "error" and result.error["code"] == "provider_error"
    assert spans_of(result, "step", "fails")[0].status == "error"
    # The slow step finished its model call, then stopped instead of calling a tool.
    slow = spans_of(result, "step", "slow")[0]
    assert slow.status == "cancelled"
    assert [span.status for span in spans_of(result, "llm") if span.parent_id == slow.id] == ["ok"]
    assert spans_of(result, "tool") == []


def test_spec_and_input_errors_are_raised_before_running():
    with pytest.raises(SpecError):
        execute({"steps": []})
    with pytest.raises(InputError) as caught:
        execute(spec_of(step("a", "{{input.q}}"), inputs={"q": {"type": "string", "required": True}}), {})
    assert caught.value.errors == [{"path": "input.q", "message": "is required (string)"}]


# --- secrets -------------------------------------------------------------------------


def test_secret_refused_to_an_agent_outside_allowed_agents(openai_stub, http_client):
    base_url, server = openai_stub()
    runtime = StaticRuntime(secrets={"OPENAI_KEY": StaticSecret("sk-only-for-billing", ("billing",), ("127.0.0.1",))},
                            http_client=http_client)
    model = {"provider": "openai", "name": "gpt-4o-mini", "baseUrl": base_url, "apiKey": "{{secret.OPENAI_KEY}}"}
    result = execute(spec_of(step("answer", "hi", model)), runtime=runtime, agent="support")
    assert result.status == "error"
    assert result.error["code"] == "secret_not_allowed"
    assert "OPENAI_KEY" in result.error["message"]
    assert "sk-only-for-billing" not in json.dumps(result.to_dict())
    assert server.requests == []

    allowed = execute(spec_of(step("answer", "hi", model)), runtime=runtime, agent="billing")
    assert allowed.status == "ok"
    assert server.requests[0].headers["Authorization"] == "Bearer sk-only-for-billing"


def test_unknown_secret_fails_the_run():
    model = {"provider": "openai", "name": "gpt-4o-mini", "baseUrl": "http://127.0.0.1:9/v1", "apiKey": "{{secret.NOPE}}"}
    result = execute(spec_of(step("answer", "hi", model)))
    assert result.status == "error" and result.error["code"] == "unknown_secret"


def test_secret_values_never_reach_spans_or_output(json_server, http_client):
    # The integration echoes its headers back; the offline model echoes the tool result
    # into its reply, which the second step repeats into the output.
    base_url, server = json_server(lambda request: StubReply(200, {"headers": request.headers}))
    script = [{"toolCalls": [{"name": "lookup_order", "arguments": {"token": TOKEN}}]}, {"reply": "got {{prompt}}"}]
    spec = spec_of(step("answer", "look", local(script), tools=[lookup_tool()]),
                   step("repeat", "Repeat after {{steps.answer.output}}"))
    model = RecordingLocal()
    result = execute(spec, runtime=shop_runtime(base_url, http_client), providers={"fruxon-local": model})

    assert result.status == "ok"
    assert server.requests[0].headers["Authorization"] == f"Bearer {TOKEN}"  # really used
    assert result.output == "echo: Repeat after got look"
    assert TOKEN not in json.dumps(result.to_dict())
    # The model never saw the credential the integration echoed back (a prompt cannot ask for it either).
    assert TOKEN not in model.requests[1].messages[-1]["content"]
    assert "{{secret.SHOP_TOKEN}}" in model.requests[1].messages[-1]["content"]
    assert TOKEN not in model.requests[2].messages[-1]["content"]


# --- budget and cost ---------------------------------------------------------------


PRICES = {("fruxon-local", "local"): Price(input=2, cached_input=1, output=8, reasoning=10)}
USAGE = {"inputTokens": 1000, "cachedInputTokens": 400, "outputTokens": 500, "reasoningTokens": 100}


def test_cost_is_computed_from_the_price_table():
    runtime = StaticRuntime(prices=PRICES)
    result = execute(spec_of(step("answer", "x" * 40, local([{"reply": "ok", "usage": USAGE}], maxTokens=100))),
                     runtime=runtime)
    # (600 x 2 + 400 x 1 + 400 x 8 + 100 x 10) / 1e6
    assert result.totals.cost_usd == Decimal("0.00580000")
    llm = spans_of(result, "llm")[0]
    assert (llm.input_tokens, llm.cached_input_tokens, llm.output_tokens, llm.reasoning_tokens) == (1000, 400, 500, 100)
    assert llm.cost_usd == Decimal("0.00580000")
    assert result.totals.input_tokens == 1000 and result.totals.reasoning_tokens == 100
    # Reserved before the call, an upper bound (agents.engine.tokens): the input's UTF-8 bytes (role "user" 4 +
    # content 40) + 8 per message + 16 per request = 68 tokens at the dearer input rate (2), and 100 max tokens at
    # the dearer output rate (reasoning, 10).
    assert runtime.estimates == [Decimal("0.00113600")]
    # The script reports 1,000 input and 500 output tokens, past that bound: settled as reported, and flagged.
    assert result.usage_over_reservation and llm.attributes["usageOverReservation"] is True
    assert runtime.actuals == [Decimal("0.00580000")]
    assert runtime.reserved == 0 and runtime.spent == Decimal("0.00580000")


def test_unpriced_model_costs_nothing():
    result = execute(spec_of(step("answer", "x", local([{"usage": USAGE}]))))
    assert result.totals.cost_usd == 0 and result.totals.output_tokens == 500


def test_budget_refusal_ends_the_run_with_budget_exceeded():
    runtime = StaticRuntime(prices=PRICES, budget_usd="0.0005")
    result = execute(spec_of(step("answer", "x", local(maxTokens=1000))), runtime=runtime)
    assert result.status == "budget_exceeded"
    assert result.error["code"] == "budget_exceeded"
    assert spans_of(result, "llm")[0].status == "budget_exceeded"
    assert runtime.actuals == [] and runtime.spent == 0


def test_budget_is_checked_before_every_call_of_a_tool_loop(shop, http_client):
    base_url, _ = shop
    runtime = shop_runtime(base_url, http_client, prices=PRICES, budget_usd="0.0060")
    script = [{"toolCalls": [{"name": "lookup_order", "arguments": {}}], "usage": USAGE}, {"reply": "never"}]
    result = execute(spec_of(step("answer", "x", local(script, maxTokens=100), tools=[lookup_tool()])),
                     runtime=runtime)
    # First call: admitted, settled at 0.0058. Second: 0.0058 + its ~0.0009 estimate > 0.006, refused.
    assert result.status == "budget_exceeded"
    assert [span.status for span in spans_of(result, "llm")] == ["ok", "budget_exceeded"]
    assert runtime.spent == Decimal("0.00580000") and runtime.reserved == 0
    assert result.totals.cost_usd == Decimal("0.00580000")


def test_failed_provider_call_settles_its_reservation_at_zero():
    runtime = StaticRuntime(prices=PRICES)
    result = execute(spec_of(step("answer", "x", local([{"error": "provider_error"}]))), runtime=runtime)
    assert result.status == "error" and result.error["code"] == "provider_error"
    assert runtime.actuals == [Decimal(0)] and runtime.reserved == 0
