"""Automatic rollback of degraded deploys, for agents whose DeployPolicy asks for it.

The latest deploy of each such agent (if it is still the current one and not
itself a rollback) is judged by ``health.deployment_health``; ``degraded``
rolls back to the revision it replaced, recorded with actor ``system``.
Re-running finds nothing more to do, so the beat task is idempotent.
"""
from __future__ import annotations

import logging

from agents.models import Agent
from fruxon.errors import FruxonError
from orgs.actor import SYSTEM

from . import services
from .health import deployment_health
from .models import Deployment, DeployPolicy

logger = logging.getLogger(__name__)


def rollback_degraded() -> list[int]:
    rolled_back = []
    for policy in DeployPolicy.objects.filter(auto_rollback=True).select_related("agent"):
        agent = Agent.objects.get(pk=policy.agent_id)
        latest = Deployment.objects.filter(agent=agent).order_by("-at", "-id").first()
        if latest is None or latest.kind == "rollback" or latest.from_revision_id is None:
            continue
        if latest.to_revision_id != agent.deployed_revision_id:
            continue
        health = deployment_health(latest)
        if health["verdict"] != "degraded":
            continue
        try:
            deployment = services.rollback(actor=SYSTEM, agent=agent, revision_id=latest.from_revision_id,
                                           reason="auto-rollback: " + "; ".join(health["reasons"]))
        except FruxonError as exc:
            logger.warning("auto-rollback of %s failed: %s", agent.slug, exc.message)
            continue
        rolled_back.append(deployment.pk)
    return rolled_back
