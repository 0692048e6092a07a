"""Shadow mode: the candidate runs on a copy of live inputs, never serving them.

After a live execute on the deployed revision, ``maybe_enqueue`` samples it
at the configured rate and enqueues ``run_shadow`` to run after the response
(Celery; in eager mode a thread). The shadow run has source ``shadow``, calls
no side-effecting tools (the engine skips them and says so in the span), and
counts against the agent's budget like any run. ``ShadowResult`` pairs it with
the live run.

At most once per live run: ``run_shadow_for`` first commits a ``ShadowClaim``
(unique per live run); a redelivered or duplicate task (``acks_late``) finds it
and returns without running the candidate, so nothing runs or is charged twice.

Agreement: when the agent has a gating dataset with metrics, those metrics
score the shadow output with the live output as the expected value (cost and
latency ceilings judge the shadow run); ``agreement`` is their mean score and
the pair ``agreed`` when every metric passed and the mean reaches the
dataset's ``passThreshold``, as an evaluation case passes. Without gating
metrics (or when the live run did not succeed) ``agreed`` is output equality.
"""
from __future__ import annotations

import difflib
import json
import logging
import random
from decimal import Decimal
from statistics import fmean

from django.db import IntegrityError, transaction
from django.db.models import Avg, Count, Q, Sum
from django.utils import timezone

from agents import execution
from agents.models import Agent, Revision
from evaluations import metrics as metric_lib
from fruxon.errors import FruxonError, InvalidRequest, NotFound
from monitoring.models import Run
from orgs.actor import Actor
from orgs.services import audit

from .models import ShadowClaim, ShadowConfig, ShadowResult

logger = logging.getLogger(__name__)


def configure(*, actor: Actor, agent: Agent, revision_id: str, sample_rate: float) -> ShadowConfig:
    if not Revision.objects.filter(agent=agent, pk=revision_id).exists():
        raise NotFound(f"Revision '{revision_id}' not found for agent '{agent.slug}'.")
    if revision_id == agent.deployed_revision_id:
        raise InvalidRequest("The shadow revision must differ from the deployed one.",
                             details={"fields": {"revisionId": ["Already deployed."]}})
    with transaction.atomic():
        config, _ = ShadowConfig.objects.update_or_create(
            agent=agent, defaults={"organization_id": agent.organization_id, "revision_id": revision_id,
                                   "sample_rate": sample_rate, "updated_by_label": actor.label,
                                   "updated_at": timezone.now()})
        audit.record(organization=agent.organization, actor=actor, action="shadow.configured", target_type="agent",
                     target_id=agent.slug, data={"revisionId": revision_id, "sampleRate": sample_rate})
    return config


def disable(*, actor: Actor, agent: Agent) -> None:
    with transaction.atomic():
        deleted, _ = ShadowConfig.objects.filter(agent=agent).delete()
        if not deleted:
            raise NotFound(f"Shadow mode is not on for agent '{agent.slug}'.")
        audit.record(organization=agent.organization, actor=actor, action="shadow.disabled", target_type="agent",
                     target_id=agent.slug)


def sampled(*, agent: Agent, run: Run, rng=random.random) -> str | None:
    """The candidate revision to shadow this live run with, when it is sampled; None otherwise. No query."""
    if run.source != "api" or run.revision_id != agent.deployed_revision_id:
        return None
    config = getattr(agent, "shadow_config", None)  # select_related by agents.scoping
    if config is None or config.revision_id == run.revision_id or rng() >= config.sample_rate:
        return None
    return config.revision_id


def enqueue(run: Run, candidate_revision_id: str) -> None:
    from fruxon.tasks import defer

    from .tasks import run_shadow

    defer(run_shadow, run.id, candidate_revision_id)


def maybe_enqueue(*, agent: Agent, run: Run, rng=random.random) -> bool:
    """Sample a live run on the deployed revision; enqueue its shadow. True when enqueued."""
    candidate = sampled(agent=agent, run=run, rng=rng)
    if candidate is None:
        return False
    enqueue(run, candidate)
    return True


def _text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _claim(live: Run, candidate_revision_id: str) -> bool:
    """Commit this live run's one shadow claim; False when a task already holds it."""
    try:
        with transaction.atomic():
            ShadowClaim.objects.create(organization_id=live.organization_id, live_run=live,
                                       candidate_revision_id=candidate_revision_id)
    except IntegrityError:
        return False
    return True


def _judge(agent: Agent):
    """An llmJudge metric's judge, run through the engine (as evaluations.services.runs does)."""
    from agents import engine
    from agents.runtime import DjangoRuntime

    runtime = DjangoRuntime(organization_id=agent.organization_id, agent_id=agent.pk)

    def judge(config: dict, observation, expected) -> tuple[float, str]:
        spec = {"inputs": {"prompt": {"type": "string", "required": True}},
                "steps": [{"name": "judge", "model": config["model"], "prompt": "{{input.prompt}}"}]}
        prompt = metric_lib.local_judge_prompt(config, observation, expected)
        result = engine.run(spec, {"prompt": prompt}, context=engine.RunContext(agent=agent.slug), runtime=runtime)
        if not result.ok:
            return 0.0, f"the judge failed: {result.error['message'] if result.error else result.status}"
        return metric_lib.parse_judge_reply(result.output if isinstance(result.output, str) else str(result.output))

    return judge


def metric_agreement(agent: Agent, live: Run, shadow: Run) -> tuple[list[dict], float | None, bool | None]:
    """``(scores, agreement, agreed)`` of the gating dataset's metrics on the pair; ``([], None, None)`` without."""
    dataset = agent.gating_dataset
    configs = list(dataset.metrics or []) if dataset is not None else []
    if not configs or live.status != "ok":
        return [], None, None
    observation = metric_lib.Observation(output=shadow.output, status=shadow.status, cost_usd=shadow.cost_usd,
                                         latency_ms=shadow.latency_ms, input=live.input)
    scores = metric_lib.evaluate_all(configs, observation, live.output, judge=_judge(agent))
    mean = fmean(s.score for s in scores)
    agreed = all(s.passed for s in scores) and mean >= dataset.pass_threshold
    rows = [{"type": config.get("type") if isinstance(config, dict) else None, "metric": score.metric,
             "score": round(score.score, 6), "passed": score.passed, "reason": score.reason[:500]}
            for config, score in zip(configs, scores)]
    return rows, round(mean, 6), agreed


def _record(live: Run, candidate_revision_id: str, **fields) -> ShadowResult:
    result, _ = ShadowResult.objects.get_or_create(
        live_run=live, defaults={"organization_id": live.organization_id, "agent_id": live.agent_id,
                                 "candidate_revision_id": candidate_revision_id, **fields})
    return result


def run_shadow_for(live_run_id: str, candidate_revision_id: str) -> ShadowResult | None:
    """Run the candidate on the live run's input and record the pair; None when claimed before."""
    live = Run.objects.select_related("agent", "agent__gating_dataset").filter(pk=live_run_id).first()
    if live is None or ShadowResult.objects.filter(live_run=live).exists() or not _claim(live, candidate_revision_id):
        return None
    agent = live.agent
    try:
        outcome = execution.execute(agent=agent, input=live.input, revision_id=candidate_revision_id,
                                    source="shadow", shadow=True)
    except FruxonError as exc:
        # The candidate refused the live input (e.g. it declares other inputs): a disagreement
        # worth seeing in the results, not a silent log line.
        return _record(live, candidate_revision_id, shadow_run=None, error=exc.message[:1000])
    except Exception as exc:
        logger.exception("shadow run of %s for live run %s failed", candidate_revision_id, live.pk)
        return _record(live, candidate_revision_id, shadow_run=None, error=f"internal error: {type(exc).__name__}")
    shadow = outcome.run
    equal = live.status == shadow.status == "ok" and live.output == shadow.output
    similarity = 1.0 if equal else difflib.SequenceMatcher(None, _text(live.output), _text(shadow.output)).ratio()
    scores, agreement, agreed = metric_agreement(agent, live, shadow)
    return _record(live, candidate_revision_id, shadow_run=shadow, outputs_equal=equal,
                   similarity=round(similarity, 4), cost_delta_usd=shadow.cost_usd - live.cost_usd,
                   latency_delta_ms=shadow.latency_ms - live.latency_ms, metric_scores=scores,
                   agreement=agreement, agreed=equal if agreed is None else agreed)


def _metric_summary(queryset) -> list[dict]:
    per_metric: dict[str, dict] = {}
    for scores in queryset.filter(agreement__isnull=False).values_list("metric_scores", flat=True).iterator():
        for score in scores or []:
            entry = per_metric.setdefault(score["metric"], {"metric": score["metric"], "type": score.get("type"),
                                                            "scores": [], "passed": 0})
            entry["scores"].append(score["score"])
            entry["passed"] += bool(score["passed"])
    return [{"metric": e["metric"], "type": e["type"], "count": len(e["scores"]),
             "meanScore": round(fmean(e["scores"]), 6), "passRate": round(e["passed"] / len(e["scores"]), 6)}
            for e in per_metric.values()]


def summary(queryset) -> dict:
    """Aggregates over ``queryset`` of ShadowResults (the /shadow/results summary and the admin's)."""
    agg = queryset.aggregate(
        count=Count("id"), agreements=Count("id", filter=Q(agreed=True)), equal=Count("id", filter=Q(outputs_equal=True)),
        scored=Count("id", filter=Q(agreement__isnull=False)), agreement=Avg("agreement"), similarity=Avg("similarity"),
        cost_delta=Sum("cost_delta_usd"), latency_delta=Avg("latency_delta_ms"),
        shadow_errors=Count("id", filter=~Q(shadow_run__status="ok")),
    )
    count = agg["count"] or 0
    return {
        "count": count,
        "agreementRate": (agg["agreements"] / count) if count else None,
        "outputsEqualRate": (agg["equal"] / count) if count else None,
        "metricScored": agg["scored"],
        "meanAgreement": round(agg["agreement"], 6) if agg["agreement"] is not None else None,
        "metrics": _metric_summary(queryset) if agg["scored"] else [],
        "meanSimilarity": round(agg["similarity"], 4) if agg["similarity"] is not None else None,
        "shadowErrorRate": (agg["shadow_errors"] / count) if count else None,
        "meanCostDeltaUsd": format((Decimal(agg["cost_delta"] or 0) / count).quantize(Decimal("0.00000001")), "f")
        if count else None,
        "meanLatencyDeltaMs": round(agg["latency_delta"], 1) if agg["latency_delta"] is not None else None,
    }
