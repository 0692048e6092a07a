"""Per-agent collaborator roles, stored as django-guardian object permissions.

One grant per (member, agent): ``viewer``, ``editor`` or ``admin``, stored as
the ``agents.agent_<role>`` permission on that agent. Guardian is used only for
these point checks, never to filter lists (DESIGN's stack table). Only org
members can hold a grant; removing a member does not leave grants that matter
(the role check requires membership first).

No one grants more than they hold on the agent (``orgs.rights``): a person's
role there (their grant, else their org role; org owners hold everything) must
be at least the role given, and at least the role a replaced or removed grant
held; a key must allow the agent and hold every scope of those roles. Refusals
are 403 ``forbidden`` before anything is written.
"""
from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db import transaction
from guardian.shortcuts import assign_perm, get_users_with_perms, remove_perm
from guardian.models import UserObjectPermission

from fruxon.errors import InvalidRequest, NotFound
from orgs.actor import Actor
from orgs.models import Membership
from orgs.rights import org_role_of, require_role_within
from orgs.roles import ADMIN, EDITOR, OWNER, RANK, VIEWER
from orgs.services import audit

from .models import Agent

GRANT_ROLES = (VIEWER, EDITOR, ADMIN)
_CODENAMES = {role: f"agent_{role}" for role in GRANT_ROLES}
_ROLE_OF = {codename: role for role, codename in _CODENAMES.items()}


def grant_role(*, user, agent: Agent) -> str | None:
    """The user's grant on this agent, or None. One indexed query."""
    if not getattr(user, "pk", None):
        return None
    codenames = UserObjectPermission.objects.filter(
        user_id=user.pk, object_pk=str(agent.pk), content_type__app_label="agents",
        content_type__model="agent", permission__codename__in=list(_ROLE_OF),
    ).values_list("permission__codename", flat=True)
    roles = [_ROLE_OF[c] for c in codenames]
    return max(roles, key=RANK.__getitem__) if roles else None


def list_grants(*, agent: Agent) -> list[tuple[object, str]]:
    users = get_users_with_perms(agent, attach_perms=True, with_group_users=False, only_with_perms_in=list(_ROLE_OF))
    out = []
    for user, perms in users.items():
        roles = [_ROLE_OF[p] for p in perms if p in _ROLE_OF]
        if roles:
            out.append((user, max(roles, key=RANK.__getitem__)))
    return sorted(out, key=lambda item: item[0].username)


def _member(agent: Agent, username: str):
    user = get_user_model().objects.filter(username=username).first()
    if user is None or not Membership.objects.filter(organization_id=agent.organization_id, user=user).exists():
        return None
    return user


def get_grant(*, agent: Agent, username: str) -> tuple[object, str]:
    user = _member(agent, username)
    role = grant_role(user=user, agent=agent) if user else None
    if role is None:
        raise NotFound(f"'{username}' has no grant on agent '{agent.slug}'.")
    return user, role


def _may_give(actor: Actor, agent: Agent, role: str) -> None:
    """403 unless ``actor`` holds ``role``'s rights on ``agent``."""
    person_role = None
    if actor.api_key is None and not actor.system:
        org_role = org_role_of(actor, agent.organization)
        person_role = OWNER if org_role == OWNER else (grant_role(user=actor.user_or_none, agent=agent) or org_role)
    require_role_within(actor, agent.organization, role, what=f"the {role} grant on '{agent.slug}'",
                        agent_slug=agent.slug, person_role=person_role)


def set_grant(*, actor: Actor, agent: Agent, username: str, role: str) -> tuple[object, str, bool]:
    """Give ``username`` (a member of the agent's org) ``role`` on the agent. Returns (user, role, created)."""
    user = _member(agent, username)
    if user is None:
        raise InvalidRequest(f"'{username}' is not a member of this organization.", code="not_a_member",
                             details={"fields": {"user": ["Not a member of this organization."]}})
    _may_give(actor, agent, role)
    with transaction.atomic():
        before = grant_role(user=user, agent=agent)
        if before is not None:
            _may_give(actor, agent, before)  # replacing a grant takes away what it held
        for codename in _ROLE_OF:
            remove_perm(f"agents.{codename}", user, agent)
        assign_perm(f"agents.{_CODENAMES[role]}", user, agent)
        audit.record(organization=agent.organization, actor=actor, action="grant.set", target_type="agent",
                     target_id=agent.slug, data={"user": username, "before": before, "after": role})
    return user, role, before is None


def remove_grant(*, actor: Actor, agent: Agent, username: str) -> None:
    user, role = get_grant(agent=agent, username=username)
    _may_give(actor, agent, role)
    with transaction.atomic():
        for codename in _ROLE_OF:
            remove_perm(f"agents.{codename}", user, agent)
        audit.record(organization=agent.organization, actor=actor, action="grant.removed", target_type="agent",
                     target_id=agent.slug, data={"user": username, "before": role})
