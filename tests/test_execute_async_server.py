"""The async execute family under the README's production command (gunicorn + uvicorn workers).

What only a real ASGI server shows: a client that goes away cancels its run (the provider
connection is closed, the run recorded ``cancelled`` and billed what the provider could bill),
a process past its in-flight limit answers 503 ``overloaded`` at once, and hundreds of
executes in flight at once all succeed with their own revision's answer. Correctness tests:
nothing here asserts a speed beyond "well before the model would have answered".
"""
from __future__ import annotations

import asyncio
import json
import time
from decimal import Decimal

import httpx
import pytest

from agents.engine.testing import start_openai_stub
from agents.engine.tokens import input_token_bound, utf8_length
from agents.services import create_revision
from monitoring.models import ModelPrice, Run

from . import factories as f
from .builders import SYSTEM, agent_with_revision
from .server import gunicorn

pytestmark = pytest.mark.django_db(transaction=True)
# The org's own price (per million tokens): transactional tests flush the built-in price rows.
PRICE = {"input": Decimal("0.15"), "output": Decimal("0.60")}
PROMPT = "Tell me a long story."


def openai_spec(base_url: str, prompt: str = PROMPT, max_tokens: int = 300) -> dict:
    return {"inputs": {"q": {"type": "string"}},
            "steps": [{"name": "answer", "prompt": prompt,
                       "model": {"provider": "openai", "name": "gpt-4o-mini", "baseUrl": base_url,
                                 "apiKey": "{{secret.OPENAI_KEY}}", "maxTokens": max_tokens}}],
            "output": "{{steps.answer.output}}"}


def world(base_url: str, **spec) -> tuple[str, object]:
    org = f.OrganizationFactory(slug="acme")
    ModelPrice.objects.create(organization=org, provider="openai", model="gpt-4o-mini",
                              input_per_million=PRICE["input"], output_per_million=PRICE["output"])
    f.secret(org, "OPENAI_KEY", "sk-test", allowed_hosts=["127.0.0.1"])
    agent, _ = agent_with_revision(org, "support", openai_spec(base_url, **spec))
    _, key = f.api_key(org, preset="runner")
    return key, agent


def cost(input_tokens: int, output_tokens: int) -> Decimal:
    return ((input_tokens * PRICE["input"] + output_tokens * PRICE["output"]) / 1_000_000).quantize(Decimal("1e-8"))


def wait_for_run(run_id: str, timeout: float = 10.0) -> Run:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = Run.objects.filter(pk=run_id).first()
        if run is not None:
            return run
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} was never recorded")


def test_client_gone_mid_stream_cancels_the_run_and_pays_what_was_streamed():
    base_url, stub = start_openai_stub(script=[{"chunks": ["Once ", "upon ", "a ", "time ", "there ", "was"] * 5,
                                                "chunkDelayMs": 300}])
    key, _ = world(base_url)
    with stub, gunicorn(workers=1) as base:
        deltas, run_id = [], None
        with httpx.Client(base_url=base, timeout=30) as client, client.stream(
                "POST", "/v1/acme/agents/support:execute", headers={"X-API-KEY": key},
                json={"input": {}, "stream": True}) as response:
            assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
            run_id = response.headers["X-Fruxon-Run-Id"]
            event = None
            for line in response.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "output.delta":
                    deltas.append(json.loads(line[6:])["text"])
                    if len(deltas) == 2:
                        break
            gone_at = time.monotonic()
        # Leaving the block closes the connection mid-stream.
        assert stub.wait_for_disconnect(5), "the provider connection stayed open"
        assert stub.disconnects[0].at - gone_at < 2.0  # at once, not at the stream's end (9 s away)
        run = wait_for_run(run_id)
    assert run.status == "cancelled" and run.error["code"] == "cancelled" and run.output is None
    [llm] = run.spans.filter(kind="llm")
    bound = input_token_bound([{"role": "user", "content": PROMPT}], [])
    streamed = sum(utf8_length(text) for text in deltas)
    assert llm.status == "cancelled" and llm.input_tokens == bound
    # The deltas the client saw, plus at most what was on the wire when it left.
    assert streamed <= llm.output_tokens <= streamed + len("time there ")
    assert run.cost_usd == cost(bound, llm.output_tokens) > 0


def test_client_gone_before_a_plain_answer_cancels_the_run_billed_its_bound():
    base_url, stub = start_openai_stub(latency_ms=10_000)
    key, agent = world(base_url, max_tokens=300)
    with stub, gunicorn(workers=1) as base:
        sent = time.monotonic()
        with pytest.raises(httpx.ReadTimeout), httpx.Client(base_url=base, timeout=1.0) as client:
            client.post("/v1/acme/agents/support:execute", headers={"X-API-KEY": key}, json={"input": {}})
        assert stub.wait_for_disconnect(5), "the provider connection stayed open"
        assert stub.disconnects[0].at - sent < 5.0 and stub.disconnects[0].events_sent == 0
        deadline = time.monotonic() + 10
        while not Run.objects.filter(agent=agent).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    run = Run.objects.get(agent=agent)
    assert run.status == "cancelled"
    [llm] = run.spans.filter(kind="llm")
    bound = input_token_bound([{"role": "user", "content": PROMPT}], [])
    # Nothing streamed: the provider may have produced up to maxTokens, so that is what it could bill.
    assert (llm.input_tokens, llm.output_tokens) == (bound, 300)
    assert run.cost_usd == cost(bound, 300)


def test_past_the_in_flight_limit_answers_503_at_once():
    base_url, stub = start_openai_stub(latency_ms=3_000)
    key, _ = world(base_url)
    with stub, gunicorn(workers=1, extra_env={"FRUXON_MAX_IN_FLIGHT": "20"}) as base:
        async def one(client: httpx.AsyncClient):
            started = time.monotonic()
            response = await client.post("/v1/acme/agents/support:execute", headers={"X-API-KEY": key},
                                         json={"input": {}})
            return response, time.monotonic() - started

        async def main():
            limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
            async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
                return await asyncio.gather(*(one(client) for _ in range(60)))

        answers = asyncio.run(main())
        served = len(stub.requests)
    ok = [(r, s) for r, s in answers if r.status_code == 200]
    refused = [(r, s) for r, s in answers if r.status_code == 503]
    assert (len(ok), len(refused)) == (20, 40), sorted(r.status_code for r, _ in answers)
    for response, seconds in refused:
        assert response.json()["error"]["code"] == "overloaded"
        assert int(response.headers["Retry-After"]) >= 1
        assert seconds < 3.0  # answered before any model could have (its answer takes 3 s)
    assert served == 20  # the refused ones never reached the model
    assert Run.objects.count() == 20


def test_300_executes_in_flight_at_once_each_get_their_revisions_answer():
    base_url, stub = start_openai_stub(latency_ms=1_000, record=False)
    org = f.OrganizationFactory(slug="acme")
    f.secret(org, "OPENAI_KEY", "sk-test", allowed_hosts=["127.0.0.1"])
    agent, first = agent_with_revision(org, "support", openai_spec(base_url, prompt="{{input.q}} via one"))
    second = create_revision(actor=SYSTEM, agent=agent, spec=openai_spec(base_url, prompt="{{input.q}} via two"))
    third = create_revision(actor=SYSTEM, agent=agent, spec=openai_spec(base_url, prompt="{{input.q}} via three"))
    names = {first.id: "one", second.id: "two", third.id: "three"}
    _, key = f.api_key(org, preset="runner")
    revisions = [first.id, second.id, third.id]
    with stub, gunicorn(workers=2) as base:
        async def one(client: httpx.AsyncClient, n: int):
            return await client.post("/v1/acme/agents/support:execute", headers={"X-API-KEY": key},
                                     json={"input": {"q": f"q{n}"}, "revisionId": revisions[n % 3]})

        async def main():
            limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
            async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
                return await asyncio.gather(*(one(client, n) for n in range(300)))

        answers = asyncio.run(main())
    bad = [(a.status_code, a.text[:200]) for a in answers if a.status_code != 200]
    assert not bad, bad[:5]
    for n, answer in enumerate(answers):
        body = answer.json()
        assert body["revisionId"] == revisions[n % 3]
        assert body["output"] == f"stub: q{n} via {names[body['revisionId']]}"
    assert Run.objects.filter(agent=agent, status="ok").count() == 300


def test_a_stream_refused_by_the_budget_is_an_ordinary_json_answer():
    """API.md: anything refused before the run starts is JSON, not a stream, 429 budget_exceeded with
    Retry-After included; the refusal is recorded as a run, as for a non-streamed execute."""
    from monitoring.models import Budget

    base_url, stub = start_openai_stub()
    key, agent = world(base_url)
    Budget.objects.create(organization=agent.organization, agent=agent, period="day",
                          amount_usd=Decimal("0.00000001"), enforce=True)
    with stub, gunicorn(workers=1) as base:
        response = httpx.post(f"{base}/v1/acme/agents/support:execute", headers={"X-API-KEY": key},
                              json={"input": {}, "stream": True}, timeout=30)
    assert response.status_code == 429 and response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == "budget_exceeded" and int(response.headers["Retry-After"]) > 0
    assert Run.objects.get(pk=response.headers["X-Fruxon-Run-Id"]).status == "budget_exceeded"
    assert stub.requests == []  # refused before any model call
