"""Celery tasks for monitoring: alert delivery, retention."""
from __future__ import annotations

from celery import shared_task

from .budget_tasks import check_thresholds, reconcile_budgets, release_stale_reservations, rollover_periods  # noqa: F401


@shared_task(name="monitoring.deliver_alert", acks_late=True, reject_on_worker_lost=True)
def deliver_alert(alert_id: int) -> int:
    """After an alert is raised or redelivered: attempt its due deliveries now.

    No Celery retry: a failed attempt is rescheduled in its AlertDelivery row and the beat tick
    (``deliver_due_alerts``) retries it, so retries survive worker restarts and broker outages.
    """
    from .alerts import deliver

    return deliver(alert_id)


@shared_task(name="monitoring.deliver_due_alerts", acks_late=True, reject_on_worker_lost=True)
def deliver_due_alerts() -> int:
    """Beat, every 15 s: claim due alert deliveries (skip_locked) and attempt them. Idempotent."""
    from .alerts import deliver_due

    return deliver_due()


@shared_task(name="monitoring.purge_expired_runs", acks_late=True, reject_on_worker_lost=True)
def purge_expired_runs() -> int:
    """Hourly (beat): delete runs past their org's retention, never pinned ones. Idempotent."""
    from .retention import purge_expired

    return purge_expired()
