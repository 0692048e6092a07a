"""Budgets: set, read with live usage, remove; threshold alerts; ledger housekeeping.

A budget is per agent, per UTC ``day`` or ``month``. ``enforce`` makes
``amountUsd`` a hard cap (the ledger refuses reservations past it); without it
the ledger only tracks spend for alerts. Each threshold (a fraction of the
amount) alerts once per period: the Alert row's dedupe key is
``budget:<agent>:<period start>:<threshold>``.

Spent never goes down by itself. ``reconcile`` only RAISES a ledger to the
database's durable floor (``monitoring.ledger.spend``): a ledger ahead of the
recorded runs is normal (runs in flight have settled calls but no Run row yet;
retention deletes runs of a period still open) and is left alone. The one way
down is ``correct_spent``: explicit, with a reason, audited.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from fruxon import egress
from fruxon.errors import FruxonError, InvalidRequest, NotFound
from orgs.actor import SYSTEM, Actor
from orgs.services import audit

from .alerts import raise_alert
from .ledger import BudgetState, LedgerUnavailable, from_units, ledger, to_units
from .ledger import spend
from .models import Budget, BudgetPeriod

logger = logging.getLogger(__name__)


def put_budget(*, actor: Actor, agent, period: str, amount_usd: Decimal, enforce: bool, alert_thresholds: list,
               alert_webhook: str, alert_emails: list) -> tuple[Budget, bool]:
    egress.check_url(alert_webhook, "alertWebhook")  # 400 egress_denied: see fruxon.egress
    with transaction.atomic():
        budget, created = Budget.objects.update_or_create(agent=agent, defaults={
            "organization_id": agent.organization_id, "period": period, "amount_usd": amount_usd,
            "enforce": enforce, "alert_thresholds": sorted(set(alert_thresholds)), "alert_webhook": alert_webhook,
            "alert_emails": alert_emails, "updated_at": timezone.now()})
        audit.record(organization=agent.organization, actor=actor, action="budget.set", target_type="agent",
                     target_id=agent.slug, data={"period": period, "amountUsd": str(amount_usd), "enforce": enforce,
                                                 "alertThresholds": budget.alert_thresholds})
    sync_ledger(budget)
    return budget, created


def sync_ledger(budget: Budget, now=None) -> int | None:
    """Open the budget's current period and raise its ledger to the durable floor; returns spent.

    Run when a budget is set: a budget deleted and set again within one period
    finds its ledger as it was at the deletion, while the runs made in between
    (recorded, so part of the floor) reserved nothing. It also creates the
    period row before retention could delete any of the period's runs. Best
    effort (an unreachable ledger fails closed on the next reservation anyway;
    reconciliation repeats this).
    """
    state = BudgetState.of(budget, now or timezone.now())
    try:
        floor = spend.durable_spent_units(state)
        ledger().open_period(state)
        return max(ledger().raise_spent(state, floor), floor)
    except LedgerUnavailable:
        logger.warning("budget ledger unavailable while setting the budget of agent %s", budget.agent_id)
        return None


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
    try:
        spent, reserved = ledger().usage(state)
    except LedgerUnavailable as exc:
        raise FruxonError(str(exc), code="ledger_unavailable", status=503) from None
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
                     "periodStart": datetime.fromtimestamp(period_start_ts, dt_timezone.utc).isoformat(),
                     "enforce": budget.enforce},
            webhook=budget.alert_webhook, emails=budget.alert_emails,
            dedupe_key=f"budget:{budget.agent_id}:{period_start_ts}:{threshold}",
        )
    return crossed


def reconcile(now=None) -> list[dict]:
    """Raise each budget's ledger to the durable floor of its current period; report what was repaired.

    The floor (``spend.durable_spent_units``) is the greater of the period
    row's ``spent_units`` (the database ledger's settled spend, or the Redis
    checkpoint) and the cost of the runs still recorded plus the cost of the
    period's runs deleted since (``deleted_units``, counted by the deleting
    transaction, so retention never lowers the floor). A ledger BELOW it
    lost spend (Redis restarted, a settle failed, a budget was re-created):
    it is raised, audited (``budget.reconciled``) and reported, and any alert
    threshold crossed by that is sent. A ledger ABOVE it is left alone: the
    difference is spend no Run row shows (yet), and lowering it would let a
    run pass the cap. Then the ledger's reading is checkpointed into the
    period row (``spend.checkpoint``), the Redis ledger's durable high-water
    mark. An unreachable ledger skips that budget (logged); the next run repeats.
    """
    now = now or timezone.now()
    repaired = []
    for budget in Budget.objects.select_related("agent", "organization"):
        state = BudgetState.of(budget, now)
        try:
            floor = spend.durable_spent_units(state)
            spent, _ = ledger().usage(state)
            if spent < floor:
                previous = ledger().raise_spent(state, floor)
                if previous < floor:
                    drift = {"agent": budget.agent.slug, "ledgerUsd": str(from_units(previous)),
                             "floorUsd": str(from_units(floor)), "raisedByUsd": str(from_units(floor - previous))}
                    audit.record(organization=budget.organization, actor=SYSTEM, action="budget.reconciled",
                                 target_type="agent", target_id=budget.agent.slug, data=drift)
                    logger.warning("budget ledger drift repaired (raised to the durable floor): %s", drift)
                    repaired.append(drift)
                    check_thresholds(budget_id=budget.pk, period_start_ts=int(state.period_start.timestamp()),
                                     spent_before=previous, spent_after=floor)
                spent = max(previous, floor)
            spend.checkpoint(state, spent)
        except LedgerUnavailable:
            logger.warning("budget ledger unavailable: agent %s not reconciled", budget.agent_id)
    return repaired


def correct_spent(*, actor: Actor, agent, spent_usd: Decimal, reason: str, now=None) -> dict:
    """Set the current period's spent to ``spent_usd``, down as well as up: the explicit, audited correction.

    For an operator who knows better than the ledger (a price was wrong and
    has been fixed, a provider refunded). It sets the ledger and the period
    row (``spent_units``, and ``deleted_units`` to what the remaining runs do
    not show), so reconciliation keeps the corrected value. It cannot go below
    the cost of the runs still recorded in the period (their ``costUsd`` says
    otherwise).
    """
    if not reason.strip():
        raise InvalidRequest("A correction needs a reason.", details={"fields": {"reason": ["Required."]}})
    budget = Budget.objects.filter(agent=agent).first()
    if budget is None:
        raise NotFound(f"Agent '{agent.slug}' has no budget.")
    state = BudgetState.of(budget, now or timezone.now())
    units = to_units(spent_usd, round_up=False)
    recorded = spend.recorded_spend_units(state)
    if units < recorded:
        raise InvalidRequest(f"The runs recorded in this period cost ${from_units(recorded)}; spent cannot go below it.",
                             details={"fields": {"spentUsd": [f"At least {from_units(recorded)}."]}})
    with transaction.atomic():
        row = spend.period_row(state)
        previous = ledger().set_spent(state, units)
        BudgetPeriod.objects.filter(pk=row.pk).update(spent_units=units, deleted_units=units - recorded)
        data = {"periodStart": state.period_start.isoformat(), "previousUsd": str(from_units(previous)),
                "spentUsd": str(from_units(units)), "reason": reason}
        audit.record(organization=agent.organization, actor=actor, action="budget.corrected", target_type="agent",
                     target_id=agent.slug, data=data)
    return data


def release_stale(now=None) -> int:
    cutoff = (now or timezone.now()) - timedelta(seconds=settings.FRUXON_RESERVATION_TTL_SECONDS)
    return ledger().release_stale(cutoff)


def rollover(now=None) -> int:
    """Open the current period of every budget as it starts: its durable row and its ledger totals.

    Opening early means the period row exists before retention can delete any
    of the period's runs, so their deletion is counted in ``deleted_units``.
    """
    now = now or timezone.now()
    count = 0
    for budget in Budget.objects.all():
        try:
            ledger().open_period(BudgetState.of(budget, now))
        except LedgerUnavailable:
            logger.warning("budget ledger unavailable: period of agent %s not opened", budget.agent_id)
            continue
        count += 1
    return count
