"""Evaluation runs: start, evaluate cases idempotently, finalize, cancel.

An evaluation freezes its dataset's metrics, threshold and case ids at start.
Cases are evaluated in chunks by Celery tasks; each case result is written at
most once (unique (evaluation, case)), so a redelivered chunk (a killed worker,
``acks_late``) only fills in what is missing. Progress is the count of results.
"""
from __future__ import annotations

import logging
from decimal import Decimal
from statistics import fmean

from django.db import IntegrityError, transaction
from django.utils import timezone

from agents import engine, execution
from agents.models import Agent, Revision
from agents.runtime import DjangoRuntime
from fruxon.errors import Conflict, FruxonError, NotFound
from orgs.actor import Actor
from orgs.services import audit

from .. import metrics as metric_lib
from ..models import Case, CaseResult, Dataset, EvaluationRun

logger = logging.getLogger(__name__)
CHUNK_SIZE = 10


def start(*, actor: Actor, agent: Agent, revision_id: str, dataset: Dataset, trigger: str = "api") -> EvaluationRun:
    revision = Revision.objects.filter(agent=agent, pk=revision_id).first()
    if revision is None:
        raise NotFound(f"Revision '{revision_id}' not found for agent '{agent.slug}'.")
    if dataset.organization_id != agent.organization_id:
        raise NotFound(f"Dataset '{dataset.slug}' not found.")
    case_ids = list(Case.objects.filter(dataset=dataset).order_by("id").values_list("id", flat=True))
    with transaction.atomic():
        evaluation = EvaluationRun.objects.create(
            organization_id=agent.organization_id, agent=agent, revision=revision, dataset=dataset, trigger=trigger,
            metrics=dataset.metrics, pass_threshold=dataset.pass_threshold, case_ids=case_ids, total=len(case_ids),
            created_by=actor.user_or_none, created_by_label=actor.label,
        )
        audit.record(organization=agent.organization, actor=actor, action="evaluation.started", target_type="evaluation",
                     target_id=evaluation.id, data={"agent": agent.slug, "revisionId": revision.id,
                                                    "dataset": dataset.slug, "cases": len(case_ids)})
        from . import dispatch

        dispatch.enqueue(evaluation.id)
    return evaluation


def cancel(*, actor: Actor, evaluation: EvaluationRun) -> EvaluationRun:
    with transaction.atomic():
        locked = EvaluationRun.objects.select_for_update().get(pk=evaluation.pk)
        if locked.status not in ("queued", "running"):
            raise Conflict(f"Evaluation {locked.id} is {locked.status}; only queued or running ones can be cancelled.")
        locked.status, locked.finished_at = "cancelled", timezone.now()
        locked.save(update_fields=["status", "finished_at"])
        audit.record(organization=locked.organization, actor=actor, action="evaluation.cancelled",
                     target_type="evaluation", target_id=locked.id)
    return locked


def chunks(case_ids: list[int], size: int = CHUNK_SIZE) -> list[list[int]]:
    return [case_ids[i:i + size] for i in range(0, len(case_ids), size)]


def mark_running(evaluation_id: str) -> bool:
    """queued -> running; False when the evaluation is gone or no longer runnable."""
    updated = EvaluationRun.objects.filter(pk=evaluation_id, status="queued").update(status="running",
                                                                                      started_at=timezone.now())
    return bool(updated) or EvaluationRun.objects.filter(pk=evaluation_id, status="running").exists()


def _judge(evaluation: EvaluationRun):
    runtime = DjangoRuntime(organization_id=evaluation.organization_id, agent_id=evaluation.agent_id)

    def judge(config: dict, observation, expected) -> tuple[float, str]:
        # The prompt travels as an input value, so text in it is never parsed as a template.
        spec = {"inputs": {"prompt": {"type": "string", "required": True}},
                "steps": [{"name": "judge", "model": config["model"], "prompt": "{{input.prompt}}"}]}
        prompt = metric_lib.local_judge_prompt(config, observation, expected)
        result = engine.run(spec, {"prompt": prompt}, context=engine.RunContext(agent=evaluation.agent.slug),
                            runtime=runtime)
        if not result.ok:
            return 0.0, f"the judge failed: {result.error['message'] if result.error else result.status}"
        return metric_lib.parse_judge_reply(result.output if isinstance(result.output, str) else str(result.output))

    return judge


def evaluate_case(evaluation: EvaluationRun, case: Case) -> CaseResult | None:
    """Run one case and store its result; returns None if another worker stored it first."""
    try:
        outcome = execution.execute(agent=evaluation.agent, input=case.input, revision_id=evaluation.revision_id,
                                    source="evaluation")
        run = outcome.run
        observation = metric_lib.Observation(output=run.output, status=run.status, cost_usd=run.cost_usd,
                                             latency_ms=run.latency_ms, input=case.input)
    except FruxonError as exc:  # e.g. the case input no longer fits the revision's inputs
        run = None
        observation = metric_lib.Observation(output=None, status="error", cost_usd=Decimal("0"), latency_ms=0,
                                             input=case.input)
        logger.info("evaluation %s case %s could not run: %s", evaluation.id, case.pk, exc.message)
    scores = metric_lib.evaluate_all(evaluation.metrics, observation, case.expected, judge=_judge(evaluation))
    score = fmean(s.score for s in scores) if scores else 0.0
    passed = all(s.passed for s in scores) and score >= evaluation.pass_threshold
    try:
        with transaction.atomic():
            return CaseResult.objects.create(
                organization_id=evaluation.organization_id, evaluation=evaluation, case=case, run=run,
                output=observation.output, run_status=observation.status,
                scores=[{"metric": s.metric, "score": s.score, "passed": s.passed, "reason": s.reason} for s in scores],
                score=score, passed=passed, critical=case.critical, cost_usd=observation.cost_usd,
                latency_ms=observation.latency_ms,
            )
    except IntegrityError:
        return None


def evaluate_chunk(evaluation_id: str, case_ids: list[int]) -> int:
    """Evaluate the cases of one chunk that have no result yet; returns how many this call wrote."""
    evaluation = EvaluationRun.objects.select_related("agent").filter(pk=evaluation_id).first()
    if evaluation is None or evaluation.status not in ("queued", "running"):
        return 0
    mark_running(evaluation_id)
    done = set(CaseResult.objects.filter(evaluation_id=evaluation_id, case_id__in=case_ids).values_list("case_id", flat=True))
    written = 0
    for case in Case.objects.filter(pk__in=[c for c in case_ids if c not in done]).order_by("id"):
        if EvaluationRun.objects.filter(pk=evaluation_id, status="cancelled").exists():
            break
        if evaluate_case(evaluation, case) is not None:
            written += 1
    maybe_finalize(evaluation_id)
    return written


def aggregate(evaluation: EvaluationRun) -> dict:
    results = list(evaluation.results.all())
    per_metric: dict[str, list[dict]] = {}
    for result in results:
        for score in result.scores:
            per_metric.setdefault(score["metric"], []).append(score)
    metrics = {
        name: {"meanScore": round(fmean(s["score"] for s in scores), 6),
               "passRate": round(sum(1 for s in scores if s["passed"]) / len(scores), 6), "count": len(scores)}
        for name, scores in per_metric.items()
    }
    return {
        "metrics": metrics,
        "overallScore": round(fmean(r.score for r in results), 6) if results else None,
        "passRate": round(sum(1 for r in results if r.passed) / len(results), 6) if results else None,
        "criticalFailures": sum(1 for r in results if r.critical and not r.passed),
        "costUsd": sum((r.cost_usd for r in results), Decimal("0")),
    }


def maybe_finalize(evaluation_id: str) -> bool:
    """Complete the evaluation once every case has a result (idempotent, row-locked)."""
    with transaction.atomic():
        evaluation = EvaluationRun.objects.select_for_update().filter(pk=evaluation_id).first()
        if evaluation is None or evaluation.status not in ("queued", "running"):
            return False
        if evaluation.results.count() < evaluation.total:
            return False
        summary = aggregate(evaluation)
        evaluation.aggregates = {"metrics": summary["metrics"], "criticalFailures": summary["criticalFailures"]}
        evaluation.overall_score, evaluation.pass_rate = summary["overallScore"], summary["passRate"]
        evaluation.cost_usd = summary["costUsd"]
        evaluation.status, evaluation.finished_at = "completed", timezone.now()
        evaluation.started_at = evaluation.started_at or evaluation.finished_at
        evaluation.save()
        from . import scheduled

        transaction.on_commit(lambda: scheduled.after_completion(evaluation_id))
    return True


def progress(evaluation: EvaluationRun) -> dict:
    done = evaluation.results.count()
    return {"completed": done, "total": evaluation.total,
            "fraction": round(done / evaluation.total, 4) if evaluation.total else 1.0}
