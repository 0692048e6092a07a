"""Shadow mode: the candidate runs on a copy of live inputs, never serving them.

After a live execute on the deployed revision, ``maybe_enqueue`` samples it
at the configured rate and enqueues ``run_shadow`` to run after the response
(Celery; in eager mode a thread). The shadow run has source ``shadow``, calls
no side-effecting tools (the engine skips them and says so in the span), and
counts against the agent's budget like any run. ``ShadowResult`` pairs it with
the live run.
"""
from __future__ import annotations

import difflib
import json
import random
from decimal import Decimal

from django.db import transaction
from django.db.models import Avg, Count, Q, Sum
from django.utils import timezone

from agents import execution
from agents.models import Agent, Revision
from fruxon.errors import FruxonError, InvalidRequest, NotFound
from monitoring.models import Run
from orgs.actor import Actor
from orgs.services import audit

from .models import ShadowConfig, ShadowResult


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


def maybe_enqueue(*, agent: Agent, run: Run, rng=random.random) -> bool:
    """Sample a live run on the deployed revision; enqueue its shadow. True when enqueued."""
    if run.source != "api" or run.revision_id != agent.deployed_revision_id:
        return False
    config = getattr(agent, "shadow_config", None)  # select_related by agents.scoping
    if config is None or config.revision_id == run.revision_id or rng() >= config.sample_rate:
        return False
    from fruxon.tasks import defer

    from .tasks import run_shadow

    defer(run_shadow, run.id, config.revision_id)
    return True


def _text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def run_shadow_for(live_run_id: str, candidate_revision_id: str) -> ShadowResult | None:
    """Run the candidate on the live run's input and record the pair (idempotent per live run)."""
    live = Run.objects.select_related("agent").filter(pk=live_run_id).first()
    if live is None or ShadowResult.objects.filter(live_run=live).exists():
        return None
    try:
        outcome = execution.execute(agent=live.agent, input=live.input, revision_id=candidate_revision_id,
                                    source="shadow", shadow=True)
    except FruxonError as exc:
        # The candidate refused the live input (e.g. it declares other inputs): a disagreement
        # worth seeing in the results, not a silent log line.
        result, _ = ShadowResult.objects.get_or_create(
            live_run=live, defaults={"organization_id": live.organization_id, "agent_id": live.agent_id,
                                     "candidate_revision_id": candidate_revision_id, "shadow_run": None,
                                     "outputs_equal": False, "similarity": 0.0, "error": exc.message[:1000]})
        return result
    shadow = outcome.run
    equal = live.status == shadow.status == "ok" and live.output == shadow.output
    similarity = 1.0 if equal else difflib.SequenceMatcher(None, _text(live.output), _text(shadow.output)).ratio()
    result, _ = ShadowResult.objects.get_or_create(
        live_run=live,
        defaults={"organization_id": live.organization_id, "agent_id": live.agent_id,
                  "candidate_revision_id": candidate_revision_id, "shadow_run": shadow, "outputs_equal": equal,
                  "similarity": round(similarity, 4), "cost_delta_usd": shadow.cost_usd - live.cost_usd,
                  "latency_delta_ms": shadow.latency_ms - live.latency_ms},
    )
    return result


def summary(queryset) -> dict:
    agg = queryset.aggregate(
        count=Count("id"), agreements=Count("id", filter=Q(outputs_equal=True)), similarity=Avg("similarity"),
        cost_delta=Sum("cost_delta_usd"), latency_delta=Avg("latency_delta_ms"),
        shadow_errors=Count("id", filter=~Q(shadow_run__status="ok")),
    )
    count = agg["count"] or 0
    return {
        "count": count,
        "agreementRate": (agg["agreements"] / count) if count else None,
        "meanSimilarity": round(agg["similarity"], 4) if agg["similarity"] is not None else None,
        "shadowErrorRate": (agg["shadow_errors"] / count) if count else None,
        "meanCostDeltaUsd": format((Decimal(agg["cost_delta"] or 0) / count).quantize(Decimal("0.00000001")), "f")
        if count else None,
        "meanLatencyDeltaMs": round(agg["latency_delta"], 1) if agg["latency_delta"] is not None else None,
    }
