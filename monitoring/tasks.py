"""Celery tasks for monitoring: alert delivery."""
from __future__ import annotations

from celery import shared_task


@shared_task(name="monitoring.deliver_alert", acks_late=True, reject_on_worker_lost=True,
             autoretry_for=(Exception,), retry_backoff=True, max_retries=5)
def deliver_alert(alert_id: int) -> None:
    from .alerts import deliver

    deliver(alert_id)
