"""No escalation: what an actor holds, and the check that it gives no more than that.

A key, a membership, an invitation or a per-agent grant is a bundle of rights:
scopes, the agents they reach (``None`` = every agent) and an end (``None`` =
never). An actor may create, rotate or hand out such a bundle only when it is
within the actor's own:

- an API key holds its scopes, its agent list and its expiry;
- a person holds what their org role amounts to (``orgs.roles.ROLE_SCOPES``) on
  every agent, with no end; owners (and superusers) hold everything;
- the system (Celery, beat, fixtures) holds everything.

A refusal is ``Forbidden`` (403 ``forbidden``) naming what is missing, raised
before anything is written.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from fruxon.errors import Forbidden

from .actor import Actor
from .roles import ALL_SCOPES, OWNER, RANK, ROLE_SCOPES


@dataclass(frozen=True)
class Rights:
    scopes: frozenset[str]
    agents: frozenset[str] | None = None  # None: every agent
    expires_at: datetime | None = None  # None: never


EVERYTHING = Rights(frozenset(ALL_SCOPES))
NOTHING = Rights(frozenset(), frozenset())


def org_role_of(actor: Actor, organization) -> str | None:
    """The person's role in ``organization`` (superusers count as owners); None for keys and strangers."""
    user = actor.user_or_none
    if user is None:
        return None
    if getattr(user, "is_superuser", False):
        return OWNER
    from .models import Membership

    return (Membership.objects.filter(organization=organization, user_id=user.pk)
            .values_list("role", flat=True).first())


def held_by(actor: Actor, organization) -> Rights:
    """Every right ``actor`` holds in ``organization``."""
    if actor.system:
        return EVERYTHING
    key = actor.api_key
    if key is not None:
        if key.organization_id != organization.pk:
            return NOTHING
        return Rights(frozenset(key.scopes), frozenset(key.agents) if key.agents else None, key.expires_at)
    role = org_role_of(actor, organization)
    return Rights(ROLE_SCOPES[role]) if role else NOTHING


def role_rights(role: str, agent_slug: str | None = None) -> Rights:
    """What ``role`` amounts to: on every agent (an org role), or on one agent (a grant)."""
    return Rights(ROLE_SCOPES[role], None if agent_slug is None else frozenset({agent_slug}))


def shortfall(held: Rights, wanted: Rights) -> dict:
    """What ``wanted`` has beyond ``held`` (empty when it is within)."""
    missing: dict = {}
    scopes = sorted(wanted.scopes - held.scopes)
    if scopes:
        missing["missingScopes"] = scopes
    if held.agents is not None:
        if wanted.agents is None:
            missing["agents"] = {"held": sorted(held.agents), "wanted": "all"}
        elif not wanted.agents or not wanted.agents <= held.agents:
            missing["agents"] = {"held": sorted(held.agents), "wanted": sorted(wanted.agents)}
    if held.expires_at is not None and (wanted.expires_at is None or wanted.expires_at > held.expires_at):
        missing["expiresAt"] = {"held": held.expires_at.isoformat(),
                                "wanted": wanted.expires_at.isoformat() if wanted.expires_at else None}
    return missing


def require_within(held: Rights, wanted: Rights, *, what: str) -> None:
    """403 unless ``wanted`` is within ``held``; ``what`` names the thing being given, for the message."""
    missing = shortfall(held, wanted)
    if not missing:
        return
    reasons = []
    if "missingScopes" in missing:
        reasons.append("the scopes " + ", ".join(f"'{s}'" for s in missing["missingScopes"]))
    if "agents" in missing:
        wanted_agents = missing["agents"]["wanted"]
        reasons.append("agents beyond " + ", ".join(missing["agents"]["held"])
                       + (" (every agent)" if wanted_agents == "all" else ""))
    if "expiresAt" in missing:
        reasons.append(f"an expiry later than {missing['expiresAt']['held']}")
    raise Forbidden(f"You cannot give {what} with rights you do not hold: {'; '.join(reasons)}.", details=missing)


def require_role_within(actor: Actor, organization, role: str, *, what: str, agent_slug: str | None = None,
                        person_role: str | None = None) -> None:
    """403 unless ``actor`` may give ``role`` (an org role, or a grant on ``agent_slug``).

    A person compares roles: their own (``person_role`` when the caller knows it, e.g. the
    effective role on an agent; else their org role) must be at least ``role``. A key must hold
    the role's scopes on the agents it reaches. The system may give anything.
    """
    if actor.system:
        return
    if actor.api_key is None:
        own = person_role if person_role is not None else org_role_of(actor, organization)
        if own == OWNER or (own is not None and RANK[own] >= RANK[role]):
            return
        raise Forbidden(f"You are {own or 'not a member'}; you cannot give the {role} role, which is above your own.",
                        details={"role": own, "wanted": role})
    require_within(held_by(actor, organization), role_rights(role, agent_slug), what=what)
