"""Spend never disappears: reconciliation, retention and a Redis restart cannot lower a period's spent.

Recorded runs lag and lose spend: a run's model calls settle on the ledger while
its Run row is written at its end, and retention deletes runs of a period that
is still open. A ledger set from "the sum of recorded runs" would then admit
runs past the cap. These tests drive the real ledgers (PostgreSQL and Redis),
the real execute path and the real retention task.
"""
from __future__ import annotations

import threading
import time
from datetime import timedelta
from decimal import Decimal

import pytest
import redis
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from monitoring import budgets
from monitoring.ledger import BudgetState, ledger, to_units
from monitoring.models import Budget, BudgetPeriod, Run
from monitoring.retention import purge_expired
from monitoring.services import delete_run
from orgs.actor import Actor

from . import factories as f
from .builders import agent_with_revision, run_once
from .test_budgets import LEDGERS, REDIS_URL, _execute, price, priced_agent, two_step_spec


@pytest.fixture(autouse=True)
def _clean_redis():
    redis.Redis.from_url(REDIS_URL).flushdb()


@pytest.fixture
def runner(org, api):
    _, key = f.api_key(org, preset="runner")
    return api.as_key(key)


def _per_run(org) -> Decimal:
    """What one run of ``priced_agent`` costs, measured on an agent of its own (no budget)."""
    return run_once(priced_agent(org, slug="probe"), "q").cost_usd


def _state(agent) -> BudgetState:
    return BudgetState.of(Budget.objects.get(agent=agent), timezone.now())


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("ledger_settings", LEDGERS)
def test_reconcile_keeps_what_a_run_in_flight_has_settled(api, ledger_settings):
    """A run's first model call is settled, its Run row not yet written: reconciling then lowers nothing."""
    org = f.OrganizationFactory(slug="acme")
    _, key = f.api_key(org, preset="runner")
    with override_settings(**ledger_settings):
        agent, _ = agent_with_revision(org, "support", two_step_spec(first_latency_ms=0, second_latency_ms=2500))
        price(org, agent)
        Budget.objects.create(organization=org, agent=agent, period="month", amount_usd=Decimal("100"), enforce=True)
        state = _state(agent)
        answers = []
        def call():
            try:
                answers.append(_execute(api.as_key(key)))
            finally:
                connection.close()

        worker = threading.Thread(target=call, daemon=True)
        worker.start()
        deadline = time.monotonic() + 10
        while ledger().usage(state)[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        settled = ledger().usage(state)[0]
        assert settled > 0, "the first model call never settled"
        assert not Run.objects.filter(agent=agent).exists(), "the run ended before reconciliation could run"

        assert budgets.reconcile() == []
        assert ledger().usage(state)[0] == settled  # not lowered to the (empty) recorded runs

        worker.join(timeout=30)
        assert answers and answers[0].status_code == 200, answers
        run = Run.objects.get(agent=agent)
        assert ledger().usage(state)[0] == to_units(run.cost_usd, round_up=False) > settled
        assert budgets.reconcile() == [] and ledger().usage(state)[0] == to_units(run.cost_usd, round_up=False)


@pytest.mark.parametrize("ledger_settings", LEDGERS)
def test_retention_of_this_months_runs_does_not_lower_a_monthly_budget(org, runner, ledger_settings):
    """Retention (1 day) deletes runs of the month still open; the month's spend and its cap stay."""
    org.retention_days = 1
    org.save(update_fields=["retention_days"])
    with override_settings(**ledger_settings):
        per_run = _per_run(org)
        agent = priced_agent(org)
        cap = per_run * 2  # a run reserves its worst case, which here is what it costs
        Budget.objects.create(organization=org, agent=agent, period="month", amount_usd=cap, enforce=True)
        assert [_execute(runner).status_code for _ in range(3)] == [200, 200, 429]
        state = _state(agent)
        spent = ledger().usage(state)[0]
        assert spent == to_units(per_run * 2, round_up=False)

        assert purge_expired(now=timezone.now() + timedelta(days=2)) >= 3  # every run of this agent, this month
        assert not Run.objects.filter(agent=agent).exists()

        budgets.reconcile()
        assert ledger().usage(state)[0] == spent
        assert budgets.status(Budget.objects.get(agent=agent))["spentUsd"] == str(per_run * 2)
        row = BudgetPeriod.objects.get(agent=agent)
        assert row.deleted_units == spent  # retention counted what the runs it deleted had cost
        refused = _execute(runner)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "budget_exceeded"
        assert ledger().usage(state) == (spent, 0)


def test_a_redis_restart_reseeds_at_least_the_true_spend(org, runner):
    """Runs recorded and then deleted by retention, plus spend settled by a run that was never recorded
    (its process was killed after the model call), survive FLUSHDB: the cap still holds."""
    org.retention_days = 1
    org.save(update_fields=["retention_days"])
    with override_settings(FRUXON_LEDGER="redis", FRUXON_LEDGER_REDIS_URL=REDIS_URL):
        per_run = _per_run(org)
        agent = priced_agent(org)
        cap = per_run * 3
        Budget.objects.create(organization=org, agent=agent, period="month", amount_usd=cap, enforce=True)
        assert [_execute(runner).status_code for _ in range(2)] == [200, 200]
        state = _state(agent)
        unrecorded = to_units(per_run, round_up=False)
        killed = ledger().reserve(state, unrecorded)  # a run whose process died after its model call settled
        ledger().settle(killed, unrecorded)
        true_spend = to_units(per_run * 3, round_up=False)
        assert ledger().usage(state)[0] == true_spend

        budgets.reconcile()  # the beat task: checkpoints the Redis total into the database
        purge_expired(now=timezone.now() + timedelta(days=2))
        assert not Run.objects.filter(agent=agent).exists()
        redis.Redis.from_url(REDIS_URL).flushdb()  # Redis restarted without persistence

        assert ledger().usage(state)[0] >= true_spend
        refused = _execute(runner)  # reseeds the period: nothing is left under the cap
        assert refused.status_code == 429, refused.content
        assert ledger().usage(state) == (true_spend, 0)


def test_a_redis_restart_forgets_nothing_recorded_even_without_a_checkpoint(org, runner):
    """No reconciliation between the runs and the flush: the runs' own recorded totals reseed Redis."""
    org.retention_days = 1
    org.save(update_fields=["retention_days"])
    with override_settings(FRUXON_LEDGER="redis", FRUXON_LEDGER_REDIS_URL=REDIS_URL):
        per_run = _per_run(org)
        agent = priced_agent(org)
        Budget.objects.create(organization=org, agent=agent, period="month", amount_usd=per_run * 2, enforce=True)
        assert [_execute(runner).status_code for _ in range(2)] == [200, 200]
        state = _state(agent)
        spent = ledger().usage(state)[0]
        purge_expired(now=timezone.now() + timedelta(days=2))
        redis.Redis.from_url(REDIS_URL).flushdb()
        assert _execute(runner).status_code == 429
        assert ledger().usage(state) == (spent, 0)


@pytest.mark.parametrize("ledger_settings", LEDGERS)
def test_a_budget_set_again_counts_the_runs_made_without_it(org, runner, ledger_settings, owner_client):
    """DELETE removes enforcement, not the history: runs in between count when the budget returns."""
    with override_settings(**ledger_settings):
        per_run = _per_run(org)
        agent = priced_agent(org)
        body = {"period": "month", "amountUsd": str((per_run * 3).quantize(Decimal("0.0001"))), "enforce": True}
        assert owner_client.put("/v1/acme/agents/support/budget", body, format="json").status_code == 201
        assert _execute(runner).status_code == 200
        assert owner_client.delete("/v1/acme/agents/support/budget").status_code == 204
        assert [_execute(runner).status_code for _ in range(2)] == [200, 200]  # no budget: no cap
        assert owner_client.put("/v1/acme/agents/support/budget", body, format="json").status_code == 201
        state = _state(agent)
        assert ledger().usage(state)[0] == to_units(per_run * 3, round_up=False)
        assert _execute(runner).status_code == 429


@pytest.mark.parametrize("ledger_settings", LEDGERS)
def test_deleting_a_run_does_not_refund_what_it_cost(org, runner, owner, ledger_settings):
    """An audited run deletion removes the evidence, not the spend, even across a Redis restart."""
    with override_settings(**ledger_settings):
        per_run = _per_run(org)
        agent = priced_agent(org)
        Budget.objects.create(organization=org, agent=agent, period="month", amount_usd=per_run * 2, enforce=True)
        assert [_execute(runner).status_code for _ in range(2)] == [200, 200]
        state = _state(agent)
        spent = ledger().usage(state)[0]
        delete_run(actor=Actor(user=owner), run=Run.objects.filter(agent=agent).first())
        redis.Redis.from_url(REDIS_URL).flushdb()  # a no-op for the database ledger
        budgets.reconcile()
        assert ledger().usage(state)[0] == spent
        assert _execute(runner).status_code == 429
