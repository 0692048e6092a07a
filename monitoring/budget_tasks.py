"""Celery tasks for budgets: thin, idempotent (DESIGN rule 9). Scheduled by beat."""
from __future__ import annotations

from celery import shared_task


@shared_task(name="monitoring.budgets.reconcile", acks_late=True, reject_on_worker_lost=True)
def reconcile_budgets() -> int:
    from .budgets import reconcile

    return len(reconcile())


@shared_task(name="monitoring.budgets.release_stale", acks_late=True, reject_on_worker_lost=True)
def release_stale_reservations() -> int:
    from .budgets import release_stale

    return release_stale()


@shared_task(name="monitoring.budgets.rollover", acks_late=True, reject_on_worker_lost=True)
def rollover_periods() -> int:
    from .budgets import rollover

    return rollover()


@shared_task(name="monitoring.budgets.check_thresholds", acks_late=True, reject_on_worker_lost=True)
def check_thresholds(budget_id: int, period_start_ts: int, spent_before: int, spent_after: int) -> list[float]:
    from .budgets import check_thresholds as check

    return check(budget_id=budget_id, period_start_ts=period_start_ts, spent_before=spent_before,
                 spent_after=spent_after)
