"""Celery tasks for evaluations: thin, id-taking, idempotent (DESIGN rule 9).

``run_evaluation`` fans the frozen case list out in chunks to the
``evaluations`` queue; each ``evaluate_chunk`` fills in missing results only,
so a chunk redelivered after a worker died resumes without duplicates. An
empty evaluation completes at once. ``resume_stalled`` (beat) re-sends the
missing chunks of evaluations that stopped making progress.
"""
from __future__ import annotations

from datetime import timedelta

from celery import shared_task
from django.db.models import Max
from django.utils import timezone

STALL_AFTER = timedelta(minutes=5)


@shared_task(name="evaluations.run_evaluation", acks_late=True, reject_on_worker_lost=True, queue="evaluations",
             ignore_result=True)
def run_evaluation(evaluation_id: str) -> int:
    from .models import EvaluationRun
    from .services import runs

    evaluation = EvaluationRun.objects.filter(pk=evaluation_id).first()
    if evaluation is None or not runs.mark_running(evaluation_id):
        return 0
    parts = runs.chunks(evaluation.case_ids)
    if not parts:
        runs.maybe_finalize(evaluation_id)
    for part in parts:
        evaluate_chunk.delay(evaluation_id, part)
    return len(parts)


@shared_task(name="evaluations.evaluate_chunk", acks_late=True, reject_on_worker_lost=True, queue="evaluations",
             ignore_result=True)
def evaluate_chunk(evaluation_id: str, case_ids: list[int]) -> int:
    from .services import runs

    return runs.evaluate_chunk(evaluation_id, case_ids)


@shared_task(name="evaluations.resume_stalled", acks_late=True, reject_on_worker_lost=True)
def resume_stalled() -> list[str]:
    """Re-send the missing cases of running evaluations with no new result for STALL_AFTER."""
    from .models import EvaluationRun
    from .services import runs

    resumed = []
    cutoff = timezone.now() - STALL_AFTER
    for evaluation in EvaluationRun.objects.filter(status="running", started_at__lt=cutoff):
        last = evaluation.results.aggregate(last=Max("created_at"))["last"]
        if last and last > cutoff:
            continue
        done = set(evaluation.results.values_list("case_id", flat=True))
        missing = [c for c in evaluation.case_ids if c not in done]
        for part in runs.chunks(missing):
            evaluate_chunk.delay(evaluation.id, part)
        if not missing:
            runs.maybe_finalize(evaluation.id)
        resumed.append(evaluation.id)
    return resumed


@shared_task(name="evaluations.tick_schedules", acks_late=True, reject_on_worker_lost=True)
def tick_schedules() -> list[str]:
    from .services import scheduled

    return scheduled.start_due()
