"""Agent resolution inside an org, with per-agent grants (DESIGN rule 2).

Called only by ``fruxon.api.base`` for routes with ``{agent}``. The caller's
role on an agent is: owner for org owners (always full access); otherwise the
per-agent grant if there is one (it can raise or lower the org role); otherwise
the org role. API keys have no role; a key limited to some agents gets 403 on
the others.
"""
from __future__ import annotations

from fruxon.db import PreparedQuery
from fruxon.errors import Forbidden, NotFound
from orgs.models import ApiKey, Membership, Organization
from orgs.roles import EDITOR, OWNER, role_at_least
from orgs.scoping import resolve_tenant

from . import engine
from .grants import grant_role
from .models import Agent

# shadow_config, gating_dataset and budget ride along (joins): the execute path and
# the agent serializer need them, and a missing row costs nothing.
_ALWAYS_RELATED = ("shadow_config", "gating_dataset", "budget")


def _missing_agent(slug: str) -> NotFound:
    return NotFound(f"Agent '{slug}' not found.")


def get_agent(*, organization: Organization, slug: str, select_related: tuple[str, ...] = ()) -> Agent:
    agent = (Agent.objects.select_related(*_ALWAYS_RELATED, *select_related)
             .filter(organization=organization, slug=slug).first())
    if agent is None:
        raise _missing_agent(slug)
    return agent


def effective_role(*, agent: Agent, user, org_role: str | None) -> str | None:
    if org_role == OWNER:
        return OWNER
    return grant_role(user=user, agent=agent) or org_role


def _check_key(api_key: ApiKey, agent: Agent) -> None:
    if not api_key.allows_agent(agent.slug):
        raise Forbidden(f"This API key is limited to other agents than '{agent.slug}'.")


def resolve_agent_for(*, organization: Organization, slug: str, user, org_role: str | None,
                      api_key: ApiKey | None, select_related: tuple[str, ...] = (),
                      resolved: Agent | None = None) -> tuple[Agent, str | None]:
    """The agent (``resolved`` when the caller already holds it) and the caller's role on it."""
    agent = resolved if resolved is not None else get_agent(organization=organization, slug=slug,
                                                            select_related=select_related)
    if api_key is not None:
        _check_key(api_key, agent)
        return agent, None
    return agent, effective_role(agent=agent, user=user, org_role=org_role)


# What running an agent takes: ``:execute``'s access map is built from these, and so is the
# sub-agent rule below (one definition: the two cannot drift apart).
EXECUTE_ROLE, EXECUTE_SCOPE = EDITOR, "agents:execute"


def subagent_refusal(*, actor, organization: Organization, spec) -> Forbidden | None:
    """Why ``actor`` may not name the spec's sub-agents in a revision (the 403 to raise), or None.

    A revision runs its sub-agents with the router's rights, for whoever calls the router: so
    its author must be allowed to execute each of them. A key needs the ``agents:execute``
    scope and each sub-agent in its agent list; a person needs ``EXECUTE_ROLE`` on each
    sub-agent after per-agent grants (a sub-agent that does not exist yet counts at the org
    role). The system actor (demo, migrations) is not checked. Checked once, when the
    revision is written: a deployed router keeps working for every caller of the router.
    """
    if actor is None or actor.system:
        return None
    slugs = sorted({ref.agent for ref in engine.referenced_subagents(spec)})
    if not slugs:
        return None
    key = actor.api_key
    if key is not None:
        for slug in slugs:
            if EXECUTE_SCOPE not in key.scopes:
                return Forbidden(f"Calling sub-agent '{slug}' needs the '{EXECUTE_SCOPE}' scope; this API key lacks it.",
                                 details={"subAgent": slug, "requiredScope": EXECUTE_SCOPE})
            if not key.allows_agent(slug):
                return Forbidden(f"This API key is limited to other agents than sub-agent '{slug}'.",
                                 details={"subAgent": slug})
        return None
    user = actor.user_or_none
    membership = (Membership.objects.filter(organization=organization, user=user).first()
                  if user is not None else None)
    org_role = membership.role if membership is not None else None
    agents = {a.slug: a for a in Agent.objects.filter(organization=organization, slug__in=slugs)}
    for slug in slugs:
        agent = agents.get(slug)
        role = effective_role(agent=agent, user=user, org_role=org_role) if agent is not None else org_role
        if not role_at_least(role, EXECUTE_ROLE):
            return Forbidden(f"Calling sub-agent '{slug}' needs the {EXECUTE_ROLE} role on it; you are {role}.",
                             details={"subAgent": slug, "requiredRole": EXECUTE_ROLE, "role": role})
    return None


_key_lookups: dict[tuple[str, ...], PreparedQuery] = {}


def _key_lookup(select_related: tuple[str, ...]) -> PreparedQuery:
    """The key's agent lookup, compiled once per process: compiling it costs more than running it."""
    lookup = _key_lookups.get(select_related)
    if lookup is None:
        lookup = _key_lookups.setdefault(select_related, PreparedQuery(
            # (org, slug) is unique: no ORDER BY.
            lambda organization_id, tenant, slug: Agent.objects.select_related(
                "organization", *_ALWAYS_RELATED, *select_related,
            ).filter(organization_id=organization_id, organization__slug=tenant, slug=slug).order_by()[:1],
            sentinels=(-7_300_000_001, "\x00tenant-sentinel", "\x00agent-sentinel"),
        ))
    return lookup


def resolve_tenant_and_agent_for_key(*, tenant: str, slug: str, api_key: ApiKey,
                                     select_related: tuple[str, ...] = ()) -> tuple[Organization, Agent]:
    """An API key's org and agent in ONE query (the execute hot path), with the same answers as
    ``resolve_tenant`` then ``resolve_agent_for``: the org must be the key's own and carry the
    slug ``tenant`` (else the org's 404), the agent must be in it (else the agent's 404), and a
    key limited to some agents must name this one (403).
    """
    agent = _key_lookup(select_related).first(api_key.organization_id, tenant, slug)
    if agent is None:
        # Say which is missing, exactly as the two-step resolution would: the org's 404 first.
        resolve_tenant(slug=tenant, user=None, api_key=api_key)
        raise _missing_agent(slug)
    _check_key(api_key, agent)
    return agent.organization, agent


async def aresolve_tenant_and_agent_for_key(*, tenant: str, slug: str, api_key: ApiKey,
                                            select_related: tuple[str, ...] = ()) -> tuple[Organization, Agent]:
    """``resolve_tenant_and_agent_for_key`` for the async execute family: the same query (through
    ``fruxon.adb``) and the same answers. Only a miss (a 404 to explain) takes the sync resolution."""
    agent = await _key_lookup(select_related).afirst(api_key.organization_id, tenant, slug)
    if agent is None:
        from fruxon import adb

        await adb.run(resolve_tenant, slug=tenant, user=None, api_key=api_key)  # the org's 404 first
        raise _missing_agent(slug)
    _check_key(api_key, agent)
    return agent.organization, agent
