"""Automatic rollback of degraded deploys, and alerts about them, for agents whose DeployPolicy asks.

The latest deploy of each such agent (if it is still the current one and not
itself a rollback) is judged by ``health.deployment_health``; ``degraded``
rolls back to the revision it replaced (when ``auto_rollback``), recorded with
actor ``system``, and raises a ``deployment.degraded`` alert to the policy's
webhook and emails (once per deployment: its dedupe key). Re-running finds
nothing more to do, so the beat task is idempotent.
"""
from __future__ import annotations

import logging

from django.db.models import Q

from agents.models import Agent
from fruxon.errors import FruxonError
from orgs.actor import SYSTEM

from . import services
from .health import deployment_health
from .models import Deployment, DeployPolicy

logger = logging.getLogger(__name__)


def rollback_degraded() -> list[int]:
    rolled_back = []
    watched = Q(auto_rollback=True) | ~Q(alert_webhook="") | ~Q(alert_emails=[])
    for policy in DeployPolicy.objects.filter(watched).select_related("agent"):
        agent = Agent.objects.get(pk=policy.agent_id)
        latest = Deployment.objects.filter(agent=agent).order_by("-at", "-id").first()
        if latest is None or latest.kind == "rollback" or latest.from_revision_id is None:
            continue
        if latest.to_revision_id != agent.deployed_revision_id:
            continue
        health = deployment_health(latest)
        if health["verdict"] != "degraded":
            continue
        deployment = None
        if policy.auto_rollback:
            try:
                deployment = services.rollback(actor=SYSTEM, agent=agent, revision_id=latest.from_revision_id,
                                               reason="auto-rollback: " + "; ".join(health["reasons"]))
            except FruxonError as exc:
                logger.warning("auto-rollback of %s failed: %s", agent.slug, exc.message)
            else:
                rolled_back.append(deployment.pk)
        _alert(policy, agent, latest, health, deployment)
    return rolled_back


def _alert(policy, agent, degraded, health: dict, rollback) -> None:
    from monitoring.alerts import raise_alert

    action = f"rolled back to {degraded.from_revision_id}" if rollback else "still deployed"
    raise_alert(
        organization=agent.organization, kind="deployment.degraded",
        subject=f"{agent.slug}: deploy of {degraded.to_revision_id} is degraded ({action})",
        payload={"agent": agent.slug, "deploymentId": degraded.pk, "revisionId": degraded.to_revision_id,
                 "previousRevisionId": degraded.from_revision_id, "reasons": health["reasons"],
                 "rolledBack": rollback is not None, "rollbackDeploymentId": rollback.pk if rollback else None},
        webhook=policy.alert_webhook, emails=policy.alert_emails, dedupe_key=f"deploy-degraded:{degraded.pk}",
    )
