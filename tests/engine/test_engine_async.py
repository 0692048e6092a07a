"""Issue 13, the engine's part: the async engine (arun), its sync form (run), streaming, events and
cancellation, against loopback stubs (agents.engine.testing), with nothing of the engine mocked."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from datetime import timedelta
from decimal import Decimal

import pytest

from agents.engine import IntegrationInfo, Price, RunContext, arun, run
from agents.engine.pricing import estimate_usd
from agents.engine.spec import validate_spec
from agents.engine.testing import AsyncStaticRuntime, StaticAgent, StaticRuntime, StaticSecret, StubReply
from agents.engine.tokens import input_token_bound, utf8_length

KEY = "sk-async-test-0123456789"
PRICES = {("openai", "gpt-4o-mini"): Price(input="100", output="400"),
          ("fruxon-local", "local"): Price(input="100", output="400")}


def local(script=None, **extra):
    model = {"provider": "fruxon-local", "name": "local", **extra}
    if script is not None:
        model["script"] = script
    return model


def openai_model(base_url, **extra):
    return {"provider": "openai", "name": "gpt-4o-mini", "baseUrl": base_url, "apiKey": "{{secret.KEY}}",
            "maxTokens": 300, **extra}


def secrets():
    return {"KEY": StaticSecret(KEY, allowed_hosts=("127.0.0.1",))}


def context(**extra):
    return RunContext(agent="support", revision_id="rev_async", **extra)


class Recorder:
    """An ``events`` callback that keeps every event, and when each came."""

    def __init__(self):
        self.events = []
        self.deltas = asyncio.Queue()

    async def __call__(self, name, data):
        self.events.append((name, data, time.monotonic()))
        if name == "output.delta":
            self.deltas.put_nowait(data["text"])

    def names(self):
        return [name for name, _, _ in self.events]

    def text(self):
        return "".join(data["text"] for name, data, _ in self.events if name == "output.delta")


def shape(result):
    """What a run produced, without times and generated ids."""
    return {"status": result.status, "output": result.output, "error": result.error,
            "totals": result.totals, "usage_over_reservation": result.usage_over_reservation,
            "spans": [(span.kind, span.name, span.status, span.input, span.output, span.input_tokens,
                       span.output_tokens, span.cost_usd, span.error,
                       {k: v for k, v in span.attributes.items() if k != "providerMs"}) for span in result.spans]}


def tool_spec(base_url):
    summarizer = {"steps": [{"name": "summarize", "model": local([{"reply": "summary of {{input.text}}"}]),
                             "prompt": "Summarize {{input.text}}"}],
                  "inputs": {"text": {"type": "string", "required": True}}}
    script = [{"toolCalls": [{"name": "lookup_order", "arguments": {"id": "42"}}]},
              {"toolCalls": [{"name": "agent__summarizer", "arguments": {"input": {"text": "{{input.q}}"}}}]},
              {"reply": "Order {{input.q}}: {{prompt}}"}]
    spec = {"inputs": {"q": {"type": "string", "required": True}},
            "steps": [{"name": "answer", "model": local(script, maxTokens=200), "prompt": "Where is {{input.q}}?",
                       "tools": [{"name": "lookup_order", "integration": "shop"}],
                       "subAgents": [{"agent": "summarizer"}]},
                      {"name": "polish", "model": local([{"reply": "Polished: {{steps.answer.output}}"}]),
                       "prompt": "Shorten: {{steps.answer.output}}"}]}
    runtime_args = dict(secrets={"TOKEN": "tok-123"}, prices=PRICES,
                        integrations={"shop": IntegrationInfo("shop", base_url, credentials_secret="TOKEN")},
                        agents={"summarizer": StaticAgent({"rev_s": summarizer}, deployed="rev_s")})
    return spec, runtime_args


# --- run and arun: one engine --------------------------------------------------------------------


def test_item1_arun_and_run_give_identical_results(json_server):
    base_url, shop = json_server(lambda request: StubReply(200, {"order": request.body, "status": "shipped"}))
    spec, runtime_args = tool_spec(base_url)

    sync_runtime = StaticRuntime(**runtime_args)
    by_run = run(spec, {"q": "order 42"}, context=context(), runtime=sync_runtime)
    async_runtime = AsyncStaticRuntime(**runtime_args)
    by_arun = asyncio.run(arun(spec, {"q": "order 42"}, context=context(), runtime=async_runtime))
    adapted_runtime = StaticRuntime(**runtime_args)
    by_adapter = asyncio.run(arun(spec, {"q": "order 42"}, context=context(), runtime=adapted_runtime))

    assert by_run.status == "ok", by_run.error
    assert by_run.output == "Polished: Order order 42: Where is order 42?"
    assert shape(by_run) == shape(by_arun) == shape(by_adapter)
    assert [span.kind for span in by_run.spans] == ["step", "llm", "tool", "llm", "subAgent", "step", "llm", "llm",
                                                    "step", "llm"]
    assert len(shop.requests) == 3 and shop.requests[0].headers["Authorization"] == "Bearer tok-123"
    for runtime in (sync_runtime, async_runtime, adapted_runtime):
        assert runtime.estimates == sync_runtime.estimates and runtime.actuals == sync_runtime.actuals
        assert runtime.reserved == 0 and runtime.spent == by_run.totals.cost_usd


def test_item1_run_and_arun_through_the_openai_provider(openai_stub):
    base_url, stub = openai_stub(script=[{"content": "It shipped.",
                                          "usage": {"prompt_tokens": 20, "completion_tokens": 4}}])
    spec = {"steps": [{"name": "answer", "model": openai_model(base_url), "prompt": "Where is order 42?"}]}
    by_run = run(spec, {}, context=context(), runtime=StaticRuntime(secrets=secrets(), prices=PRICES))
    by_arun = asyncio.run(arun(spec, {}, context=context(), runtime=AsyncStaticRuntime(secrets=secrets(),
                                                                                       prices=PRICES)))
    assert by_run.output == by_arun.output == "It shipped."
    assert shape(by_run) == shape(by_arun)
    assert [request.headers["Authorization"] for request in stub.requests] == [f"Bearer {KEY}"] * 2
    assert KEY not in json.dumps(by_run.to_dict()) and KEY not in json.dumps(by_arun.to_dict())


def test_item1_run_refuses_a_running_loop():
    spec = {"steps": [{"name": "a", "model": local(), "prompt": "x"}]}

    async def inside():
        with pytest.raises(RuntimeError, match="await"):
            run(spec, {}, context=context(), runtime=StaticRuntime())
        return await arun(spec, {}, context=context(), runtime=StaticRuntime())

    assert asyncio.run(inside()).output == "echo: x"


def test_item1_independent_steps_overlap_dependent_ones_do_not():
    spec = {"steps": [{"name": "a", "model": local(latencyMs=300), "prompt": "A"},
                      {"name": "b", "model": local(latencyMs=300), "prompt": "B"},
                      {"name": "joined", "model": local(latencyMs=50), "prompt": "{{steps.a.output}} {{steps.b.output}}"}],
            "output": "{{steps.joined.output}}"}
    threads_before = {thread.ident for thread in threading.enumerate()}
    result = asyncio.run(arun(spec, {}, context=context(), runtime=AsyncStaticRuntime()))
    assert result.status == "ok" and result.output == "echo: echo: A echo: B"
    spans = {span.name: span for span in result.spans if span.kind == "step"}

    def end(span):
        return span.started_at + timedelta(milliseconds=span.latency_ms)

    a, b, joined = spans["a"], spans["b"], spans["joined"]
    assert a.started_at < end(b) and b.started_at < end(a), "independent steps did not overlap"
    assert joined.started_at >= max(end(a), end(b)) - timedelta(milliseconds=1), "a dependent step did not wait"
    assert 300 <= result.latency_ms < 550  # 300 + 50, not 650: gathered
    assert 340 <= result.provider_ms < 500  # the critical path: one of a, b, then joined
    # Gathered on the loop: no step thread pool (a native async runtime needs no thread either).
    assert not [t for t in threading.enumerate() if t.ident not in threads_before and "fruxon" in t.name]


def test_item2_async_runtime_pairs_reservations_of_concurrent_steps():
    spec = {"steps": [{"name": "a", "model": local(latencyMs=100, maxTokens=100), "prompt": "A" * 50},
                      {"name": "b", "model": local(latencyMs=20, maxTokens=900), "prompt": "B"}],
            "output": {"a": "{{steps.a.output}}", "b": "{{steps.b.output}}"}}
    runtime = AsyncStaticRuntime(prices=PRICES)
    result = asyncio.run(arun(spec, {}, context=context(), runtime=runtime))
    assert result.status == "ok"
    # b settled first, with its own reservation (the larger one): what stays reserved is a's, not b's.
    assert runtime.reserved == 0 and runtime.spent == result.totals.cost_usd
    assert [kind for kind, _ in runtime.tokens] == ["before", "before", "after", "after"]
    assert runtime.tokens[0][1] == input_token_bound([{"role": "user", "content": "A" * 50}], []) + 100


def test_item2_sync_runtime_calls_do_not_block_a_shared_loop():
    class SlowRuntime(StaticRuntime):
        def price_for(self, provider, model):
            time.sleep(0.3)  # a blocking lookup (a database without an async driver)
            return None

    spec = {"steps": [{"name": "a", "model": local(), "prompt": "x"}]}
    ticks = []

    async def main():
        async def ticker():
            while True:
                ticks.append(time.monotonic())
                await asyncio.sleep(0.02)

        clock = asyncio.create_task(ticker())
        result = await arun(spec, {}, context=context(), runtime=SlowRuntime())
        clock.cancel()
        return result

    assert asyncio.run(main()).status == "ok"
    assert len(ticks) >= 10  # the loop kept ticking while price_for slept on a lane thread


# --- streaming -------------------------------------------------------------------------------


def test_item4_streamed_and_not_streamed_calls_give_the_same_output_and_usage(openai_stub):
    usage = {"prompt_tokens": 31, "completion_tokens": 9, "prompt_tokens_details": {"cached_tokens": 10},
             "completion_tokens_details": {"reasoning_tokens": 2}}
    base_url, stub = openai_stub(script=[{"chunks": ["Order ", "42 has ", "shipped", "."], "usage": usage}])
    spec = {"steps": [{"name": "answer", "model": openai_model(base_url), "prompt": "Where is order 42?"}]}

    plain = asyncio.run(arun(spec, {}, context=context(), runtime=AsyncStaticRuntime(secrets=secrets(),
                                                                                     prices=PRICES)))
    events = Recorder()
    streamed = asyncio.run(arun(spec, {}, context=context(), runtime=AsyncStaticRuntime(secrets=secrets(),
                                                                                        prices=PRICES),
                                events=events))
    assert plain.output == streamed.output == "Order 42 has shipped."
    assert shape(plain) == shape(streamed)
    assert (streamed.totals.input_tokens, streamed.totals.cached_input_tokens, streamed.totals.output_tokens,
            streamed.totals.reasoning_tokens) == (31, 10, 9, 2)
    assert events.text() == streamed.output
    assert [data["text"] for name, data, _ in events.events if name == "output.delta"] == \
        ["Order ", "42 has ", "shipped", "."]
    first, second = stub.requests
    assert "stream" not in first.body and "stream_options" not in first.body
    assert second.body["stream"] is True and second.body["stream_options"] == {"include_usage": True}


def test_item4_streamed_tool_calls_are_assembled(openai_stub, json_server):
    shop_url, shop = json_server(lambda request: StubReply(200, {"id": request.body["id"], "status": "shipped"}))
    base_url, stub = openai_stub(script=[
        {"content": None, "toolCalls": [{"name": "lookup_order", "arguments": {"id": "42", "note": "ünï"}}],
         "usage": {"prompt_tokens": 50, "completion_tokens": 12}},
        {"chunks": ["Shipped", "!"], "usage": {"prompt_tokens": 80, "completion_tokens": 3}},
    ])
    spec = {"steps": [{"name": "answer", "model": openai_model(base_url), "prompt": "Where is order 42?",
                       "tools": [{"name": "lookup_order", "integration": "shop"}]}]}
    runtime = AsyncStaticRuntime(secrets=secrets(), integrations={"shop": IntegrationInfo("shop", shop_url)})
    events = Recorder()
    result = asyncio.run(arun(spec, {}, context=context(), runtime=runtime, events=events))
    assert result.status == "ok", result.error
    assert result.output == events.text() == "Shipped!"
    assert shop.requests[0].body == {"id": "42", "note": "ünï"}
    assert all(request.body.get("stream") is True for request in stub.requests)
    assert (result.totals.input_tokens, result.totals.output_tokens) == (130, 15)


def test_item4_fruxon_local_scripts_chunks_and_their_timing():
    script = [{"chunks": ["Hel", "lo {{input.name}}", "!"], "latencyMs": 100, "chunkDelayMs": 60}]
    spec = {"inputs": {"name": {"type": "string"}},
            "steps": [{"name": "greet", "model": local(script), "prompt": "hi"}]}
    assert validate_spec(spec) == []
    events = Recorder()
    started = time.monotonic()
    streamed = asyncio.run(arun(spec, {"name": "Ada"}, context=context(), runtime=AsyncStaticRuntime(),
                                events=events))
    deltas = [(data["text"], at - started) for name, data, at in events.events if name == "output.delta"]
    assert [text for text, _ in deltas] == ["Hel", "lo Ada", "!"]
    assert 0.09 <= deltas[0][1] < 0.2 and deltas[1][1] - deltas[0][1] >= 0.05 and deltas[2][1] - deltas[1][1] >= 0.05
    plain = run(spec, {"name": "Ada"}, context=context(), runtime=StaticRuntime())
    assert plain.output == streamed.output == "Hello Ada!"
    assert shape(plain) == shape(streamed)
    assert plain.provider_ms >= 210 and streamed.provider_ms >= 210  # the same simulated time either way

    counted = {"steps": [{"name": "s", "model": local([{"reply": "abcdefgh"}], chunks=4), "prompt": "x"}]}
    events = Recorder()
    asyncio.run(arun(counted, {}, context=context(), runtime=AsyncStaticRuntime(), events=events))
    assert [data["text"] for name, data, _ in events.events if name == "output.delta"] == ["ab", "cd", "ef", "gh"]


def test_item4_spec_validates_the_streaming_fields():
    def problems(model):
        return {p.path: p.message for p in validate_spec({"steps": [{"name": "s", "model": model, "prompt": "x"}]})}

    assert problems(local([{"chunks": ["a", "{{input.nope}}"]}])) == {
        "$.steps[0].model.script[0].chunks[1]": "{{input.nope}} refers to an undeclared input 'nope'"}
    assert "$.steps[0].model.script[0].chunks" in problems(local([{"chunks": ["a"], "reply": "a"}]))
    assert "$.steps[0].model.script[0].chunks" in problems(local([{"chunks": 0}]))
    assert "$.steps[0].model.script[0].chunks" in problems(local([{"chunks": []}]))
    assert "$.steps[0].model.script[0].chunks[0]" in problems(local([{"chunks": [7]}]))
    assert "$.steps[0].model.script[0].chunkDelayMs" in problems(local([{"chunkDelayMs": -1}]))
    assert "$.steps[0].model.chunks" in problems(local(chunks=["a"]))
    assert "$.steps[0].model.chunkDelayMs" in problems(openai_model("https://api.openai.com/v1", chunkDelayMs=5))
    assert problems(local([{"chunks": 3, "reply": "abc", "chunkDelayMs": 5}], chunks=2, chunkDelayMs=1)) == {}
    secret_chunk = validate_spec({"steps": [{"name": "s", "prompt": "x",
                                             "model": local([{"chunks": ["{{secret.KEY}}"]}])}]})
    assert [p.message for p in secret_chunk] == ["{{secret.KEY}}: secrets cannot be used here"]


# --- events ------------------------------------------------------------------------------------


def test_item5_events_in_order(json_server):
    base_url, _ = json_server(lambda request: StubReply(200, {"status": "shipped"}))
    answer_script = [{"toolCalls": [{"name": "lookup_order", "arguments": {"id": "7"}}]},
                     {"reply": "Shipped", "chunks": 1}]
    spec = {"steps": [{"name": "answer", "model": local(answer_script), "prompt": "Where is 7?",
                       "tools": [{"name": "lookup_order", "integration": "shop"}]},
                      {"name": "polish", "model": local([{"chunks": ["Your order ", "has ", "shipped."]}]),
                       "prompt": "Polish {{steps.answer.output}}"}],
            "output": "{{steps.polish.output}}"}
    runtime = AsyncStaticRuntime(integrations={"shop": IntegrationInfo("shop", base_url)}, prices=PRICES)
    events = Recorder()
    result = asyncio.run(arun(spec, {}, context=context(), runtime=runtime, events=events))
    assert result.status == "ok"
    assert events.names() == ["step.started", "tool.call", "tool.result", "step.completed",
                              "step.started", "output.delta", "output.delta", "output.delta", "step.completed"]
    data = [data for _, data, _ in events.events]
    assert data[0] == {"step": "answer"}
    assert data[1] == {"step": "answer", "tool": "lookup_order", "arguments": {"id": "7"}}
    assert data[2] == {"step": "answer", "tool": "lookup_order", "status": "ok"}
    answer_llm = [span for span in result.spans if span.kind == "llm"][:2]
    assert data[3] == {"step": "answer", "status": "ok", "usage": {
        "inputTokens": sum(s.input_tokens for s in answer_llm), "cachedInputTokens": 0,
        "outputTokens": sum(s.output_tokens for s in answer_llm), "reasoningTokens": 0,
        "costUsd": format(sum(s.cost_usd for s in answer_llm), "f")}}
    assert events.text() == result.output == "Your order has shipped."
    assert data[-1]["step"] == "polish" and data[-1]["status"] == "ok"
    # Without events nothing streams and nothing is sent: the same run.
    assert shape(asyncio.run(arun(spec, {}, context=context(), runtime=AsyncStaticRuntime(
        integrations={"shop": IntegrationInfo("shop", base_url)}, prices=PRICES)))) == shape(result)


def test_item5_a_tool_step_streams_only_its_final_answer():
    script = [{"reply": "Let me look that up.", "chunks": 3,
               "toolCalls": [{"name": "agent__helper", "arguments": {"input": {}}}]},
              {"reply": "Here it is.", "chunks": 3}]
    helper = {"steps": [{"name": "h", "model": local([{"reply": "helped", "chunks": 2}]), "prompt": "help"}]}
    spec = {"steps": [{"name": "answer", "model": local(script), "prompt": "x", "subAgents": [{"agent": "helper"}]}]}
    events = Recorder()
    result = asyncio.run(arun(spec, {}, context=context(), events=events, runtime=AsyncStaticRuntime(
        agents={"helper": StaticAgent({"rev_h": helper}, deployed="rev_h")})))
    assert result.output == "Here it is." == events.text()
    # The sub-run's steps send no events of their own; its call is a tool call of the step.
    assert events.names() == ["step.started", "tool.call", "tool.result", "output.delta", "output.delta",
                              "output.delta", "step.completed"]
    assert events.events[1][1]["tool"] == "agent__helper"


def test_item5_shaped_output_streams_nothing():
    spec = {"steps": [{"name": "a", "model": local([{"chunks": ["x", "y"]}]), "prompt": "p"}],
            "output": {"answer": "{{steps.a.output}}"}}
    events = Recorder()
    result = asyncio.run(arun(spec, {}, context=context(), runtime=AsyncStaticRuntime(), events=events))
    assert result.output == {"answer": "xy"} and "output.delta" not in events.names()


def test_item5_deltas_never_carry_a_secret(json_server):
    # The integration echoes its credential; the model repeats the tool result in its streamed answer.
    base_url, _ = json_server(lambda request: StubReply(200, {"auth": request.headers["Authorization"]}))
    script = [{"toolCalls": [{"name": "echo", "arguments": {}}]},
              {"chunks": ["got ", "Bearer tok-se", "cret-99 ok"]}]
    spec = {"steps": [{"name": "s", "model": local(script), "prompt": "x",
                       "tools": [{"name": "echo", "integration": "shop"}]}]}
    events = Recorder()
    runtime = AsyncStaticRuntime(secrets={"TOKEN": "tok-secret-99"},
                                 integrations={"shop": IntegrationInfo("shop", base_url, credentials_secret="TOKEN")})
    result = asyncio.run(arun(spec, {}, context=context(), runtime=runtime, events=events))
    assert result.output == "got Bearer {{secret.TOKEN}} ok" == events.text()
    assert "tok-se" not in json.dumps([data for _, data, _ in events.events])


def test_item4_provider_error_mid_stream_fails_the_run_with_its_spans(openai_stub):
    base_url, stub = openai_stub(script=[{"chunks": ["one ", "two ", "three"], "failAfterChunks": 2}])
    spec = {"steps": [{"name": "answer", "model": openai_model(base_url), "prompt": "count"}]}
    runtime = AsyncStaticRuntime(secrets=secrets(), prices=PRICES)
    events = Recorder()
    result = asyncio.run(arun(spec, {}, context=context(), runtime=runtime, events=events))
    assert result.status == "error" and result.error == {"code": "provider_error",
                                                         "message": "the model provider's stream broke off"}
    assert result.output is None
    step_span, llm = result.spans
    assert (step_span.kind, step_span.status, llm.kind, llm.status) == ("step", "error", "llm", "error")
    assert events.names()[-1] == "step.completed" and events.events[-1][1]["status"] == "error"
    assert events.text() == "one two "
    assert len(stub.requests) == 1  # part of the answer was out: not retried
    # What came was generated: billed as the input's bound plus the bytes streamed.
    bound = input_token_bound([{"role": "user", "content": "count"}], [])
    cost = estimate_usd(bound, len("one two "), PRICES[("openai", "gpt-4o-mini")])
    assert (llm.input_tokens, llm.output_tokens, llm.cost_usd) == (bound, len("one two "), cost)
    assert runtime.actuals == [cost] and runtime.reserved == 0

    local_spec = {"steps": [{"name": "s", "prompt": "x",
                             "model": local([{"chunks": ["a", "b"], "error": "provider_error"}])}]}
    failed = asyncio.run(arun(local_spec, {}, context=context(), runtime=AsyncStaticRuntime(), events=Recorder()))
    assert (failed.status, failed.error["code"]) == ("error", "provider_error")
    assert [span.status for span in failed.spans] == ["error", "error"]


# --- cancellation ----------------------------------------------------------------------------


def _streaming_spec(base_url):
    return {"steps": [{"name": "answer", "model": openai_model(base_url), "prompt": "Tell me a long story."}]}


def test_item6_cancelling_the_task_closes_the_connection_and_bills_what_was_streamed(openai_stub):
    base_url, stub = openai_stub(script=[{"chunks": ["Once ", "upon ", "a ", "time ", "there ", "was"] * 5,
                                          "chunkDelayMs": 300}])
    runtime = AsyncStaticRuntime(secrets=secrets(), prices=PRICES)
    events = Recorder()

    async def main():
        task = asyncio.create_task(arun(_streaming_spec(base_url), {}, context=context(), runtime=runtime,
                                        events=events))
        received = [await events.deltas.get(), await events.deltas.get()]
        cancelled_at = time.monotonic()
        task.cancel()
        result = await task  # arun returns its result: the caller records it
        return result, received, cancelled_at

    result, received, cancelled_at = asyncio.run(main())
    assert stub.wait_for_disconnect(5)
    [gone] = stub.disconnects
    assert gone.at - cancelled_at < 0.25  # closed at once, not at the next chunk (300 ms later)
    assert gone.events_sent == 3  # the role chunk and the two pieces received

    assert result.status == "cancelled" and result.error["code"] == "cancelled" and result.output is None
    step_span, llm = result.spans
    assert (step_span.status, llm.status) == ("cancelled", "cancelled")
    bound = input_token_bound([{"role": "user", "content": "Tell me a long story."}], [])
    streamed = sum(utf8_length(text) for text in received)
    assert (llm.input_tokens, llm.output_tokens) == (bound, streamed) == (bound, len("Once upon "))
    cost = estimate_usd(bound, streamed, PRICES[("openai", "gpt-4o-mini")])
    assert llm.cost_usd == cost and llm.attributes["usageBound"] is True
    assert result.totals.cost_usd == cost
    # The reservation (bound + maxTokens) was settled at that cost.
    assert runtime.estimates == [estimate_usd(bound, 300, PRICES[("openai", "gpt-4o-mini")])]
    assert runtime.actuals == [cost] and runtime.reserved == 0 and runtime.spent == cost
    assert "step.completed" not in events.names()  # nobody is listening any more


def test_item6_cancelled_call_not_streamed_is_billed_its_whole_bound(openai_stub):
    base_url, stub = openai_stub(latency_ms=5000)
    runtime = StaticRuntime(secrets=secrets(), prices=PRICES)  # a sync runtime, adapted

    async def main():
        task = asyncio.create_task(arun(_streaming_spec(base_url), {}, context=context(), runtime=runtime))
        while not stub.requests:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        task.cancel()
        return await task

    result = asyncio.run(main())
    assert stub.wait_for_disconnect(5) and stub.disconnects[0].events_sent == 0
    assert result.status == "cancelled"
    llm = result.spans[1]
    bound = input_token_bound([{"role": "user", "content": "Tell me a long story."}], [])
    # Nothing of the answer was seen: the provider may have produced up to maxTokens.
    assert (llm.input_tokens, llm.output_tokens) == (bound, 300)
    assert runtime.actuals == runtime.estimates == [llm.cost_usd] and runtime.reserved == 0


def test_item6_deadline_mid_stream_is_a_timeout_billed_like_a_cancellation(openai_stub):
    base_url, stub = openai_stub(script=[{"chunks": ["a" * 10] * 20, "chunkDelayMs": 200}])
    runtime = AsyncStaticRuntime(secrets=secrets(), prices=PRICES)
    events = Recorder()
    started = time.monotonic()
    result = asyncio.run(arun(_streaming_spec(base_url), {}, context=context(deadline=time.monotonic() + 0.5),
                              runtime=runtime, events=events))
    assert time.monotonic() - started < 1.0
    assert result.status == "timeout" and result.error["code"] == "provider_timeout"
    assert stub.wait_for_disconnect(5)
    llm = result.spans[1]
    streamed = len(events.text())
    assert streamed in (20, 30) and (llm.output_tokens, llm.attributes["usageBound"]) == (streamed, True)
    assert runtime.actuals == [llm.cost_usd] and llm.cost_usd > 0 and runtime.reserved == 0
    assert events.events[-1][1] == {"step": "answer", "status": "timeout", "usage": {
        "inputTokens": llm.input_tokens, "cachedInputTokens": 0, "outputTokens": streamed, "reasoningTokens": 0,
        "costUsd": format(llm.cost_usd, "f")}}


def test_item6_cancellation_stops_parallel_steps_and_settles_each():
    spec = {"steps": [{"name": "a", "model": local([{"chunks": 5, "reply": "aaaaa", "chunkDelayMs": 400}]),
                       "prompt": "A"},
                      {"name": "b", "model": local(latencyMs=5000), "prompt": "B"}],
            "output": "{{steps.a.output}}"}
    runtime = AsyncStaticRuntime(prices=PRICES)
    events = Recorder()

    async def main():
        task = asyncio.create_task(arun(spec, {}, context=context(), runtime=runtime, events=events))
        await events.deltas.get()
        task.cancel()
        started = time.monotonic()
        result = await task
        return result, time.monotonic() - started

    result, took = asyncio.run(main())
    assert took < 0.2
    assert result.status == "cancelled"
    assert sorted(span.status for span in result.spans) == ["cancelled"] * 4
    llm = {span.parent_id: span for span in result.spans if span.kind == "llm"}
    steps = {span.name: span.id for span in result.spans if span.kind == "step"}
    assert llm[steps["a"]].output_tokens == 1  # one piece streamed
    assert llm[steps["b"]].output_tokens == 1024  # not streamed: its whole bound
    assert len(runtime.actuals) == 2 and runtime.reserved == 0 and runtime.spent == result.totals.cost_usd


# --- scale ---------------------------------------------------------------------------------


def test_item1_300_concurrent_runs_on_one_loop_all_succeed(openai_stub):
    base_url, stub = openai_stub(latency_ms=1000)
    spec = {"inputs": {"n": {"type": "string", "required": True}},
            "steps": [{"name": "answer", "model": openai_model(base_url), "prompt": "question {{input.n}}"}]}

    async def main():
        runtime = AsyncStaticRuntime(secrets=secrets())
        return await asyncio.gather(*(arun(spec, {"n": str(i)}, context=context(deadline=time.monotonic() + 30),
                                           runtime=runtime) for i in range(300)))

    results = asyncio.run(main())
    assert [result.status for result in results] == ["ok"] * 300
    assert [result.output for result in results] == [f"stub: question {i}" for i in range(300)]
    assert len(stub.requests) == 300


def test_item1_one_pooled_client_per_loop_through_the_egress_policy():
    from agents.engine import egress
    from agents.engine.aio import run_sync
    from agents.engine.transport import ASYNC_CLIENT_SHARDS, default_async_client

    async def client():
        return default_async_client()

    # A thread's private loop (run, complete): one client, kept from run to run.
    first = run_sync(client())
    assert run_sync(client()) is first

    async def shards():
        return {default_async_client() for _ in range(3 * ASYNC_CLIENT_SHARDS)}

    # A shared loop (a server's): a bounded set of shards, dealt in turn.
    clients = asyncio.run(shards())
    assert len(clients) == ASYNC_CLIENT_SHARDS
    for each in (first, *clients):
        assert isinstance(each._transport._pool._network_backend, egress.AsyncGuardedBackend)
        assert each.follow_redirects is False

    async def refused():
        egress.configure(egress.EgressPolicy())  # loopback not allowed
        try:
            with pytest.raises(Exception) as caught:
                await default_async_client().get("http://127.0.0.1:9/")
            return caught.value
        finally:
            egress.configure(egress.EgressPolicy.from_setting("127.0.0.1"))

    assert egress.is_denied(asyncio.run(refused()))
