"""Agents and revisions: create, update, delete, cut revisions.

Revisions are validated by the engine (``invalid_spec`` names each problem's
JSON path), hashed, and written with their references in one transaction.
"""
from __future__ import annotations

from django.db import IntegrityError, transaction
from django.utils import timezone

from fruxon import egress
from fruxon.errors import Conflict, InvalidRequest, NotFound
from orgs.actor import Actor
from orgs.models import Organization
from orgs.services import audit
from orgs.services import secrets as secret_services

from . import engine
from .limits import engine_limits
from .models import Agent, Revision, RevisionReference
from .scoping import subagent_refusal


def create_agent(*, actor: Actor, organization: Organization, slug: str, name: str = "", description: str = "") -> Agent:
    try:
        with transaction.atomic():
            agent = Agent.objects.create(organization=organization, slug=slug, name=name or slug,
                                         description=description, created_by=actor.user_or_none)
            audit.record(organization=organization, actor=actor, action="agent.created", target_type="agent",
                         target_id=slug, data={"name": agent.name})
    except IntegrityError:
        raise InvalidRequest(f"An agent '{slug}' already exists.", code="slug_taken",
                             details={"fields": {"slug": ["Already taken."]}}) from None
    return agent


def update_agent(*, actor: Actor, agent: Agent, changes: dict) -> Agent:
    with transaction.atomic():
        locked = Agent.objects.select_for_update().get(pk=agent.pk)
        for field, value in changes.items():
            setattr(locked, field, value)
        locked.updated_at = timezone.now()
        locked.save()
        audit.record(organization=locked.organization, actor=actor, action="agent.updated", target_type="agent",
                     target_id=locked.slug, data={"changed": sorted(changes),
                                                  **({"gatingDataset": getattr(changes["gating_dataset"], "slug", None)}
                                                     if "gating_dataset" in changes else {})})
    return locked


def dataset_in_org(*, organization: Organization, slug: str | None):
    """The org's dataset ``slug`` (None for None); 400 ``unknown_dataset`` otherwise."""
    if slug is None:
        return None
    from evaluations.models import Dataset

    dataset = Dataset.objects.filter(organization=organization, slug=slug).first()
    if dataset is None:
        raise InvalidRequest(f"Dataset '{slug}' does not exist in this organization.", code="unknown_dataset",
                             details={"fields": {"gatingDataset": ["Unknown dataset."]}})
    return dataset


def referencing_agents(agent: Agent) -> list[str]:
    """Slugs of other agents in the org whose revisions call this agent as a sub-agent."""
    return sorted(set(
        RevisionReference.objects.filter(organization_id=agent.organization_id, kind="agent", name=agent.slug)
        .exclude(revision__agent=agent).values_list("revision__agent__slug", flat=True)
    ))


def delete_agent(*, actor: Actor, agent: Agent) -> None:
    """Delete an agent with its revisions and runs; 409 while deployed or used by another agent."""
    with transaction.atomic():
        locked = Agent.objects.select_for_update().get(pk=agent.pk)
        if locked.deployed_revision_id:
            raise Conflict(f"Agent '{locked.slug}' is deployed ({locked.deployed_revision_id}); it cannot be deleted.",
                           details={"deployedRevisionId": locked.deployed_revision_id})
        users = referencing_agents(locked)
        if users:
            raise Conflict(f"Agent '{locked.slug}' is a sub-agent of {', '.join(users)}; it cannot be deleted.",
                           details={"referencedBy": users})
        audit.record(organization=locked.organization, actor=actor, action="agent.deleted", target_type="agent",
                     target_id=locked.slug)
        locked.delete()


def validate_spec_or_400(spec) -> None:
    """400 ``invalid_spec`` listing every problem, the configured size limits included (``agents.limits``)."""
    problems = engine.validate_spec(spec, engine_limits())
    if problems:
        raise InvalidRequest(
            "The spec is invalid: " + "; ".join(f"{p.path}: {p.message}" for p in problems[:10]),
            code="invalid_spec", details={"problems": [p.to_dict() for p in problems]},
        )


def _references(spec: dict) -> list[tuple[str, str, str]]:
    refs = [("secret", name, "") for name in sorted(engine.referenced_secrets(spec))]
    refs += [("integration", slug, "") for slug in sorted(engine.referenced_integrations(spec))]
    refs += [("agent", ref.agent, ref.revision_id or "") for ref in sorted(engine.referenced_subagents(spec), key=str)]
    return refs


def create_revision(*, actor: Actor, agent: Agent, spec: dict, message: str = "", parent_id: str | None = None,
                    origin: dict | None = None) -> Revision:
    """Validate and store a new immutable revision. ``parent_id`` defaults to the newest revision.

    403 ``forbidden`` (naming it in ``details.subAgent``) when the actor may not execute a
    sub-agent the spec names (``agents.scoping.subagent_refusal``); nothing is written.
    """
    validate_spec_or_400(spec)
    egress.check_spec(spec)  # 400 egress_denied: a literal model baseUrl at an address the egress policy refuses
    # 400 secret_destination: a secret may only go to its allowed hosts (its integrations' hosts count).
    secret_services.check_destinations(organization_id=agent.organization_id, spec=spec)
    refusal = subagent_refusal(actor=actor, organization=agent.organization, spec=spec)
    if refusal is not None:
        raise refusal
    with transaction.atomic():
        Agent.objects.select_for_update().filter(pk=agent.pk).first()  # serialize revisions of one agent
        if parent_id:
            parent = Revision.objects.filter(agent=agent, pk=parent_id).first()
            if parent is None:
                raise InvalidRequest(f"parentId '{parent_id}' is not a revision of this agent.",
                                     details={"fields": {"parentId": ["Unknown revision."]}})
        else:
            parent = Revision.objects.filter(agent=agent).order_by("-created_at", "-id").first()
        revision = Revision.objects.create(
            organization_id=agent.organization_id, agent=agent, spec=spec, content_hash=engine.content_hash(spec),
            parent=parent, message=message, created_by=actor.user_or_none, created_by_label=actor.label,
            origin=origin or {},
        )
        RevisionReference.objects.bulk_create([
            RevisionReference(organization_id=agent.organization_id, revision=revision, kind=kind, name=name,
                              pinned_revision=pinned)
            for kind, name, pinned in _references(spec)
        ])
        audit.record(organization=agent.organization, actor=actor, action="revision.created", target_type="revision",
                     target_id=revision.id, data={"agent": agent.slug, "contentHash": revision.content_hash,
                                                  "message": message})
    return revision


def get_revision(*, agent: Agent, revision_id: str) -> Revision:
    revision = Revision.objects.filter(agent=agent, pk=revision_id).first()
    if revision is None:
        raise NotFound(f"Revision '{revision_id}' not found for agent '{agent.slug}'.")
    return revision
