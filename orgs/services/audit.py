"""The audit trail: one row per change that matters."""
from __future__ import annotations

from orgs.actor import Actor
from orgs.models import AuditEvent, Organization


def record(*, organization: Organization, actor: Actor, action: str, target_type: str, target_id, data: dict | None = None) -> AuditEvent:
    """Write one AuditEvent. Call inside the service's transaction so a rollback drops it too.

    ``data`` must never contain a secret value.
    """
    return AuditEvent.objects.create(
        organization=organization,
        actor_user=actor.user_or_none,
        actor_key=actor.api_key,
        actor_label=actor.label,
        action=action,
        target_type=target_type,
        target_id=str(target_id),
        data=data or {},
    )
