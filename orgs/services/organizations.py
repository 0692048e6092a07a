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
