"""Budgets: the API, hard caps with both ledgers, a run stopped mid-way, fail-closed, threshold alerts, housekeeping."""
from __future__ import annotations

import json
import threading
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from agents.engine.testing import StubReply, start_json_server
from agents.engine.tokens import input_token_bound
from fruxon.errors import InvalidRequest
from monitoring import budgets
from monitoring.ledger import BudgetState, from_units, ledger, to_units
from monitoring.models import Alert, Budget, BudgetReservation, Run
from orgs.actor import Actor
from orgs.models import AuditEvent
from monitoring.pricing import set_overrides

from . import factories as f
from .builders import SYSTEM, agent_with_revision, local_spec, run_once
from .standard_webhooks import verify

REDIS_URL = __import__("os").environ.get("FRUXON_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
LEDGERS = [pytest.param({"FRUXON_LEDGER": "database"}, id="database"),
           pytest.param({"FRUXON_LEDGER": "redis", "FRUXON_LEDGER_REDIS_URL": REDIS_URL}, id="redis")]


@pytest.fixture(autouse=True)
def _clean_redis():
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()


def price(org, agent):
    """1 cent per token in and out for ``fruxon-local`` on ``agent``."""
    set_overrides(actor=SYSTEM, organization=org, agent=agent, rows=[{
        "provider": "fruxon-local", "model": "*", "inputPerMillion": Decimal("10000"),
        "outputPerMillion": Decimal("10000")}])


def priced_agent(org, slug="support", reply="0123456789012345678901234567890123456789", latency_ms: int = 0):
    """An agent whose every run costs the same, and exactly what it reserves: 1 cent per token in and out,
    usage reported at the reservation's upper bound (input: ``input_token_bound`` of its one message; output:
    its ``maxTokens``, 10); ``latency_ms`` per model call."""
    spec = local_spec(reply, prompt="fixed prompt", latency_ms=latency_ms)
    model = spec["steps"][0]["model"]
    model["maxTokens"] = 10
    model["script"][0]["usage"] = {
        "inputTokens": input_token_bound([{"role": "user", "content": "fixed prompt"}], []), "outputTokens": 10}
    agent, revision = agent_with_revision(org, slug, spec)
    price(org, agent)
    return agent


def two_step_spec(first_latency_ms: int = 0, second_latency_ms: int = 0) -> dict:
    """Two model calls in a row: a cheap ``answer`` (maxTokens 10), then ``polish`` reserving 1,000 tokens."""
    def model(reply, max_tokens, latency_ms):
        return {"provider": "fruxon-local", "name": "local", "maxTokens": max_tokens, "latencyMs": latency_ms,
                "script": [{"reply": reply}]}

    return {"inputs": {"question": {"type": "string", "required": True}},
            "steps": [{"name": "answer", "model": model("0123456789" * 4, 10, first_latency_ms), "prompt": "fixed prompt"},
                      {"name": "polish", "model": model("short", 1000, second_latency_ms),
                       "prompt": "Shorten: {{steps.answer.output}}"}],
            "output": "{{steps.polish.output}}"}


def _execute(client, agent="support"):
    return client.post(f"/v1/acme/agents/{agent}:execute", {"input": {"question": "q"}}, format="json")


@pytest.fixture
def runner(org, api):
    _, key = f.api_key(org, preset="runner")
    return api.as_key(key)


def test_budget_api(org, owner_client, viewer, api):
    priced_agent(org)
    assert owner_client.get("/v1/acme/agents/support/budget").status_code == 404
    put = owner_client.put("/v1/acme/agents/support/budget", {"period": "day", "amountUsd": "50", "enforce": True,
                                                              "alertThresholds": [0.5, 0.8, 1.0]}, format="json")
    assert put.status_code == 201, put.content
    body = api.as_user(viewer).get("/v1/acme/agents/support/budget").json()
    assert body["amountUsd"] == "50.0000" and body["spentUsd"] == "0.00000000" and body["usagePercent"] == 0.0
    assert body["resetsAt"] > body["periodStart"]
    assert api.as_user(viewer).put("/v1/acme/agents/support/budget", {"amountUsd": "1"}, format="json").status_code == 403
    bad = owner_client.put("/v1/acme/agents/support/budget", {"amountUsd": "-1"}, format="json")
    assert bad.status_code == 400
    # omitted fields take API.md's defaults: a monthly hard cap alerting at 50%, 80% and 100%
    defaults = owner_client.put("/v1/acme/agents/support/budget", {"amountUsd": 20}, format="json").json()
    assert (defaults["period"], defaults["enforce"], defaults["alertThresholds"]) == ("month", True, [0.5, 0.8, 1.0])
    assert owner_client.delete("/v1/acme/agents/support/budget").status_code == 204
    assert owner_client.get("/v1/acme/agents/support/budget").status_code == 404


@pytest.mark.parametrize("ledger_settings", LEDGERS)
def test_hard_cap_stops_runs_with_429(org, runner, ledger_settings):
    with override_settings(**ledger_settings):
        agent = priced_agent(org)
        first = _execute(runner)
        assert first.status_code == 200
        per_run = Decimal(first.json()["usage"]["costUsd"])
        Budget.objects.create(organization=org, agent=agent, period="day", amount_usd=per_run * 3, enforce=True)
        answers = [_execute(runner) for _ in range(5)]
        codes = [a.status_code for a in answers]
        assert codes[:2] == [200, 200] and codes[2:] == [429, 429, 429], codes
        refused = answers[-1]
        assert refused.json()["error"]["code"] == "budget_exceeded"
        assert 0 < int(refused["Retry-After"]) <= 86400
        assert Run.objects.get(pk=refused.json()["error"]["details"]["runId"]).status == "budget_exceeded"
        spent = sum(r.cost_usd for r in Run.objects.filter(agent=agent))
        assert spent <= per_run * 3
        state = BudgetState.of(Budget.objects.get(agent=agent), timezone.now())
        assert ledger().usage(state) == (to_units(spent, round_up=False), 0)


def test_alerts_only_budget_never_refuses(org, runner):
    agent = priced_agent(org)
    Budget.objects.create(organization=org, agent=agent, period="month", amount_usd=Decimal("0.00000001"), enforce=False)
    assert [_execute(runner).status_code for _ in range(3)] == [200, 200, 200]


def test_unreachable_ledger_fails_closed(org, runner):
    agent = priced_agent(org)
    Budget.objects.create(organization=org, agent=agent, period="day", amount_usd=Decimal("100"), enforce=True)
    with override_settings(FRUXON_LEDGER="redis", FRUXON_LEDGER_REDIS_URL="redis://127.0.0.1:1/0"):
        response = _execute(runner)
    assert response.status_code == 503 and response.json()["error"]["code"] == "ledger_unavailable"
    run = Run.objects.get(pk=response.json()["error"]["details"]["runId"])
    assert run.status == "error" and run.cost_usd == 0 and run.output is None
    assert not run.spans.filter(kind="llm", status="ok").exists()


def test_unreachable_ledger_does_not_stop_a_tracking_only_budget(org, runner):
    """``enforce: false`` tracks spend and alerts; it never refused a run, and an outage of the ledger
    does not make it start: the run goes on, recorded with its cost (the ledger catches up from runs)."""
    agent = priced_agent(org)
    Budget.objects.create(organization=org, agent=agent, period="day", amount_usd=Decimal("100"), enforce=False)
    with override_settings(FRUXON_LEDGER="redis", FRUXON_LEDGER_REDIS_URL="redis://127.0.0.1:1/0"):
        response = _execute(runner)
    assert response.status_code == 200, response.content
    run = Run.objects.get(pk=response.json()["runId"])
    assert run.status == "ok" and run.cost_usd > 0


@pytest.fixture
def webhook():
    """A loopback webhook receiver: yields its URL and the requests it received (headers, raw bytes)."""
    url, server = start_json_server(lambda request: StubReply(204, b""))
    yield f"{url}/alerts", server.requests
    server.close()


def test_each_threshold_alerts_once_per_period(org, runner, webhook, django_capture_on_commit_callbacks):
    url, received = webhook
    agent = priced_agent(org)
    per_run = Decimal(_execute(runner).json()["usage"]["costUsd"])
    Run.objects.all().delete()
    Budget.objects.create(organization=org, agent=agent, period="day", amount_usd=per_run * 4, enforce=False,
                          alert_thresholds=[0.5, 1.0], alert_webhook=url, alert_emails=["ops@example.com"])
    for _ in range(6):
        with django_capture_on_commit_callbacks(execute=True):
            assert _execute(runner).status_code == 200
    events = [json.loads(request.raw) for request in received]
    assert sorted(e["data"]["threshold"] for e in events) == [0.5, 1.0]
    org.refresh_from_db()
    for request in received:
        assert verify(org.webhook_secret, request.headers, request.raw)["type"] == "budget.threshold"
        assert request.headers["X-Fruxon-Event"] == "budget.threshold"
    assert Alert.objects.filter(kind="budget.threshold").count() == 2
    from django.core import mail

    assert len(mail.outbox) == 2


@pytest.mark.parametrize("ledger_settings", LEDGERS)
def test_reconcile_release_and_rollover(org, runner, ledger_settings):
    with override_settings(**ledger_settings):
        agent = priced_agent(org)
        budget = Budget.objects.create(organization=org, agent=agent, period="month", amount_usd=Decimal("10"))
        assert _execute(runner).status_code == 200
        state = BudgetState.of(budget, timezone.now())
        recorded = ledger().usage(state)[0]
        assert recorded == to_units(Run.objects.get().cost_usd, round_up=False) > 0
        ledger().set_spent(state, recorded - 12345)  # drift: the ledger lost spend
        repaired = budgets.reconcile()
        assert len(repaired) == 1 and ledger().usage(state)[0] == recorded
        assert AuditEvent.objects.filter(action="budget.reconciled").count() == 1
        ledger().set_spent(state, recorded + 12345)  # ahead of the recorded runs: spend no Run row shows
        assert budgets.reconcile() == [] and ledger().usage(state)[0] == recorded + 12345  # never lowered
        reservation = ledger().reserve(state, 1000)  # a process that died before settling
        assert ledger().usage(state)[1] == 1000
        assert budgets.release_stale(now=timezone.now()) == 0  # not stale yet
        assert budgets.release_stale(now=timezone.now() + timedelta(hours=2)) == 1
        assert ledger().usage(state) == (recorded + 12345, 0)
        assert reservation is not None and not BudgetReservation.objects.filter(pk=reservation.id).exists()
        assert budgets.rollover(now=timezone.now() + timedelta(days=40)) == 1


@pytest.mark.parametrize("ledger_settings", LEDGERS)
def test_correcting_spent_down_is_explicit_and_audited(org, runner, owner, ledger_settings):
    with override_settings(**ledger_settings):
        agent = priced_agent(org)
        budget = Budget.objects.create(organization=org, agent=agent, period="month", amount_usd=Decimal("10"))
        assert _execute(runner).status_code == 200
        state = BudgetState.of(budget, timezone.now())
        recorded = ledger().usage(state)[0]
        ledger().raise_spent(state, recorded + 50_000_000)  # $0.50 that no run shows
        actor = Actor(user=owner)
        with pytest.raises(InvalidRequest):
            budgets.correct_spent(actor=actor, agent=agent, spent_usd=Decimal("0"), reason="below the runs")
        with pytest.raises(InvalidRequest):
            budgets.correct_spent(actor=actor, agent=agent, spent_usd=from_units(recorded), reason=" ")
        data = budgets.correct_spent(actor=actor, agent=agent, spent_usd=from_units(recorded), reason="refund")
        assert data["previousUsd"] == str(from_units(recorded + 50_000_000))
        assert ledger().usage(state)[0] == recorded
        assert budgets.reconcile() == [] and ledger().usage(state)[0] == recorded  # the correction sticks
        event = AuditEvent.objects.get(action="budget.corrected")
        assert event.data["reason"] == "refund" and event.target_id == "support"
        assert event.actor_label == "user:olivia"


def test_budget_correction_over_the_api(org, runner, owner_client, editor, viewer, api):
    agent = priced_agent(org)
    url = "/v1/acme/agents/support/budget:correct"
    assert owner_client.post(url, {"spentUsd": "0", "reason": "r"}, format="json").status_code == 404  # no budget yet
    budget = Budget.objects.create(organization=org, agent=agent, period="month", amount_usd=Decimal("10"))
    assert _execute(runner).status_code == 200
    state = BudgetState.of(budget, timezone.now())
    recorded = ledger().usage(state)[0]
    ledger().raise_spent(state, recorded + 50_000_000)  # $0.50 that no run shows (a wrong price, since fixed)
    for client in (api.as_user(editor), api.as_user(viewer)):
        assert client.post(url, {"spentUsd": "0", "reason": "r"}, format="json").status_code == 403
    for bad in ({"spentUsd": "0", "reason": "below the runs"}, {"spentUsd": str(from_units(recorded)), "reason": " "},
                {"spentUsd": "-1", "reason": "negative"}, {"reason": "no amount"},
                {"spentUsd": "1", "reason": "x", "extra": 1}):
        refused = owner_client.post(url, bad, format="json")
        assert refused.status_code == 400, (bad, refused.content)
        assert refused.json()["error"]["code"] == "invalid_request" and refused.json()["error"]["details"]["fields"]
    assert ledger().usage(state)[0] == recorded + 50_000_000 and not AuditEvent.objects.filter(
        action="budget.corrected").exists()  # nothing half-written
    done = owner_client.post(url, {"spentUsd": str(from_units(recorded)), "reason": "provider refund"}, format="json")
    assert done.status_code == 200, done.content
    body = done.json()
    assert Decimal(body["spentUsd"]) == from_units(recorded) and body["reason"] == "provider refund"
    assert Decimal(body["previousUsd"]) == from_units(recorded + 50_000_000) and body["amountUsd"] == "10.0000"
    assert Decimal(owner_client.get("/v1/acme/agents/support/budget").json()["spentUsd"]) == from_units(recorded)
    event = AuditEvent.objects.get(action="budget.corrected")
    assert event.actor_label == "user:olivia" and event.data["reason"] == "provider refund"


@pytest.mark.parametrize("ledger_settings", LEDGERS)
def test_a_run_stops_mid_way_when_its_next_call_is_refused(org, runner, ledger_settings):
    """The budget admits the run's first model call but not its second: the run stops there, recorded."""
    with override_settings(**ledger_settings):
        probe, _ = agent_with_revision(org, "probe", two_step_spec())
        price(org, probe)
        probe_run = run_once(probe, "q")
        estimates = [Decimal(s.attributes["estimateUsd"]) for s in probe_run.spans.filter(kind="llm").order_by("position")]
        first_cost = probe_run.spans.filter(kind="llm").order_by("position").first().cost_usd
        assert len(estimates) == 2 and 0 < first_cost <= estimates[0] < estimates[1]
        agent, _ = agent_with_revision(org, "support", two_step_spec())
        price(org, agent)
        cap = estimates[0]  # admits the first call's worst case; then spent + the second's > cap
        assert first_cost + estimates[1] > cap
        Budget.objects.create(organization=org, agent=agent, period="day", amount_usd=cap, enforce=True)

        response = _execute(runner)
        assert response.status_code == 429, response.content
        error = response.json()["error"]
        assert error["code"] == "budget_exceeded"
        assert 0 < int(response["Retry-After"]) <= 86400
        run = Run.objects.get(pk=error["details"]["runId"])
        assert run.status == "budget_exceeded" and run.agent == agent
        llm = list(run.spans.filter(kind="llm").order_by("position"))
        assert [(s.name, s.status) for s in llm] == [("local", "ok"), ("local", "budget_exceeded")]
        assert run.cost_usd == first_cost == llm[0].cost_usd  # the first call happened and was paid for
        state = BudgetState.of(Budget.objects.get(agent=agent), timezone.now())
        spent, reserved = ledger().usage(state)
        assert (spent, reserved) == (to_units(first_cost, round_up=False), 0)
        assert spent <= state.cap_units


@pytest.mark.django_db(transaction=True)
def test_database_ledger_fails_closed_when_its_row_cannot_be_locked(api):
    """The database ledger's "unreachable": its period row stays locked (a stuck transaction, a lock storm).

    The reservation gives up after FRUXON_LEDGER_LOCK_TIMEOUT_MS and the run fails closed (503), instead of
    holding the request for as long as the lock lasts.
    """
    import psycopg

    from .server import database_url

    org = f.OrganizationFactory(slug="acme")
    _, key = f.api_key(org, preset="runner")
    runner = api.as_key(key)
    agent = priced_agent(org)
    budget = Budget.objects.create(organization=org, agent=agent, period="day", amount_usd=Decimal("100"), enforce=True)
    state = BudgetState.of(budget, timezone.now())
    with override_settings(FRUXON_LEDGER="database", FRUXON_LEDGER_LOCK_TIMEOUT_MS=300):
        ledger().open_period(state)
        answers = []
        with psycopg.connect(database_url()) as holder:  # another session holds the period row
            holder.execute("SELECT 1 FROM monitoring_budgetperiod WHERE agent_id = %s FOR UPDATE", [agent.pk])
            def call():
                try:
                    answers.append(_execute(runner))
                finally:
                    connection.close()

            worker = threading.Thread(target=call, daemon=True)
            worker.start()
            worker.join(timeout=10)
            finished_while_locked = not worker.is_alive()
            holder.rollback()
        worker.join(timeout=30)
        assert finished_while_locked, "the reservation waited on the lock instead of failing closed"
        response = answers[0]
        assert response.status_code == 503 and response.json()["error"]["code"] == "ledger_unavailable"
        run = Run.objects.get(pk=response.json()["error"]["details"]["runId"])
        assert run.status == "error" and run.cost_usd == 0 and run.output is None
        assert ledger().usage(state) == (0, 0) and not BudgetReservation.objects.exists()
        assert _execute(runner).status_code == 200  # lock released: admitted again
