"""Agent resolution inside an org, with per-agent grants (DESIGN rule 2).

Called only by ``fruxon.api.base`` for routes with ``{agent}``. The caller's
role on an agent is: owner for org owners (always full access); otherwise the
per-agent grant if there is one (it can raise or lower the org role); otherwise
the org role. API keys have no role; a key limited to some agents gets 403 on
the others.
"""
from __future__ import annotations

from fruxon.errors import Forbidden, NotFound
from orgs.models import ApiKey, Organization
from orgs.roles import OWNER

from .grants import grant_role
from .models import Agent


def get_agent(*, organization: Organization, slug: str) -> Agent:
    # shadow_config rides along (one join): the execute path needs it, and a
    # missing row costs nothing.
    agent = Agent.objects.select_related("shadow_config").filter(organization=organization, slug=slug).first()
    if agent is None:
        raise NotFound(f"Agent '{slug}' not found.")
    return agent


def effective_role(*, agent: Agent, user, org_role: str | None) -> str | None:
    if org_role == OWNER:
        return OWNER
    return grant_role(user=user, agent=agent) or org_role


def resolve_agent_for(*, organization: Organization, slug: str, user, org_role: str | None,
                      api_key: ApiKey | None) -> tuple[Agent, str | None]:
    agent = get_agent(organization=organization, slug=slug)
    if api_key is not None:
        if not api_key.allows_agent(agent.slug):
            raise Forbidden(f"This API key is limited to other agents than '{agent.slug}'.")
        return agent, None
    return agent, effective_role(agent=agent, user=user, org_role=org_role)
