"""Celery tasks for evaluations: thin, id-taking, idempotent (DESIGN rule 9).

``run_evaluation`` fans the frozen case list out in chunks to the
``evaluations`` queue, once: only the delivery that moves the evaluation from
queued to running sends them. Each ``evaluate_chunk`` fills in missing results
only, and claims each case while it runs it, so a chunk redelivered after a
worker died resumes without duplicates, and two deliveries of one chunk at the
same time never run a case twice.

``resume_stalled`` (beat, every minute) looks for evaluations with no new
result for ``STALL_AFTER``, none of whose missing cases a worker holds (slow
cases are not stalled), while the ``evaluations`` queue is empty (work waiting
behind a backlog is not stalled either): a queued one gets ``run_evaluation``
again (its first send was lost, e.g. the broker was down at commit), a running
one gets its missing cases again (its chunks failed, or were lost). It resumes
an evaluation at most once per ``STALL_AFTER``; after ``MAX_RESUMES`` resumes
in a row without a new result the evaluation fails, with the reason, instead of
resuming forever.
"""
from __future__ import annotations

from datetime import timedelta

import logging

from celery import shared_task
from django.db.models import Max, Q
from django.utils import timezone

logger = logging.getLogger(__name__)
STALL_AFTER = timedelta(minutes=5)
MAX_RESUMES = 6  # about half an hour without a single new result


@shared_task(name="evaluations.run_evaluation", acks_late=True, reject_on_worker_lost=True, queue="evaluations",
             ignore_result=True)
def run_evaluation(evaluation_id: str) -> int:
    from .models import EvaluationRun
    from .services import runs

    evaluation = EvaluationRun.objects.filter(pk=evaluation_id).first()
    if evaluation is None or not runs.begin(evaluation_id):
        return 0  # gone, final, or already fanned out by an earlier delivery (resume_stalled covers a lost one)
    parts = runs.chunks(evaluation.case_ids)
    if not parts:
        runs.maybe_finalize(evaluation_id)
    for part in parts:
        evaluate_chunk.delay(evaluation_id, part)
    return len(parts)


@shared_task(name="evaluations.evaluate_chunk", acks_late=True, reject_on_worker_lost=True, queue="evaluations",
             ignore_result=True, bind=True)
def evaluate_chunk(self, evaluation_id: str, case_ids: list[int]) -> int:
    from .services import runs

    # The task id names this message's case claims: delivered again, it takes them back at once.
    return runs.evaluate_chunk(evaluation_id, case_ids, owner=self.request.id or "")


def queue_backlog(queue: str = "evaluations") -> int:
    """Messages waiting in ``queue`` on the broker (0 with eager Celery, or when the broker cannot say)."""
    from fruxon.celery import app

    if app.conf.task_always_eager:
        return 0
    try:
        with app.connection_for_read() as connection:
            return connection.default_channel.queue_declare(queue=queue, passive=True).message_count
    except Exception:  # noqa: BLE001 - a broker that cannot say: resume as if the queue were empty
        logger.warning("could not read the length of queue %s", queue, exc_info=True)
        return 0


@shared_task(name="evaluations.resume_stalled", acks_late=True, reject_on_worker_lost=True)
def resume_stalled(now=None) -> list[str]:
    """Send out again the work of unfinished evaluations with no new result for STALL_AFTER (see the module doc)."""
    from .models import EvaluationRun
    from .services import runs

    now = now or timezone.now()
    cutoff = now - STALL_AFTER
    resumed = []
    candidates = (EvaluationRun.objects
                  .filter(Q(status="running", started_at__lt=cutoff) | Q(status="queued", created_at__lt=cutoff))
                  .filter(Q(resumed_at__isnull=True) | Q(resumed_at__lt=cutoff)))
    backlog = None
    for evaluation in candidates:
        last = evaluation.results.aggregate(last=Max("created_at"))["last"]
        if last and last > cutoff:
            continue
        done = set(evaluation.results.values_list("case_id", flat=True))
        missing = [c for c in evaluation.case_ids if c not in done]
        if runs.held_claims(evaluation.id, missing):
            continue  # a worker is on some of its cases (slow ones): not stalled
        backlog = queue_backlog() if backlog is None else backlog
        if backlog:
            continue  # its work may be waiting in the queue: sending more would only lengthen it
        progressed = last is not None and evaluation.resumed_at is not None and last > evaluation.resumed_at
        resumes = 1 if progressed else evaluation.resumes + 1
        # Compare-and-set: of two beat ticks (or two beat processes) only one resumes it.
        if not EvaluationRun.objects.filter(pk=evaluation.pk, status=evaluation.status,
                                            resumed_at=evaluation.resumed_at).update(resumed_at=now, resumes=resumes):
            continue
        if resumes > MAX_RESUMES:
            runs.fail(evaluation.id, f"No progress after {MAX_RESUMES} resumes in a row (each after "
                      f"{int(STALL_AFTER.total_seconds() // 60)} minutes with no new result, no case in a worker's "
                      "hands and an empty queue): the workers could not evaluate the remaining cases. Their runs "
                      "and errors are under /runs?source=evaluation.")
            continue
        if evaluation.status == "queued":
            run_evaluation.delay(evaluation.id)
        else:
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
