"""Budget alerts: each threshold once per period, again in the next period, and once under concurrency.

A loopback webhook receiver (tests/test_budgets.py) counts the calls and checks
each one's Standard Webhooks signature over the raw body it received.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal

import httpx
import pytest
import redis
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from monitoring import budgets
from monitoring.budget_tasks import check_thresholds
from monitoring.ledger import BudgetState, ledger, to_units
from monitoring.models import Alert, Budget, Run

from . import factories as f
from .builders import run_once
from .race_clients import max_overlap
from .server import gunicorn
from .standard_webhooks import verify
from .test_budgets import REDIS_URL, _execute, priced_agent, webhook  # noqa: F401 - webhook is a fixture


@pytest.fixture(autouse=True)
def _clean_redis():
    redis.Redis.from_url(REDIS_URL).flushdb()


def _signed(org, received) -> list[dict]:
    """The received events, each one's signature checked against the raw bytes received."""
    org.refresh_from_db()
    events = []
    for request in received:
        event = verify(org.webhook_secret, request.headers, request.raw)  # Standard Webhooks; raises if bad
        assert request.headers["X-Fruxon-Event"] == event["type"] == "budget.threshold"
        events.append(event)
    return events


def test_a_threshold_alerts_again_in_the_next_period(org, api, webhook, django_capture_on_commit_callbacks):  # noqa: F811
    """Yesterday's period crossed 50% and 100%; today's (a new period start) alerts for both again, once each."""
    url, received = webhook
    _, key = f.api_key(org, preset="runner")
    runner = api.as_key(key)
    per_run = run_once(priced_agent(org, slug="probe"), "q").cost_usd
    agent = priced_agent(org)
    budget = Budget.objects.create(organization=org, agent=agent, period="day", amount_usd=per_run * 2, enforce=False,
                                   alert_thresholds=[0.5, 1.0], alert_webhook=url)
    now = timezone.now()
    units = to_units(per_run, round_up=False)

    # The previous period, on the real ledger and the task a run enqueues after it settles.
    yesterday = BudgetState.of(budget, now - timedelta(days=1))
    for _ in range(3):
        spent = ledger().settle(ledger().reserve(yesterday, units), units)
        with django_capture_on_commit_callbacks(execute=True):
            check_thresholds.apply(args=(budget.pk, int(yesterday.period_start.timestamp()), spent - units, spent))
    assert len(received) == 2

    # This period: real executes through the API.
    for _ in range(3):
        with django_capture_on_commit_callbacks(execute=True):
            assert _execute(runner).status_code == 200
    today = BudgetState.of(budget, now)
    assert today.period_start == yesterday.period_end

    # A second report of a crossing already alerted (a redelivered task) sends nothing.
    with django_capture_on_commit_callbacks(execute=True):
        check_thresholds.apply(args=(budget.pk, int(today.period_start.timestamp()), 0, units * 2))

    events = _signed(org, received)
    got = [(datetime.fromisoformat(e["data"]["periodStart"]), e["data"]["threshold"]) for e in events]
    assert got == [(yesterday.period_start, 0.5), (yesterday.period_start, 1.0),
                   (today.period_start, 0.5), (today.period_start, 1.0)]
    assert Alert.objects.filter(kind="budget.threshold").count() == 4


@pytest.mark.django_db(transaction=True)
def test_the_same_crossing_reported_concurrently_alerts_once(webhook):  # noqa: F811
    """Sixteen workers report the same crossing at once (redelivered tasks, reconciliation): one alert each."""
    url, received = webhook
    org = f.OrganizationFactory(slug="acme")
    agent = priced_agent(org)
    budget = Budget.objects.create(organization=org, agent=agent, period="month", amount_usd=Decimal("1"),
                                   enforce=True, alert_thresholds=[0.5, 0.8, 1.0], alert_webhook=url)
    start_ts = int(BudgetState.of(budget, timezone.now()).period_start.timestamp())
    gate = threading.Barrier(16)

    def report(_):
        try:
            gate.wait(timeout=30)
            return budgets.check_thresholds(budget_id=budget.pk, period_start_ts=start_ts, spent_before=0,
                                            spent_after=to_units(Decimal("1")))
        finally:
            connection.close()

    with ThreadPoolExecutor(16) as pool:
        crossed = list(pool.map(report, range(16)))
    assert all(c == [0.5, 0.8, 1.0] for c in crossed)  # each saw the crossing ...
    events = _signed(org, received)  # ... and each threshold went out once
    assert sorted(e["data"]["threshold"] for e in events) == [0.5, 0.8, 1.0]
    assert Alert.objects.filter(kind="budget.threshold").count() == 3


RUNS = 48


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("ledger_env", [
    pytest.param({"FRUXON_LEDGER": "database"}, id="database"),
    pytest.param({"FRUXON_LEDGER": "redis", "FRUXON_LEDGER_REDIS_URL": REDIS_URL}, id="redis"),
])
def test_concurrent_runs_crossing_thresholds_alert_exactly_once(webhook, ledger_env):  # noqa: F811
    """48 runs settle within milliseconds of each other on a gunicorn server; each threshold alerts once."""
    url, received = webhook
    org = f.OrganizationFactory(slug="acme")
    per_run = run_once(priced_agent(org, slug="probe"), "q").cost_usd
    agent = priced_agent(org, latency_ms=300)
    Budget.objects.create(organization=org, agent=agent, period="day", amount_usd=per_run * RUNS, enforce=False,
                          alert_thresholds=[0.25, 0.5, 0.75, 1.0], alert_webhook=url)
    _, key = f.api_key(org, preset="runner")
    env = {**ledger_env, "DB_POOL_MAX_SIZE": "8", "DB_POOL_TIMEOUT": "30", "LOG_LEVEL": "ERROR"}
    with gunicorn(workers=2, threads=32, extra_env=env) as base:
        gate = threading.Barrier(RUNS)

        def call(n: int) -> int:
            with httpx.Client(base_url=base, timeout=60) as client:
                gate.wait(timeout=60)
                return client.post("/v1/acme/agents/support:execute", headers={"X-API-KEY": key},
                                   json={"input": {"question": f"q{n}"}}).status_code

        with ThreadPoolExecutor(RUNS) as pool:
            codes = list(pool.map(call, range(RUNS)))
    assert codes == [200] * RUNS
    runs = Run.objects.filter(agent=agent)
    overlap = max_overlap([(r.created_at, r.created_at + timedelta(milliseconds=r.latency_ms)) for r in runs])
    assert overlap >= RUNS // 2, f"only {overlap} runs were in flight together"
    with override_settings(**ledger_env):
        spent, _ = ledger().usage(BudgetState.of(Budget.objects.get(agent=agent), timezone.now()))
    assert spent == to_units(per_run * RUNS, round_up=False)

    events = _signed(org, received)  # alerts are delivered before the run's answer (eager, at commit)
    assert sorted(e["data"]["threshold"] for e in events) == [0.25, 0.5, 0.75, 1.0]
    assert {e["data"]["periodStart"] for e in events} == {
        datetime.fromtimestamp(int(BudgetState.of(Budget.objects.get(agent=agent), timezone.now())
                                   .period_start.timestamp()), dt_timezone.utc).isoformat()}
    assert Alert.objects.filter(kind="budget.threshold").count() == 4
