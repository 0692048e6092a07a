"""Celery tasks for monitoring: alert delivery, retention."""
from __future__ import annotations

from celery import shared_task

from .budget_tasks import check_thresholds, reconcile_budgets, release_stale_reservations, rollover_periods  # noqa: F401


@shared_task(name="monitoring.deliver_alert", acks_late=True, reject_on_worker_lost=True,
             autoretry_for=(Exception,), retry_backoff=True, max_retries=5)
def deliver_alert(alert_id: int) -> None:
    from .alerts import deliver

    deliver(alert_id)


@shared_task(name="monitoring.purge_expired_runs", acks_late=True, reject_on_worker_lost=True)
def purge_expired_runs() -> int:
    """Hourly (beat): delete runs past their org's retention, never pinned ones. Idempotent."""
    from .retention import purge_expired

    return purge_expired()
