"""The task outbox: no Celery task is lost when the broker is down at enqueue time.

``enqueue(task, *args)`` writes an ``OutboxMessage`` row in the caller's transaction
(so it exists exactly when the change that calls for it commits) and, after commit,
sends the task at once. The broker connection times out after about a second
(``CELERY_BROKER_CONNECTION_TIMEOUT``, one publish retry), so a request never hangs on
it; when the send fails the row stays, and ``sweep`` (beat, every 10 s) sends it.

Sent at most once by this machinery: a row is claimed before it is sent (the request
that wrote it holds a lease of ``FRUXON_OUTBOX_LEASE_SECONDS`` from the start; the
sweep takes rows with ``select_for_update(skip_locked=True)`` and leases them), and
marked sent as soon as the broker accepts it. Only a process that dies between the
broker's acceptance and that mark leaves a row to be sent again when its lease ends;
every task sent this way is idempotent (DESIGN rule 9), so that costs nothing twice.
The broker is called outside any transaction.
"""
from __future__ import annotations

import logging
from datetime import timedelta

from celery import current_app, shared_task
from django.conf import settings
from django.db import DatabaseError, transaction
from django.db.models import F
from django.utils import timezone

from fruxon.resilience import breaker

logger = logging.getLogger(__name__)
SWEEP_BATCH = 100
KEEP_SENT = timedelta(days=1)


def _lease() -> timedelta:
    return timedelta(seconds=settings.FRUXON_OUTBOX_LEASE_SECONDS)


def _broker():
    return breaker("Celery broker")


def enqueue(task, *args):
    """Record ``task(*args)`` in the current transaction; send it after commit (or let the sweep send it)."""
    from fruxon.models import OutboxMessage

    message = OutboxMessage.objects.create(task=task.name, args=list(args), available_at=timezone.now() + _lease())
    transaction.on_commit(lambda: _send(message.pk, task.name, list(args)), robust=True)
    return message


def _publish(name: str, args: list) -> None:
    task = current_app.tasks.get(name)
    if task is not None:
        task.apply_async(args=args)  # the task's own options (queue) apply
    else:
        current_app.send_task(name, args=args)


def _send(pk: int, name: str, args: list) -> bool:
    """Send one claimed message; mark it sent, or due again at once when the broker refused it."""
    from fruxon.models import OutboxMessage

    try:
        _publish(name, args)
    except Exception as exc:  # noqa: BLE001 - whatever the broker raised, the row keeps the task
        _broker().failure(exc)
        try:
            OutboxMessage.objects.filter(pk=pk, sent_at__isnull=True).update(
                available_at=timezone.now(), attempts=F("attempts") + 1, last_error=f"{type(exc).__name__}: {exc}"[:500])
        except DatabaseError:
            logger.warning("outbox message %s not sent and not released; its lease ends it", pk)
        return False
    _broker().success()
    try:
        OutboxMessage.objects.filter(pk=pk).update(sent_at=timezone.now(), attempts=F("attempts") + 1)
    except DatabaseError:
        logger.warning("outbox message %s sent but not marked; it may be sent again after its lease", pk)
    return True


@shared_task(name="fruxon.outbox.sweep", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def sweep(now=None) -> int:
    """Send every due message (oldest first); stop at the first the broker refuses. Returns how many were sent."""
    from fruxon.models import OutboxMessage

    now = now or timezone.now()
    sent = 0
    while True:
        with transaction.atomic():
            batch = list(OutboxMessage.objects.select_for_update(skip_locked=True)
                         .filter(sent_at__isnull=True, available_at__lte=now)
                         .order_by("available_at", "pk").values_list("pk", "task", "args")[:SWEEP_BATCH])
            if not batch:
                break
            OutboxMessage.objects.filter(pk__in=[pk for pk, _, _ in batch]).update(available_at=now + _lease())
        for pk, name, args in batch:
            if not _send(pk, name, args):
                return sent  # the broker is away: the rest stay due for the next tick
            sent += 1
        if len(batch) < SWEEP_BATCH:
            break
    OutboxMessage.objects.filter(sent_at__lt=now - KEEP_SENT).delete()
    return sent
