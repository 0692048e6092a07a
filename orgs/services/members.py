"""Membership changes. The last owner can never be removed or demoted.

Owner rows are locked (``select_for_update``) before the count, so two owners
demoting each other concurrently cannot both succeed.

No one grants a role above their own (``orgs.rights``): adding, inviting or
re-roling a member to a role, and changing or removing a member who holds a
role, needs that role's rights (a person: the role or higher; a key: every
scope of the role and no agent limit). Refusals are 403 before anything is written.

An email with no account becomes an ``Invitation`` (re-inviting updates its
role); it is accepted, as a Membership with that role, when an account with that
email is created (``accept_invitations``, wired to the user model's post_save).
"""
from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from fruxon.errors import Conflict, InvalidRequest, NotFound
from orgs.actor import SYSTEM, Actor
from orgs.models import Invitation, Membership, Organization
from orgs.rights import require_role_within
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


def _may_give(actor: Actor, organization: Organization, role: str) -> None:
    require_role_within(actor, organization, role, what=f"the {role} role")


def _is_email(identifier: str) -> bool:
    try:
        validate_email(identifier)
    except ValidationError:
        return False
    return True


def add_member(*, actor: Actor, organization: Organization, user_identifier: str, role: str) -> Membership:
    """Make an existing user (username or email) a member with ``role``."""
    _may_give(actor, organization, role)
    user = find_user(user_identifier)
    with transaction.atomic():
        if Membership.objects.filter(organization=organization, user=user).exists():
            raise InvalidRequest(f"'{user.get_username()}' is already a member.", code="already_member",
                                 details={"fields": {"user": ["Already a member."]}})
        membership = Membership.objects.create(organization=organization, user=user, role=role)
        audit.record(organization=organization, actor=actor, action="member.added", target_type="membership",
                     target_id=membership.pk, data={"user": user.get_username(), "role": role})
    return membership


def add_or_invite(*, actor: Actor, organization: Organization, user_identifier: str,
                  role: str) -> Membership | Invitation:
    """``add_member`` for an existing username or email; an email with no account is invited instead.

    Returns the Membership, or the Invitation (created, or its role updated when the email was
    already invited). Unknown usernames stay 400 ``unknown_user``.
    """
    _may_give(actor, organization, role)
    try:
        return add_member(actor=actor, organization=organization, user_identifier=user_identifier, role=role)
    except InvalidRequest as exc:
        if exc.code != "unknown_user" or not _is_email(user_identifier):
            raise
    return invite(actor=actor, organization=organization, email=user_identifier, role=role)


def invite(*, actor: Actor, organization: Organization, email: str, role: str) -> Invitation:
    """Invite ``email`` with ``role``; re-inviting a pending email updates its role. Audited ``member.invited``."""
    _may_give(actor, organization, role)
    email = email.strip()
    with transaction.atomic():
        invitation = (Invitation.objects.select_for_update()
                      .filter(organization=organization, email__iexact=email).first())
        created = False
        if invitation is None:
            try:
                with transaction.atomic():
                    invitation = Invitation.objects.create(organization=organization, email=email, role=role,
                                                           invited_by=actor.user_or_none)
                created = True
            except IntegrityError:  # a concurrent invite of the same email won the insert: update that one
                invitation = Invitation.objects.select_for_update().get(organization=organization, email=email)
        before = None if created else invitation.role
        if not created:
            if invitation.accepted_at is None and invitation.role != role:
                # Lowering or raising a pending invitation changes what it will give: the old role counts too.
                _may_give(actor, organization, invitation.role)
            invitation.role, invitation.invited_by, invitation.accepted_at = role, actor.user_or_none, None
            invitation.save(update_fields=["role", "invited_by", "accepted_at"])
        audit.record(organization=organization, actor=actor, action="member.invited", target_type="invitation",
                     target_id=invitation.pk, data={"email": invitation.email, "role": role, "before": before})
    return invitation


def accept_invitations(user) -> list[Membership]:
    """Turn the pending invitations for ``user``'s email into memberships (audited, actor: system)."""
    email = (getattr(user, "email", "") or "").strip()
    if not email or not user.is_active:
        return []
    made = []
    with transaction.atomic():
        pending = (Invitation.objects.select_for_update().select_related("organization")
                   .filter(email__iexact=email, accepted_at__isnull=True))
        for invitation in pending:
            invitation.accepted_at = timezone.now()
            invitation.save(update_fields=["accepted_at"])
            membership, created = Membership.objects.get_or_create(
                organization=invitation.organization, user=user, defaults={"role": invitation.role})
            if created:
                made.append(membership)
                audit.record(organization=invitation.organization, actor=SYSTEM, action="member.added",
                             target_type="membership", target_id=membership.pk,
                             data={"user": user.get_username(), "role": invitation.role,
                                   "invitationId": invitation.pk})
    return made


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
        # Both what the member holds now and what they would hold must be within the actor's rights.
        _may_give(actor, organization, membership.role)
        _may_give(actor, organization, role)
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
        _may_give(actor, organization, membership.role)  # no one removes a member above their own rights
        if owners == [membership.pk]:
            raise Conflict("The last owner cannot be removed; make someone else owner first.", code="last_owner")
        username = membership.user.get_username()
        membership.delete()
        audit.record(organization=organization, actor=actor, action="member.removed", target_type="membership",
                     target_id=membership_id, data={"user": username})
