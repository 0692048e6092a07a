"""Sending evaluation work to Celery, after the starting transaction commits.

With a broker, through the outbox (``fruxon.outbox``): the message is a row of the
starting transaction, so a broker that is down then delays the evaluation by one
beat tick instead of losing it (``resume_stalled`` remains the backstop).
"""
from __future__ import annotations

from django.conf import settings
from django.db import transaction


def enqueue(evaluation_id: str) -> None:
    from ..tasks import run_evaluation

    if settings.CELERY_TASK_ALWAYS_EAGER:
        transaction.on_commit(lambda: run_evaluation.delay(evaluation_id))
        return
    from fruxon import outbox

    outbox.enqueue(run_evaluation, evaluation_id)
