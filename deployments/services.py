"""Deploy and roll back: one locked row update, a Deployment row, an audit event.

``deploy`` is the only writer of ``Agent.deployed_revision`` (rollbacks,
scheduled rollouts, imports and auto-rollbacks all go through it). Inside one
transaction it locks the agent row, re-checks readiness against the state it
now holds, flips the pointer and records who, when, from what, to what, why.
Executes resolve their revision once at their start (``agents.execution``), so
a run in flight keeps its revision: the switch drops nothing.
"""
from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from agents.models import Agent, Revision
from fruxon.errors import Conflict, InvalidRequest, NotFound
from orgs.actor import Actor
from orgs.services import audit

from . import readiness
from .models import Deployment, DeployPolicy


def _revision(agent: Agent, revision_id: str) -> Revision:
    revision = Revision.objects.filter(agent=agent, pk=revision_id).first()
    if revision is None:
        raise NotFound(f"Revision '{revision_id}' not found for agent '{agent.slug}'.")
    return revision


def deploy(*, actor: Actor, agent: Agent, revision_id: str, reason: str = "", force: bool = False,
           kind: str = "deploy", enforce_readiness: bool = True) -> Deployment:
    """Switch ``agent`` to ``revision_id``.

    409 ``already_deployed`` when it is deployed already; 409 ``not_ready`` with
    the checklist when a blocking check fails, unless ``force`` (the caller has
    checked the actor may force; a reason is required). ``enforce_readiness``
    is False only for rollbacks to a revision that was deployed before.
    """
    if force and not reason.strip():
        raise InvalidRequest("A forced deploy needs a reason.", details={"fields": {"reason": ["Required with force."]}})
    revision = _revision(agent, revision_id)
    with transaction.atomic():
        locked = Agent.objects.select_for_update().get(pk=agent.pk)
        if locked.deployed_revision_id == revision.id:
            raise Conflict(f"{revision.id} is already deployed.", code="already_deployed",
                           details={"revisionId": revision.id})
        items = readiness.check(locked, revision)
        failures = readiness.blocking_failures(items)
        if failures and enforce_readiness and not force:
            raise Conflict(
                "Not ready to deploy: " + "; ".join(f"{i.check}: {i.detail}" for i in failures),
                code="not_ready", details={"revisionId": revision.id, "checks": [i.to_dict() for i in items]},
            )
        from_id = locked.deployed_revision_id
        locked.deployed_revision = revision
        locked.updated_at = timezone.now()
        locked.save(update_fields=["deployed_revision", "updated_at"])
        deployment = Deployment.objects.create(
            organization_id=locked.organization_id, agent=locked, from_revision_id=from_id, to_revision=revision,
            kind=kind, actor_user=actor.user_or_none, actor_label=actor.label, reason=reason,
            forced=bool(force and failures), checks=[i.to_dict() for i in items],
        )
        audit.record(organization=locked.organization, actor=actor, action=f"agent.{kind}", target_type="agent",
                     target_id=locked.slug, data={"from": from_id, "to": revision.id, "reason": reason,
                                                  "forced": deployment.forced, "deploymentId": deployment.pk})
    agent.deployed_revision_id = revision.id
    return deployment


def default_rollback_target(agent: Agent) -> str | None:
    """The revision deployed before the current one, per the deploy history."""
    if agent.deployed_revision_id is None:
        return None
    last = Deployment.objects.filter(agent=agent, to_revision_id=agent.deployed_revision_id).order_by("-at", "-id").first()
    return last.from_revision_id if last else None


def rollback(*, actor: Actor, agent: Agent, revision_id: str | None = None, reason: str = "") -> Deployment:
    """Return to an earlier deployed revision (default: the one before the current).

    Rolling back is for stopping the bleeding: readiness is recorded but does
    not block, since the target already ran in production.
    """
    target = revision_id or default_rollback_target(agent)
    if target is None:
        raise Conflict("Nothing to roll back to: this agent has no earlier deployed revision.", code="no_rollback_target")
    if not Deployment.objects.filter(agent=agent, to_revision_id=target).exists():
        # A body id resolves inside this org only: another org's (or no) revision is a 404 like any
        # unknown id; a revision of this org that this agent never deployed (its own or another
        # agent's) is the state conflict.
        if not Revision.objects.filter(organization_id=agent.organization_id, pk=target).exists():
            raise NotFound(f"Revision '{target}' not found for agent '{agent.slug}'.")
        raise Conflict(f"{target} was never deployed by agent '{agent.slug}'; roll back only to one of its revisions "
                       "that ran in production.", code="not_previously_deployed", details={"revisionId": target})
    return deploy(actor=actor, agent=agent, revision_id=target, reason=reason, kind="rollback", enforce_readiness=False)


def set_policy(*, actor: Actor, agent: Agent, auto_rollback: bool, alert_webhook: str = "",
               alert_emails: list | None = None) -> DeployPolicy:
    """Set the agent's deploy policy; ``alert_webhook``/``alert_emails`` receive ``deployment.degraded`` alerts."""
    from fruxon import egress

    egress.check_url(alert_webhook, "alertWebhook")  # 400 egress_denied: see fruxon.egress
    with transaction.atomic():
        policy, _ = DeployPolicy.objects.update_or_create(
            agent=agent, defaults={"organization_id": agent.organization_id, "auto_rollback": auto_rollback,
                                   "alert_webhook": alert_webhook, "alert_emails": alert_emails or [],
                                   "updated_at": timezone.now()})
        audit.record(organization=agent.organization, actor=actor, action="agent.deploy_policy_set",
                     target_type="agent", target_id=agent.slug,
                     data={"autoRollback": auto_rollback, "alertWebhook": bool(alert_webhook),
                           "alertEmails": len(alert_emails or [])})
    return policy
