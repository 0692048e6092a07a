"""Membership changes. The last owner can never be removed or demoted.

Owner rows are locked (``select_for_update``) before the count, so two owners
demoting each other concurrently cannot both succeed.
"""
from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Q

from fruxon.errors import Conflict, InvalidRequest, NotFound
from orgs.actor import Actor
from orgs.models import Membership, Organization
from orgs.roles import OWNER

from . import audit


def find_user(identifier: str):
    """A user by username, or by email (case-insensitive). 400 when unknown or ambiguous."""
    User = get_user_model()
    matches = list(User.objects.filter(Q(username=identifier) | Q(email__iexact=identifier), is_active=True)[:2])
    if not matches:
        raise InvalidRequest(f"No active user '{identifier}'.", code="unknown_user", details={"fields": {"user": ["Unknown user."]}})
    if len(matches) > 1:
        matches = [u for u in matches if u.username == identifier] or matches
        if len(matches) > 1:
            raise InvalidRequest(f"'{identifier}' matches several users; use the username.", code="ambiguous_user")
    return matches[0]


def _lock_owners(organization: Organization) -> list[int]:
    return list(
        Membership.objects.select_for_update().filter(organization=organization, role=OWNER).values_list("pk", flat=True)
    )


def add_member(*, actor: Actor, organization: Organization, user_identifier: str, role: str) -> Membership:
    user = find_user(user_identifier)
    with transaction.atomic():
        if Membership.objects.filter(organization=organization, user=user).exists():
            raise InvalidRequest(f"'{user.get_username()}' is already a member.", code="already_member",
                                 details={"fields": {"user": ["Already a member."]}})
        membership = Membership.objects.create(organization=organization, user=user, role=role)
        audit.record(organization=organization, actor=actor, action="member.added", target_type="membership",
                     target_id=membership.pk, data={"user": user.get_username(), "role": role})
    return membership


def get_membership(*, organization: Organization, membership_id) -> Membership:
    membership = Membership.objects.filter(organization=organization, pk=membership_id).select_related("user").first()
    if membership is None:
        raise NotFound("Member not found.")
    return membership


def change_role(*, actor: Actor, organization: Organization, membership_id, role: str) -> Membership:
    with transaction.atomic():
        owners = _lock_owners(organization)
        membership = Membership.objects.select_for_update().filter(organization=organization, pk=membership_id).first()
        if membership is None:
            raise NotFound("Member not found.")
        if membership.role == OWNER and role != OWNER and owners == [membership.pk]:
            raise Conflict("The last owner cannot be demoted; make someone else owner first.", code="last_owner")
        before = membership.role
        membership.role = role
        membership.save(update_fields=["role"])
        audit.record(organization=organization, actor=actor, action="member.role_changed", target_type="membership",
                     target_id=membership.pk, data={"user": membership.user.get_username(), "before": before, "after": role})
    return membership


def remove_member(*, actor: Actor, organization: Organization, membership_id) -> None:
    with transaction.atomic():
        owners = _lock_owners(organization)
        membership = Membership.objects.select_for_update().filter(organization=organization, pk=membership_id).first()
        if membership is None:
            raise NotFound("Member not found.")
        if owners == [membership.pk]:
            raise Conflict("The last owner cannot be removed; make someone else owner first.", code="last_owner")
        username = membership.user.get_username()
        membership.delete()
        audit.record(organization=organization, actor=actor, action="member.removed", target_type="membership",
                     target_id=membership_id, data={"user": username})
