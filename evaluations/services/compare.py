"""Comparing an evaluation with a baseline, and the deploy gate built on it.

``regressions`` are cases that passed on the baseline and fail now (matched by
case id), critical ones first. The verdict is ``pass`` when the overall score
is at least the baseline's minus the tolerance and no critical case regressed,
``fail`` otherwise, and ``pending`` while either side is not completed.
"""
from __future__ import annotations

from agents.models import Agent
from orgs.actor import SYSTEM

from ..models import Dataset, EvaluationRun


def latest_completed(*, revision_id: str, dataset: Dataset) -> EvaluationRun | None:
    return (EvaluationRun.objects.filter(revision_id=revision_id, dataset=dataset, status="completed")
            .order_by("-finished_at", "-created_at").first())


def deployed_baseline(*, agent: Agent, dataset: Dataset, start_if_missing: bool) -> tuple[EvaluationRun | None, bool]:
    """The latest completed evaluation of the deployed revision on ``dataset``.

    With ``start_if_missing``, one is started (or an unfinished one reused) and
    returned with ``started=True`` so the caller can say it is pending.
    """
    if agent.deployed_revision_id is None:
        return None, False
    done = latest_completed(revision_id=agent.deployed_revision_id, dataset=dataset)
    if done is not None or not start_if_missing:
        return done, False
    pending = EvaluationRun.objects.filter(revision_id=agent.deployed_revision_id, dataset=dataset,
                                           status__in=("queued", "running")).first()
    if pending is None:
        from .runs import start

        pending = start(actor=SYSTEM, agent=agent, revision_id=agent.deployed_revision_id, dataset=dataset,
                        trigger="baseline")
        pending.refresh_from_db()  # with eager Celery (the embedded demo) it has already run
    return pending, True


def _delta(now, before):
    return None if now is None or before is None else round(now - before, 6)


def compare(evaluation: EvaluationRun, baseline: EvaluationRun, *, tolerance: float = 0.0) -> dict:
    body = {"evaluationId": evaluation.id, "baselineId": baseline.id, "tolerance": tolerance}
    if evaluation.status != "completed" or baseline.status != "completed":
        return body | {"verdict": "pending", "reasons": [
            f"{e.id} is {e.status}" for e in (evaluation, baseline) if e.status != "completed"]}
    now_metrics = evaluation.aggregates.get("metrics", {})
    before_metrics = baseline.aggregates.get("metrics", {})
    deltas = {
        "overallScore": _delta(evaluation.overall_score, baseline.overall_score),
        "passRate": _delta(evaluation.pass_rate, baseline.pass_rate),
        "metrics": {
            name: {"meanScore": _delta(now_metrics.get(name, {}).get("meanScore"), before_metrics.get(name, {}).get("meanScore")),
                   "passRate": _delta(now_metrics.get(name, {}).get("passRate"), before_metrics.get(name, {}).get("passRate"))}
            for name in sorted(set(now_metrics) | set(before_metrics))
        },
    }
    before = {r.case_id: r for r in baseline.results.all()}
    regressions, improvements = [], 0
    for result in evaluation.results.select_related("case"):
        old = before.get(result.case_id)
        if old is None:
            continue
        if old.passed and not result.passed:
            regressions.append({
                "caseId": result.case_id, "critical": result.case.critical, "baselineScore": old.score,
                "score": result.score, "input": result.case.input, "expected": result.case.expected,
                "output": result.output, "failedMetrics": [s for s in result.scores if not s["passed"]],
            })
        elif result.passed and not old.passed:
            improvements += 1
    regressions.sort(key=lambda r: (not r["critical"], r["caseId"]))
    critical = [r for r in regressions if r["critical"]]
    reasons = []
    if evaluation.overall_score < baseline.overall_score - tolerance:
        reasons.append(f"overall score {evaluation.overall_score:.4f} is below the baseline's "
                       f"{baseline.overall_score:.4f} minus tolerance {tolerance}")
    if critical:
        reasons.append(f"{len(critical)} critical case(s) regressed: {', '.join(str(r['caseId']) for r in critical)}")
    return body | {
        "verdict": "fail" if reasons else "pass", "reasons": reasons, "deltas": deltas,
        "score": evaluation.overall_score, "baselineScore": baseline.overall_score,
        "regressions": regressions, "criticalRegressions": len(critical), "improvements": improvements,
    }
