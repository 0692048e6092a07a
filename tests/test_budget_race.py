"""The budget race: 200 concurrent executes from 2 server processes against a cap worth k runs.

No more than k runs may be admitted and the recorded spend may not pass the
cap, with either ledger (DESIGN rule 6: overshoot is zero against declared
limits). For scale: LiteLLM's budgets overshot by multiples of concurrency
(its issue #34732).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import httpx
import pytest
import redis

from monitoring.models import Budget, Run

from . import factories as f
from .server import gunicorn
from .test_budgets import priced_agent

REDIS_URL = os.environ.get("FRUXON_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
EXECUTES, K = 200, 20


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("ledger_env", [
    pytest.param({"FRUXON_LEDGER": "database"}, id="database"),
    pytest.param({"FRUXON_LEDGER": "redis", "FRUXON_LEDGER_REDIS_URL": REDIS_URL}, id="redis"),
])
def test_concurrent_executes_never_pass_the_cap(ledger_env):
    redis.Redis.from_url(REDIS_URL).flushdb()
    org = f.OrganizationFactory(slug="acme")
    agent = priced_agent(org)
    from agents import execution

    probe = execution.execute(agent=agent, input={"question": "q"}).run
    per_run = probe.cost_usd
    Run.objects.all().delete()
    assert per_run > 0
    cap = per_run * K
    Budget.objects.create(organization=org, agent=agent, period="day", amount_usd=cap, enforce=True)
    _, key = f.api_key(org, preset="runner")

    with gunicorn(workers=2, threads=32, extra_env=ledger_env) as base:
        def call(n: int) -> int:
            with httpx.Client(base_url=base, timeout=60) as client:
                return client.post("/v1/acme/agents/support:execute", headers={"X-API-KEY": key},
                                   json={"input": {"question": f"q{n}"}}).status_code

        with ThreadPoolExecutor(max_workers=50) as pool:
            codes = list(pool.map(call, range(EXECUTES)))

    admitted = codes.count(200)
    assert set(codes) <= {200, 429}, codes
    assert admitted <= K, f"{admitted} runs admitted against a cap worth {K}"
    assert admitted >= K // 2, f"only {admitted} admitted: the ledger refused far below the cap"
    spent = sum((r.cost_usd for r in Run.objects.filter(agent=agent)), Decimal("0"))
    assert spent <= cap
    assert Run.objects.filter(agent=agent, status="ok").count() == admitted
