"""Sending evaluation work to Celery, after the starting transaction commits."""
from __future__ import annotations

from django.db import transaction


def enqueue(evaluation_id: str) -> None:
    from ..tasks import run_evaluation

    transaction.on_commit(lambda: run_evaluation.delay(evaluation_id))
