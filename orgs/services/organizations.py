"""Creating organizations and changing their settings."""
from __future__ import annotations

from django.db import IntegrityError, transaction

from fruxon.errors import InvalidRequest
from orgs.actor import Actor
from orgs.models import Membership, Organization
from orgs.roles import OWNER

from . import audit


def create_organization(*, actor: Actor, slug: str, name: str, retention_days: int = 30) -> Organization:
    """Create an org; the acting person becomes its first owner. Duplicate slug: 409."""
    try:
        with transaction.atomic():
            org = Organization.objects.create(slug=slug, name=name, retention_days=retention_days)
            Membership.objects.create(organization=org, user=actor.user, role=OWNER)
            audit.record(organization=org, actor=actor, action="org.created", target_type="organization",
                         target_id=org.slug, data={"name": name, "retentionDays": retention_days})
    except IntegrityError:
        raise InvalidRequest(f"An organization with slug '{slug}' already exists.", code="slug_taken",
                             details={"fields": {"slug": ["Already taken."]}}) from None
    return org


def update_settings(*, actor: Actor, organization: Organization, changes: dict) -> Organization:
    """Apply ``{"name": ..., "retention_days": ...}``; records the before/after."""
    with transaction.atomic():
        org = Organization.objects.select_for_update().get(pk=organization.pk)
        before = {k: getattr(org, k) for k in changes}
        for field, value in changes.items():
            setattr(org, field, value)
        org.save(update_fields=list(changes))
        audit.record(organization=org, actor=actor, action="org.settings_changed", target_type="organization",
                     target_id=org.slug, data={"before": before, "after": changes})
    return org


def rotate_webhook_secret(*, actor: Actor, organization: Organization, grace_seconds: int) -> tuple[Organization, str]:
    """Make a new alert-webhook signing secret ``whsec_...`` and return it (shown once; stored for signing).

    The replaced secret keeps signing as a second ``webhook-signature`` entry for ``grace_seconds``
    (0: it stops at once, e.g. after a leak), so receivers can move to the new one without missing
    a delivery. A rotation during a grace period drops the older secret. Audited without the secret.
    """
    from datetime import timedelta

    from django.utils import timezone

    from orgs.models import _webhook_secret

    with transaction.atomic():
        org = Organization.objects.select_for_update().get(pk=organization.pk)
        new = _webhook_secret()
        until = timezone.now() + timedelta(seconds=grace_seconds) if grace_seconds > 0 else None
        org.webhook_secret_previous = org.webhook_secret if until else ""
        org.webhook_secret_previous_until = until
        org.webhook_secret = new
        org.save(update_fields=["webhook_secret", "webhook_secret_previous", "webhook_secret_previous_until"])
        audit.record(organization=org, actor=actor, action="org.webhook_secret_rotated", target_type="organization",
                     target_id=org.slug, data={"previousSignsUntil": until.isoformat() if until else None})
    return org, new
