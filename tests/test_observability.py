"""Issue 14 item 4 (observability) and the /healthz and /readyz part of item 3.

/healthz, /readyz and /metrics as an operator uses them (probes, a scraper), the
metrics moving by exactly the executes made (in one process, and summed across two
gunicorn workers), and runs exported as OTLP traces with the GenAI conventions.
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import httpx
import pytest
from django.test import override_settings
from prometheus_client.parser import text_string_to_metric_families

from monitoring import observability
from monitoring.models import Budget, Run, Span

from . import factories as f
from .builders import agent_with_revision, local_spec
from .server import gunicorn

REDIS_URL = os.environ.get("FRUXON_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
TOKEN = "scrape-token-0123456789"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SilentServer:
    """A port that accepts connections (the kernel's backlog) and never says a word: a hung server."""

    def __enter__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        return self

    def __exit__(self, *exc):
        self.sock.close()


def parse(text: str) -> dict[tuple, float]:
    """The exposition as ``{(sample name, sorted labels): value}``."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: dict, name: str, **labels) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(value for (sample, have), value in samples.items()
               if sample == name and set(labels.items()) <= set(have))


def scrape(client) -> dict:
    answer = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert answer.status_code == 200, answer.content
    return parse(answer.content.decode())


# --- /healthz ----------------------------------------------------------------------------------

def test_healthz_answers_200_without_database_session_or_host_check(client):
    # No db fixture: pytest-django makes any database access here an error.
    answer = client.get("/healthz", HTTP_HOST="10.1.2.3:8000")  # a probe reaching the pod by its IP
    assert answer.status_code == 200
    assert answer.json() == {"status": "ok"}
    assert "Set-Cookie" not in answer  # no session
    assert "Content-Security-Policy" in answer  # the security headers still apply
    assert client.post("/healthz").status_code == 405


# --- /readyz -----------------------------------------------------------------------------------

def test_readyz_200_when_postgres_and_redis_answer(db, client, settings):
    settings.REDIS_URL = REDIS_URL
    answer = client.get("/readyz")
    assert answer.status_code == 200, answer.content
    body = answer.json()
    assert body["status"] == "ready"
    assert {name: c["status"] for name, c in body["components"].items()} == {"database": "up", "redis": "up"}


def test_readyz_503_names_redis_when_unreachable(db, client, settings):
    settings.REDIS_URL = f"redis://:hunter2pass@127.0.0.1:{_closed_port()}/0"
    started = time.monotonic()
    answer = client.get("/readyz")
    assert time.monotonic() - started < 2
    assert answer.status_code == 503
    error = answer.json()["error"]
    assert error["code"] == "service_unavailable" and "redis" in error["message"]
    components = error["details"]["components"]
    assert components["redis"]["status"] == "down" and components["database"]["status"] == "up"
    assert "hunter2pass" not in answer.content.decode() and "127.0.0.1" not in answer.content.decode()


def test_readyz_503_within_two_seconds_when_redis_hangs(db, client, settings):
    with SilentServer() as silent:
        settings.REDIS_URL = f"redis://127.0.0.1:{silent.port}/0"
        started = time.monotonic()
        answer = client.get("/readyz")
        assert time.monotonic() - started < 2
    assert answer.status_code == 503
    assert answer.json()["error"]["details"]["components"]["redis"] == {
        "status": "down", "error": "timeout", "latencyMs": answer.json()["error"]["details"]["components"]["redis"]["latencyMs"]}


def test_readyz_without_redis_configured_is_ready_with_redis_disabled(db, client, settings):
    settings.REDIS_URL = ""
    answer = client.get("/readyz")
    assert answer.status_code == 200
    assert answer.json()["components"]["redis"] == {"status": "disabled"}


@pytest.mark.django_db(transaction=True)
def test_readyz_503_names_database_when_unreachable_and_healthz_still_answers():
    """A server whose PostgreSQL is a closed port, then one whose PostgreSQL accepts and never answers:
    /healthz answers 200 and /readyz 503 naming the database, each within 2 s (no pool wait, no hang)."""
    with SilentServer() as silent:
        for port in (_closed_port(), silent.port):
            env = {"DATABASE_URL": f"postgres://postgres@127.0.0.1:{port}/nowhere", "REDIS_URL": REDIS_URL}
            with gunicorn(workers=1, threads=4, extra_env=env) as base:
                for path, expected in (("/healthz", 200), ("/readyz", 503), ("/readyz", 503)):
                    started = time.monotonic()
                    answer = httpx.get(base + path, timeout=10)
                    assert time.monotonic() - started < 2, path
                    assert answer.status_code == expected, (path, answer.text)
                error = answer.json()["error"]
                assert error["code"] == "service_unavailable" and "database" in error["message"]
                assert error["details"]["components"]["database"]["status"] == "down"
                assert error["details"]["components"]["redis"]["status"] == "up"


def test_operations_paths_answer_under_asgi_too(db, settings):
    """Under ASGI the middleware runs async; the checks that wait on the network run off the event loop."""
    from asgiref.sync import async_to_sync
    from django.test import AsyncClient

    settings.REDIS_URL = REDIS_URL
    settings.FRUXON_METRICS_TOKEN = TOKEN
    client = AsyncClient()
    assert async_to_sync(client.get)("/healthz").json() == {"status": "ok"}
    ready = async_to_sync(client.get)("/readyz")
    assert ready.status_code == 200 and ready.json()["components"]["database"]["status"] == "up"
    scraped = async_to_sync(client.get)("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert scraped.status_code == 200 and b"fruxon_executions" in scraped.content
    assert async_to_sync(client.get)("/metrics").status_code == 401


# --- /metrics: access --------------------------------------------------------------------------

def test_metrics_404_without_the_token_setting(client, settings):
    settings.FRUXON_METRICS_TOKEN = ""
    answer = client.get("/metrics", HTTP_AUTHORIZATION="Bearer anything")
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "not_found"


def test_metrics_401_without_the_bearer_200_with_it(client, settings):
    settings.FRUXON_METRICS_TOKEN = TOKEN
    for headers in ({}, {"HTTP_AUTHORIZATION": "Bearer wrong"}, {"HTTP_AUTHORIZATION": f"Basic {TOKEN}"},
                    {"HTTP_X_API_KEY": TOKEN}, {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}x"}):
        answer = client.get("/metrics", **headers)
        assert answer.status_code == 401, headers
        assert answer.json()["error"]["code"] == "unauthenticated"
        assert answer["WWW-Authenticate"].startswith("Bearer")
    answer = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert answer.status_code == 200
    assert answer["Content-Type"].startswith("text/plain")
    assert "fruxon_executions_total" in answer.content.decode() or "fruxon_executions" in answer.content.decode()


# --- /metrics: what moves ----------------------------------------------------------------------

@pytest.fixture
def metrics_on(settings):
    settings.FRUXON_METRICS_TOKEN = TOKEN
    settings.CELERY_BROKER_URL = REDIS_URL


def _priced(org, agent):
    from monitoring.pricing import set_overrides

    from .builders import SYSTEM

    set_overrides(actor=SYSTEM, organization=org, agent=agent, rows=[{
        "provider": "fruxon-local", "model": "*", "inputPerMillion": Decimal(10000), "outputPerMillion": Decimal(10000)}])


def test_metrics_count_exactly_the_executes_made(org, api, client, metrics_on, settings,
                                                 django_capture_on_commit_callbacks):
    """Metrics are counted once a run's record commits (here the test's transaction holds the commit)."""
    spec = local_spec("0123456789" * 4)
    spec["steps"][0]["model"]["maxTokens"] = 10
    spec["steps"][0]["model"]["script"][0]["usage"] = {"inputTokens": 7, "outputTokens": 5, "cachedInputTokens": 2,
                                                      "reasoningTokens": 1}
    agent, revision = agent_with_revision(org, "support", spec)
    _priced(org, agent)
    _, key = f.api_key(org, preset="runner")
    runner = api.as_key(key)
    before = scrape(client)

    with django_capture_on_commit_callbacks(execute=True):
        answers = [runner.post("/v1/acme/agents/support:execute", {"input": {"question": "q"}}, format="json")
                   for _ in range(3)]
        answers.append(runner.post("/v1/acme/agents/support:execute",
                                   {"input": {"question": "q"}, "revisionId": revision.id}, format="json"))
    assert [a.status_code for a in answers] == [200] * 4
    runs = list(Run.objects.filter(agent=agent))
    assert len(runs) == 4
    after = scrape(client)

    def delta(name, **labels):
        return total(after, name, **labels) - total(before, name, **labels)

    ours = {"org": "acme", "agent": "support"}
    assert delta("fruxon_executions_total", **ours, revision=revision.id, status="ok", source="api") == 4
    assert delta("fruxon_executions_total", **ours) == 4
    assert delta("fruxon_execute_duration_seconds_count", **ours, source="api") == 4
    assert delta("fruxon_execute_overhead_seconds_count", **ours) == 4
    assert delta("fruxon_tokens_total", **ours, kind="input") == sum(r.input_tokens for r in runs) == 28
    assert delta("fruxon_tokens_total", **ours, kind="output") == sum(r.output_tokens for r in runs) == 20
    assert delta("fruxon_tokens_total", **ours, kind="cached") == 8
    assert delta("fruxon_tokens_total", **ours, kind="reasoning") == 4
    assert delta("fruxon_cost_usd_total", **ours) == pytest.approx(float(sum(r.cost_usd for r in runs)))
    assert sum(r.cost_usd for r in runs) > 0

    # A hard cap refuses the next call: one ledger refusal, one run with status budget_exceeded.
    with override_settings(FRUXON_LEDGER="database"):
        Budget.objects.create(organization=org, agent=agent, period="day", amount_usd=Decimal("0.00000001"), enforce=True)
        with django_capture_on_commit_callbacks(execute=True):
            refused = runner.post("/v1/acme/agents/support:execute", {"input": {"question": "q"}}, format="json")
    assert refused.status_code == 429
    later = scrape(client)
    assert total(later, "fruxon_ledger_refusals_total", **ours, reason="budget_exceeded") - total(
        before, "fruxon_ledger_refusals_total", **ours, reason="budget_exceeded") == 1
    assert total(later, "fruxon_executions_total", **ours, status="budget_exceeded") - total(
        before, "fruxon_executions_total", **ours, status="budget_exceeded") == 1

    # The rate limiter's counter (another part of issue 14 calls it on every 429 rate_limited).
    observability.rate_limited("org:requests", "acme")
    assert total(scrape(client), "fruxon_rate_limited_total", scope="org:requests", org="acme") - total(
        before, "fruxon_rate_limited_total", scope="org:requests", org="acme") == 1


def test_metrics_count_ledger_unavailable_refusals(org, api, client, metrics_on, django_capture_on_commit_callbacks):
    """An enforced budget whose ledger cannot be reached refuses the call (503): counted as ledger_unavailable."""
    agent, _ = agent_with_revision(org, "support")
    _priced(org, agent)
    Budget.objects.create(organization=org, agent=agent, period="day", amount_usd=Decimal(100), enforce=True)
    _, key = f.api_key(org, preset="runner")
    before = scrape(client)
    with override_settings(FRUXON_LEDGER="redis", FRUXON_LEDGER_REDIS_URL=f"redis://127.0.0.1:{_closed_port()}/0"), \
            django_capture_on_commit_callbacks(execute=True):
        answer = api.as_key(key).post("/v1/acme/agents/support:execute", {"input": {"question": "q"}}, format="json")
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "ledger_unavailable"
    after = scrape(client)
    labels = {"org": "acme", "agent": "support", "reason": "ledger_unavailable"}
    assert total(after, "fruxon_ledger_refusals_total", **labels) - total(before, "fruxon_ledger_refusals_total", **labels) == 1
    assert total(after, "fruxon_ledger_refusals_total", reason="budget_exceeded") == total(
        before, "fruxon_ledger_refusals_total", reason="budget_exceeded")


def test_metrics_read_queue_depth_from_the_broker(client, metrics_on, settings):
    """Every queue tasks are routed to, read from the broker at scrape time. (Queue names of this test's
    own: other tests may use the real queues of the same Redis database at the same time.)"""
    import redis

    settings.CELERY_TASK_DEFAULT_QUEUE = "obs-default"
    settings.CELERY_TASK_ROUTES = {"deployments.run_shadow": {"queue": "obs-shadow"},
                                   "evaluations.run_evaluation": {"queue": "obs-evaluations"},
                                   "evaluations.evaluate_chunk": {"queue": "obs-evaluations"}}
    keys = ("obs-default", "obs-evaluations", "obs-shadow", "obs-evaluations\x06\x163")
    broker = redis.Redis.from_url(REDIS_URL)
    broker.delete(*keys)
    try:
        broker.rpush("obs-evaluations", "a", "b")
        broker.rpush("obs-evaluations\x06\x163", "c")  # a priority list of the same queue
        broker.rpush("obs-shadow", "d")
        samples = scrape(client)
        assert total(samples, "fruxon_celery_broker_up") == 1
        assert {dict(labels)["queue"]: value for (name, labels), value in samples.items()
                if name == "fruxon_celery_queue_depth"} == {"obs-default": 0, "obs-evaluations": 3, "obs-shadow": 1}
    finally:
        broker.delete(*keys)
    settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{_closed_port()}/0"
    started = time.monotonic()
    samples = scrape(client)
    assert time.monotonic() - started < 2
    assert total(samples, "fruxon_celery_broker_up") == 0
    assert not any(name == "fruxon_celery_queue_depth" for name, _ in samples)


def test_metrics_recording_adds_no_query_to_execute(org, api, settings, django_assert_num_queries):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    agent_with_revision(org, "support")
    _, key = f.api_key(org, preset="runner")
    runner = api.as_key(key)

    def queries() -> int:
        runner.post("/v1/acme/agents/support:execute", {"input": {"question": "q"}}, format="json")  # warm caches
        with CaptureQueriesContext(connection) as captured:
            assert runner.post("/v1/acme/agents/support:execute", {"input": {"question": "q"}},
                               format="json").status_code == 200
        return len(captured)

    settings.FRUXON_METRICS_TOKEN = ""
    without = queries()
    settings.FRUXON_METRICS_TOKEN = TOKEN
    assert queries() == without


@pytest.mark.django_db(transaction=True)
def test_metrics_sum_the_executes_of_two_gunicorn_workers(tmp_path):
    """Two worker processes, each serving some of the executes: every scrape, whichever worker answers,
    counts exactly the executes made; a file left by a dead process of an earlier server (claiming 1,000
    executions) is cleaned away at start."""
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    org = f.OrganizationFactory(slug="acme")
    agent, revision = agent_with_revision(org, "support", local_spec(latency_ms=20))
    _, key = f.api_key(org, preset="runner")
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = MmapedDict(str(metrics_dir / f"counter_{dead.pid}.db"))
    labels = ("acme", "support", revision.id, "ok", "api")
    stale.write_value(mmap_key("fruxon_executions", "fruxon_executions_total",
                               ("org", "agent", "revision", "status", "source"), labels,
                               "Runs recorded, by agent, revision, status and source."), 1000.0, 0.0)
    stale.close()

    env = {"FRUXON_METRICS_TOKEN": TOKEN, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    with gunicorn(workers=2, threads=8, extra_env=env) as base:
        assert not (metrics_dir / f"counter_{dead.pid}.db").exists()
        with httpx.Client(base_url=base, timeout=30) as http:
            def execute(_):
                # A new connection each time (a kept-alive one stays with the worker that accepted it).
                return http.post("/v1/acme/agents/support:execute", json={"input": {"question": "q"}},
                                 headers={"X-API-KEY": key, "Connection": "close"}).status_code

            def shares() -> list[float]:
                """Each worker process's own count of executions, read from its file."""
                return [sum(value for name, value, *_ in MmapedDict.read_all_values_from_file(str(path))
                            if json.loads(name)[1] == "fruxon_executions_total")
                        for path in metrics_dir.glob("counter_*.db")]

            made = 0
            while made < 60 or len([share for share in shares() if share]) < 2:
                assert made < 600, f"the kernel never handed the second worker a connection: {shares()}"
                with ThreadPoolExecutor(16) as pool:
                    codes = list(pool.map(execute, range(30)))
                assert codes == [200] * 30
                made += 30
            assert len([share for share in shares() if share]) == 2 and sum(shares()) == made
            for _ in range(6):  # whichever worker answers the scrape, it counts both workers' executes
                answer = http.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}", "Connection": "close"})
                assert answer.status_code == 200
                samples = parse(answer.text)
                assert total(samples, "fruxon_executions_total", org="acme", agent="support", revision=revision.id,
                             status="ok", source="api") == made
                assert total(samples, "fruxon_execute_duration_seconds_count", org="acme", agent="support") == made
                assert total(samples, "fruxon_execute_overhead_seconds_count", org="acme", agent="support") == made
            assert http.get("/metrics").status_code == 401
    assert Run.objects.filter(agent=agent).count() == made


# --- OTLP export -------------------------------------------------------------------------------

@pytest.fixture
def memory_exporter():
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
        InMemorySpanExporter,
    )

    exporter = InMemorySpanExporter()
    observability.configure_tracing(SimpleSpanProcessor(exporter))
    yield exporter
    observability.flush_traces()
    observability.configure_tracing(None)


SECRET_VALUE = "sk-otlp-test-9f8e7d6c5b4a39281706"


def _traced_agent(org):
    """A router whose model (an OpenAI-compatible stub, authenticated with a secret) calls a tool and a
    sub-agent, then answers."""
    from agents.engine.testing import StubReply, start_json_server, start_openai_stub

    tool_base, tool_server = start_json_server(lambda request: StubReply(200, {"order": "shipped"}))
    base_url, model_server = start_openai_stub(script=[
        {"toolCalls": [{"name": "lookup", "arguments": {"id": 7}},
                       {"name": "agent__helper", "arguments": {"input": {"question": "sub"}}}],
         "usage": {"prompt_tokens": 11, "completion_tokens": 3}},
        {"content": "all done", "usage": {"prompt_tokens": 20, "completion_tokens": 4}}])
    f.secret(org, "OPENAI", SECRET_VALUE, allowed_hosts=["127.0.0.1"])
    f.integration(org, "shop", config={"baseUrl": f"{tool_base}/api", "headers": {}})
    agent_with_revision(org, "helper", local_spec("helper says hi"))
    spec = local_spec()
    spec["steps"][0]["model"] = {"provider": "openai", "name": "gpt-4o-mini", "baseUrl": base_url,
                                 "apiKey": "{{secret.OPENAI}}", "maxTokens": 64}
    spec["steps"][0]["tools"] = [{"name": "lookup", "integration": "shop"}]
    spec["steps"][0]["subAgents"] = [{"agent": "helper"}]
    agent, revision = agent_with_revision(org, "support", spec)
    return agent, revision, (tool_server, model_server)


def _run_traced(org, api, capture_commits):
    _, revision, servers = _traced_agent(org)
    _, key = f.api_key(org, preset="runner")
    try:
        with capture_commits(execute=True):
            answer = api.as_key(key).post("/v1/acme/agents/support:execute", {"input": {"question": "secret plans"}},
                                      format="json")
    finally:
        for server in servers:
            server.shutdown()
    assert answer.status_code == 200, answer.content
    observability.flush_traces()
    return Run.objects.get(pk=answer["X-Fruxon-Run-Id"]), revision


def test_otlp_exports_a_run_as_a_trace_with_genai_attributes(org, api, memory_exporter, django_capture_on_commit_callbacks):
    run, revision = _run_traced(org, api, django_capture_on_commit_callbacks)
    spans = memory_exporter.get_finished_spans()
    by_id = {span.context.span_id: span for span in spans}
    assert len({span.context.trace_id for span in spans}) == 1  # one run, one trace
    roots = [span for span in spans if span.parent is None]
    assert len(roots) == 1
    root = roots[0]
    assert root.name == "invoke_agent support"
    assert root.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert root.attributes["gen_ai.agent.name"] == "support"
    assert root.attributes["fruxon.run.id"] == run.id
    assert root.attributes["fruxon.org"] == "acme"
    assert root.attributes["fruxon.revision.id"] == revision.id
    assert root.attributes["fruxon.run.status"] == "ok"
    assert root.attributes["fruxon.cost_usd"] == float(run.cost_usd)

    def parent_of(span):
        return by_id[span.parent.span_id]

    # The recorded tree, kind by kind, each under its recorded parent.
    recorded = list(Span.objects.filter(run=run).order_by("position"))
    assert len(spans) == len(recorded) + 1
    steps = [s for s in spans if s.name == "step answer"]  # the router's and the helper's
    assert len(steps) == 2
    step = next(s for s in steps if parent_of(s) is root)
    chats = [s for s in spans if s.attributes.get("gen_ai.operation.name") == "chat"
             and s.attributes["gen_ai.provider.name"] == "openai"]
    assert len(chats) == 2 and all(parent_of(s) is step for s in chats)
    first = min(chats, key=lambda s: s.start_time)
    assert first.name == "chat gpt-4o-mini"
    assert first.attributes["gen_ai.provider.name"] == "openai"
    assert first.attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert first.attributes["gen_ai.request.max_tokens"] == 64
    assert (first.attributes["gen_ai.usage.input_tokens"], first.attributes["gen_ai.usage.output_tokens"]) == (11, 3)
    tool = next(s for s in spans if s.attributes.get("gen_ai.operation.name") == "execute_tool")
    assert tool.name == "execute_tool lookup" and tool.attributes["gen_ai.tool.name"] == "lookup"
    assert parent_of(tool) is step
    sub = next(s for s in spans if s.name == "invoke_agent helper")
    assert parent_of(sub) is step and sub.attributes["gen_ai.agent.name"] == "helper"
    assert sub.attributes["gen_ai.operation.name"] == "invoke_agent"
    sub_step = next(s for s in spans if s.name == "step answer" and s is not step)
    assert parent_of(sub_step) is sub
    sub_chat = next(s for s in spans if s.attributes.get("gen_ai.provider.name") == "fruxon-local")
    assert parent_of(sub_chat) is sub_step and sub_chat.name == "chat local"

    # Real times: each span at its recorded start, for its recorded duration, inside its parent.
    for record in recorded:
        span = next(s for s in spans if s.attributes.get("fruxon.span.id") == record.id)
        assert abs(span.start_time - int(record.started_at.timestamp() * 1e9)) < 2_000_000
        assert abs((span.end_time - span.start_time) / 1e6 - record.latency_ms) <= 1.5
    for span in spans:
        if span.parent is not None:
            parent = parent_of(span)
            assert parent.start_time <= span.start_time and span.end_time <= parent.end_time + 2_000_000

    # No content by default, and never a secret.
    exported = json.dumps([{"name": s.name, **dict(s.attributes)} for s in spans], default=str)
    assert SECRET_VALUE not in exported
    assert "secret plans" not in exported and "all done" not in exported and "shipped" not in exported
    assert not any(key.startswith(("gen_ai.input", "gen_ai.output")) for s in spans for key in s.attributes)


def test_otlp_content_capture_is_opt_in_and_still_without_secrets(org, api, memory_exporter, settings, django_capture_on_commit_callbacks):
    settings.FRUXON_OTEL_CAPTURE_CONTENT = True
    _run_traced(org, api, django_capture_on_commit_callbacks)
    spans = memory_exporter.get_finished_spans()
    exported = json.dumps([dict(s.attributes) for s in spans], default=str)
    assert "secret plans" in exported and "all done" in exported and "shipped" in exported
    assert SECRET_VALUE not in exported
    chat = next(s for s in spans if s.attributes.get("gen_ai.request.model") == "gpt-4o-mini")
    assert "secret plans" in chat.attributes["gen_ai.input.messages"]


def test_otlp_export_happens_off_the_request_thread(org, api, memory_exporter, django_capture_on_commit_callbacks):
    """The request only queues the run: the spans are built and exported by the exporter's own thread."""
    import threading

    seen = []
    original = memory_exporter.export

    def export(spans):
        seen.append(threading.current_thread().name)
        return original(spans)

    memory_exporter.export = export
    _run_traced(org, api, django_capture_on_commit_callbacks)
    assert seen and set(seen) == {"fruxon-otlp"}


def test_otlp_is_off_without_an_endpoint(monkeypatch):
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    exporter = observability._Exporter()
    assert exporter.enabled is False
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    exporter = observability._Exporter()
    assert exporter.enabled is True
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    processor = exporter.provider._active_span_processor._span_processors[0]
    assert isinstance(processor._batch_processor._exporter if hasattr(processor, "_batch_processor")
                      else processor.span_exporter, OTLPSpanExporter)
    exporter.provider.shutdown()


def test_docs_name_every_metric():
    text = (observability.__file__.rsplit("/monitoring/", 1)[0] + "/docs/observability.md")
    with open(text) as handle:
        docs = handle.read()
    for metric in observability.REGISTRY.collect():
        assert re.search(rf"`{metric.name}", docs), metric.name
    assert "fruxon_celery_queue_depth" in docs
