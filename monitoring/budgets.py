"""Budgets: set, read with live usage, remove; threshold alerts; ledger housekeeping.

A budget is per agent, per UTC ``day`` or ``month``. ``enforce`` makes
``amountUsd`` a hard cap (the ledger refuses reservations past it); without it
the ledger only tracks spend for alerts. Each threshold (a fraction of the
amount) alerts once per period: the Alert row's dedupe key is
``budget:<agent>:<period start>:<threshold>``.
"""
from __future__ import annotations

import logging
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from fruxon.errors import NotFound
from orgs.actor import SYSTEM, Actor
from orgs.services import audit

from .alerts import raise_alert
from .ledger import BudgetState, from_units, ledger
from .ledger.spend import recorded_spend_units
from .models import Budget

logger = logging.getLogger(__name__)


def put_budget(*, actor: Actor, agent, period: str, amount_usd: Decimal, enforce: bool, alert_thresholds: list,
               alert_webhook: str, alert_emails: list) -> tuple[Budget, bool]:
    with transaction.atomic():
        budget, created = Budget.objects.update_or_create(agent=agent, defaults={
            "organization_id": agent.organization_id, "period": period, "amount_usd": amount_usd,
            "enforce": enforce, "alert_thresholds": sorted(set(alert_thresholds)), "alert_webhook": alert_webhook,
            "alert_emails": alert_emails, "updated_at": timezone.now()})
        audit.record(organization=agent.organization, actor=actor, action="budget.set", target_type="agent",
                     target_id=agent.slug, data={"period": period, "amountUsd": str(amount_usd), "enforce": enforce,
                                                 "alertThresholds": budget.alert_thresholds})
    return budget, created


def delete_budget(*, actor: Actor, agent) -> None:
    """Remove the budget (and so its enforcement); the spend history stays in runs and ledger periods."""
    with transaction.atomic():
        deleted, _ = Budget.objects.filter(agent=agent).delete()
        if not deleted:
            raise NotFound(f"Agent '{agent.slug}' has no budget.")
        audit.record(organization=agent.organization, actor=actor, action="budget.deleted", target_type="agent",
                     target_id=agent.slug)


def status(budget: Budget, now=None) -> dict:
    state = BudgetState.of(budget, now or timezone.now())
    spent, reserved = ledger().usage(state)
    amount = budget.amount_usd
    return {
        "period": budget.period, "amountUsd": format(amount, "f"), "enforce": budget.enforce,
        "alertThresholds": budget.alert_thresholds, "alertWebhook": budget.alert_webhook,
        "alertEmails": budget.alert_emails, "spentUsd": format(from_units(spent), "f"),
        "reservedUsd": format(from_units(reserved), "f"),
        "usagePercent": float(round(from_units(spent) / amount * 100, 4)) if amount else None,
        "periodStart": state.period_start, "resetsAt": state.period_end,
    }


def check_thresholds(*, budget_id: int, period_start_ts: int, spent_before: int, spent_after: int) -> list[float]:
    """Alert for every threshold crossed between two spend readings (once per period, deduplicated)."""
    budget = Budget.objects.select_related("agent", "organization").filter(pk=budget_id).first()
    if budget is None or not budget.amount_usd:
        return []
    cap = budget.amount_usd
    crossed = [t for t in budget.alert_thresholds
               if from_units(spent_before) < cap * Decimal(str(t)) <= from_units(spent_after)]
    for threshold in crossed:
        raise_alert(
            organization=budget.organization, kind="budget.threshold",
            subject=f"{budget.agent.slug} reached {threshold:.0%} of its ${cap}/{budget.period} budget",
            payload={"agent": budget.agent.slug, "threshold": threshold, "amountUsd": str(cap),
                     "spentUsd": str(from_units(spent_after)), "period": budget.period,
                     "enforce": budget.enforce},
            webhook=budget.alert_webhook, emails=budget.alert_emails,
            dedupe_key=f"budget:{budget.agent_id}:{period_start_ts}:{threshold}",
        )
    return crossed


def reconcile(now=None) -> list[dict]:
    """Compare each budget's ledger spend with recorded run costs; repair and report drift."""
    now = now or timezone.now()
    repaired = []
    for budget in Budget.objects.select_related("agent", "organization"):
        state = BudgetState.of(budget, now)
        recorded = recorded_spend_units(state)
        spent, _ = ledger().usage(state)
        if spent != recorded:
            previous = ledger().set_spent(state, recorded)
            drift = {"agent": budget.agent.slug, "ledgerUsd": str(from_units(previous)),
                     "recordedUsd": str(from_units(recorded))}
            audit.record(organization=budget.organization, actor=SYSTEM, action="budget.reconciled",
                         target_type="agent", target_id=budget.agent.slug, data=drift)
            logger.warning("budget ledger drift repaired: %s", drift)
            repaired.append(drift)
    return repaired


def release_stale(now=None) -> int:
    cutoff = (now or timezone.now()) - timedelta(seconds=settings.FRUXON_RESERVATION_TTL_SECONDS)
    return ledger().release_stale(cutoff)


def rollover(now=None) -> int:
    """Open the current period of every budget (seeded from recorded runs) as it starts."""
    now = now or timezone.now()
    count = 0
    for budget in Budget.objects.all():
        ledger().open_period(BudgetState.of(budget, now))
        count += 1
    return count
