"""The deploy gate: readiness's ``evaluation`` item (the seed's first quality gate).

Without a gating dataset the item warns. With one, it blocks unless the
candidate has a completed evaluation on it that (a) scores at least the
deployed revision's latest completed evaluation minus the agent's
``gate_tolerance`` and (b) has no critical regression against it. A first
deploy (nothing deployed) needs a completed evaluation with no failed
critical case.
"""
from __future__ import annotations

from agents.models import Agent, Revision

from .models import EvaluationRun
from .services.compare import compare, latest_completed


def _score(value) -> str:
    return "no score" if value is None else f"{value:.3f}"


def evaluation_item(agent: Agent, revision: Revision):
    from deployments.readiness import Item

    dataset = agent.gating_dataset
    if dataset is None:
        latest = EvaluationRun.objects.filter(revision=revision, status="completed").order_by("-finished_at").first()
        if latest is None:
            return Item("evaluation", "warn", "No evaluation and no gating dataset: the candidate has not been scored.")
        return Item("evaluation", "warn", f"No gating dataset; latest evaluation {latest.id} on {latest.dataset.slug} "
                    f"scored {_score(latest.overall_score)}.", {"evaluationId": latest.id})
    candidate = latest_completed(revision_id=revision.id, dataset=dataset)
    if candidate is None:
        return Item("evaluation", "fail", f"No completed evaluation of {revision.id} on the gating dataset "
                    f"'{dataset.slug}'. POST /evaluations to run one.", {"dataset": dataset.slug})
    data = {"dataset": dataset.slug, "evaluationId": candidate.id, "score": candidate.overall_score,
            "tolerance": agent.gate_tolerance}
    if candidate.overall_score is None:
        return Item("evaluation", "fail", f"{candidate.id} scored no case (the dataset '{dataset.slug}' had none).",
                    data)
    if agent.deployed_revision_id is None or agent.deployed_revision_id == revision.id:
        failed = candidate.aggregates.get("criticalFailures", 0)
        if failed:
            return Item("evaluation", "fail", f"{failed} critical case(s) fail in {candidate.id}.", data)
        return Item("evaluation", "pass", f"{candidate.id} scored {_score(candidate.overall_score)} with no critical "
                    "failure (no deployed baseline to compare with).", data)
    baseline = latest_completed(revision_id=agent.deployed_revision_id, dataset=dataset)
    if baseline is None:
        return Item("evaluation", "fail", f"The deployed revision {agent.deployed_revision_id} has no completed "
                    f"evaluation on '{dataset.slug}' to compare with; GET /evaluations/{candidate.id}:compare"
                    "?baseline=deployed starts one.", data)
    result = compare(candidate, baseline, tolerance=agent.gate_tolerance)
    data |= {"baselineId": baseline.id, "baselineScore": baseline.overall_score,
             "criticalRegressions": result["criticalRegressions"], "regressions": len(result["regressions"])}
    if result["verdict"] != "pass":
        return Item("evaluation", "fail", "; ".join(result["reasons"]), data)
    return Item("evaluation", "pass", f"{candidate.id} scored {_score(candidate.overall_score)} against the deployed "
                f"{_score(baseline.overall_score)} (tolerance {agent.gate_tolerance}); no critical regression.", data)
