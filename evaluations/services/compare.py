"""Comparing an evaluation with a baseline, and the deploy gate built on it.

``regressions`` are cases that passed on the baseline and fail now (matched by
case id), critical ones first. The verdict is ``pass`` when the overall score
is at least the baseline's minus the tolerance and no critical case regressed,
``fail`` otherwise, and ``pending`` while either side is not completed, or
while the deployed baseline does not exist yet.

Comparing with ``deployed`` starts the missing baseline evaluation only for a
caller who may start evaluations (``may_start``: an editor, or a key with
``evaluations:write``); anyone else gets ``verdict: "pending"`` with
``baselineMissing: true`` and a reason saying who can start it. Reading never
spends the agent's budget.
"""
from __future__ import annotations

from django.db import transaction

from agents.models import Agent
from fruxon.errors import InvalidRequest
from orgs.actor import SYSTEM, Actor

from ..models import Dataset, EvaluationRun

START_NEEDS = {"role": "editor", "scope": "evaluations:write"}


def latest_completed(*, revision_id: str, dataset: Dataset) -> EvaluationRun | None:
    return (EvaluationRun.objects.filter(revision_id=revision_id, dataset=dataset, status="completed")
            .order_by("-finished_at", "-created_at").first())


def unfinished(*, revision_id: str, dataset: Dataset) -> EvaluationRun | None:
    return (EvaluationRun.objects.filter(revision_id=revision_id, dataset=dataset, status__in=("queued", "running"))
            .order_by("-created_at").first())


def deployed_baseline(*, agent: Agent, dataset: Dataset, start_if_missing: bool,
                      actor: Actor = SYSTEM) -> tuple[EvaluationRun | None, bool]:
    """The latest completed evaluation of the deployed revision on ``dataset``.

    With ``start_if_missing``, one is started by ``actor`` (or an unfinished one
    reused) and returned with ``started=True`` so the caller can say it is pending.
    """
    if agent.deployed_revision_id is None:
        return None, False
    done = latest_completed(revision_id=agent.deployed_revision_id, dataset=dataset)
    if done is not None or not start_if_missing:
        return done, False
    from .runs import start

    with transaction.atomic():
        # The agent row lock makes "is one unfinished? if not, start one" atomic: two callers comparing at
        # once start one baseline between them, not two. NO KEY UPDATE: it does not block the foreign-key
        # checks of the agent's runs being recorded meanwhile (FOR KEY SHARE).
        Agent.objects.select_for_update(no_key=True).filter(pk=agent.pk).values_list("pk", flat=True).first()
        pending = unfinished(revision_id=agent.deployed_revision_id, dataset=dataset)
        if pending is None:
            pending = start(actor=actor, agent=agent, revision_id=agent.deployed_revision_id, dataset=dataset,
                            trigger="baseline")
    pending.refresh_from_db()  # with eager Celery (the embedded demo) it has already run
    return pending, True


def compare_with_deployed(*, actor: Actor, evaluation: EvaluationRun, may_start: bool) -> dict:
    """``compare`` against the deployed baseline; starts it only when ``may_start`` (see the module doc)."""
    agent = evaluation.agent
    if agent.deployed_revision_id is None:
        raise InvalidRequest("The agent has nothing deployed; pass ?baseline=<evaluation id>.", code="not_deployed")
    baseline, started = deployed_baseline(agent=agent, dataset=evaluation.dataset, start_if_missing=may_start,
                                          actor=actor)
    if baseline is None:  # no completed one, and this caller may not start one: an unfinished one still counts
        baseline = unfinished(revision_id=agent.deployed_revision_id, dataset=evaluation.dataset)
    if baseline is None:
        reason = (f"The deployed revision {agent.deployed_revision_id} has no completed evaluation on dataset "
                  f"'{evaluation.dataset.slug}'. Starting one needs an editor (or an API key with the "
                  f"evaluations:write scope): an editor calling this comparison starts it, as does "
                  f"POST /evaluations for that revision.")
        return {"evaluationId": evaluation.id, "baselineId": None, "tolerance": agent.gate_tolerance,
                "verdict": "pending", "reasons": [reason], "baselineStarted": False, "baselineMissing": True,
                "startNeeds": START_NEEDS}
    return compare(evaluation, baseline, tolerance=agent.gate_tolerance) | {"baselineStarted": started,
                                                                            "baselineMissing": False}


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
    if evaluation.overall_score is None or baseline.overall_score is None:  # nothing was scored (no cases)
        reasons.append("an evaluation without scored cases cannot be compared")
    elif evaluation.overall_score < baseline.overall_score - tolerance:
        reasons.append(f"overall score {evaluation.overall_score:.4f} is below the baseline's "
                       f"{baseline.overall_score:.4f} minus tolerance {tolerance}")
    if critical:
        reasons.append(f"{len(critical)} critical case(s) regressed: {', '.join(str(r['caseId']) for r in critical)}")
    return body | {
        "verdict": "fail" if reasons else "pass", "reasons": reasons, "deltas": deltas,
        "score": evaluation.overall_score, "baselineScore": baseline.overall_score,
        "regressions": regressions, "criticalRegressions": len(critical), "improvements": improvements,
    }
