"""Promotion: one agent's revision from one organization to another, deployed there, in one call.

``promote`` exports the agent with just that revision (``export_revision``),
imports it into ``target`` and deploys it there, in one transaction, judged
by the *target's* readiness checklist. It carries the revision and creates
the agent if the target lacks it; it never touches the target's budgets,
datasets, integrations or gate settings. Refusals (nothing written in either
org):

* 409 ``not_ready`` with the plan when the target lacks a secret or an
  integration the revision references;
* 409 ``not_ready`` with the checklist and the plan when another blocking
  check fails there (the gate, a sub-agent, a secret that does not allow the
  agent), unless ``force`` with a ``reason`` (an owner's forced deploy);
* 409 ``already_deployed`` when the target agent already runs that content hash;
* 409 ``nothing_deployed`` without ``revision_id`` when nothing is deployed.

The caller (the API view) has checked that the actor is an owner of both
organizations. The source org records ``agent.promoted``; the target records
what an import records.
"""
from __future__ import annotations

from django.db import transaction

from agents.models import Agent, Revision
from fruxon.errors import Conflict, InvalidRequest, NotFound
from orgs.actor import Actor
from orgs.models import Organization
from orgs.services import audit

from .apply import import_document
from .document import validate_document
from .export import export_revision


def _revision(agent: Agent, revision_id: str | None) -> Revision:
    if revision_id is None:
        if agent.deployed_revision_id is None:
            raise Conflict(f"Agent '{agent.slug}' has nothing deployed; name a revisionId to promote.",
                           code="nothing_deployed")
        revision_id = agent.deployed_revision_id
    revision = Revision.objects.filter(agent=agent, pk=revision_id).first()
    if revision is None:
        raise NotFound(f"Revision '{revision_id}' not found for agent '{agent.slug}'.")
    return revision


def promote(*, actor: Actor, agent: Agent, target: Organization, revision_id: str | None = None,
            reason: str = "", force: bool = False) -> dict:
    """Promote ``agent``'s revision (default: deployed) to ``target``; returns what happened."""
    if target.pk == agent.organization_id:
        raise InvalidRequest("targetOrg must be another organization.",
                             details={"fields": {"targetOrg": ["Promote to another organization."]}})
    if force and not reason.strip():
        raise InvalidRequest("A forced promotion needs a reason.", details={"fields": {"reason": ["Required with force."]}})
    revision = _revision(agent, revision_id)
    document = validate_document(export_revision(agent=agent, revision=revision))
    source = agent.organization
    with transaction.atomic():
        result = import_document(actor=actor, organization=target, document=document, deploy=True,
                                 refuse_missing=True, force=force,
                                 reason=reason or f"Promoted from {source.slug} ({revision.id})")
        if not result.deployments:
            running = Agent.objects.filter(organization=target, slug=agent.slug).values_list(
                "deployed_revision_id", flat=True).first()
            raise Conflict(f"'{target.slug}' already runs this revision ({revision.content_hash[:12]}) of "
                           f"'{agent.slug}'.", code="already_deployed",
                           details={"targetOrg": target.slug, "revisionId": running,
                                    "contentHash": revision.content_hash})
        deployed = result.deployments[0]
        audit.record(organization=source, actor=actor, action="agent.promoted", target_type="agent",
                     target_id=agent.slug, data={"targetOrg": target.slug, "revisionId": revision.id,
                                                 "contentHash": revision.content_hash, "forced": deployed["forced"],
                                                 "reason": reason})
    return {"targetOrg": target.slug, "agent": agent.slug, "sourceRevisionId": revision.id,
            "revisionId": deployed["revisionId"], "contentHash": revision.content_hash,
            "deploymentId": deployed["deploymentId"], "forced": deployed["forced"], "plan": result.plan.to_dict()}
