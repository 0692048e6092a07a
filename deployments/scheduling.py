"""Scheduled rollouts: rows that the beat tick claims and applies exactly once.

A due row is claimed with ``select_for_update(skip_locked=True)`` (a second
beat or worker skips it) AND a compare-and-set on ``status`` inside the same
transaction as the deploy, so even on a database without row locks only one
claimer wins. If the process dies mid-deploy, the transaction rolls back and
the row is still ``pending`` for the next tick. Readiness is re-checked at the
moment of the deploy; a refusal is recorded as ``failed`` with its reason.
"""
from __future__ import annotations

import logging

from django.db import transaction
from django.utils import timezone

from agents.models import Agent, Revision
from fruxon.errors import Conflict, FruxonError, InvalidRequest, NotFound
from orgs.actor import SYSTEM, Actor
from orgs.services import audit

from . import services
from .models import ScheduledDeployment

logger = logging.getLogger(__name__)


def schedule(*, actor: Actor, agent: Agent, revision_id: str, run_at, reason: str = "") -> ScheduledDeployment:
    if not Revision.objects.filter(agent=agent, pk=revision_id).exists():
        raise NotFound(f"Revision '{revision_id}' not found for agent '{agent.slug}'.")
    if run_at <= timezone.now():
        raise InvalidRequest("runAt must be in the future.", details={"fields": {"runAt": ["Must be in the future."]}})
    with transaction.atomic():
        row = ScheduledDeployment.objects.create(
            organization_id=agent.organization_id, agent=agent, revision_id=revision_id, run_at=run_at, reason=reason,
            created_by=actor.user_or_none, created_by_label=actor.label,
        )
        audit.record(organization=agent.organization, actor=actor, action="deployment.scheduled", target_type="agent",
                     target_id=agent.slug, data={"scheduleId": row.pk, "revisionId": revision_id,
                                                 "runAt": run_at.isoformat()})
    return row


def cancel(*, actor: Actor, agent: Agent, schedule_id: int) -> ScheduledDeployment:
    with transaction.atomic():
        row = ScheduledDeployment.objects.select_for_update().filter(agent=agent, pk=schedule_id).first()
        if row is None:
            raise NotFound("Scheduled deployment not found.")
        if row.status != "pending":
            raise Conflict(f"This scheduled deployment is {row.status}; only pending ones can be cancelled.")
        row.status, row.finished_at = "cancelled", timezone.now()
        row.save(update_fields=["status", "finished_at"])
        audit.record(organization=agent.organization, actor=actor, action="deployment.schedule_cancelled",
                     target_type="agent", target_id=agent.slug, data={"scheduleId": row.pk})
    return row


def _actor_for(row: ScheduledDeployment) -> Actor:
    return Actor(user=row.created_by) if row.created_by_id else SYSTEM


def apply_due(*, now=None, limit: int = 100) -> list[int]:
    """Apply every due pending row once; returns the ids this call applied or failed."""
    handled = []
    for _ in range(limit):
        with transaction.atomic():
            now_ = now or timezone.now()
            row = (ScheduledDeployment.objects.select_for_update(skip_locked=True)
                   .filter(status="pending", run_at__lte=now_).order_by("run_at", "id").first())
            if row is None:
                break
            # Compare-and-set: the claim that holds on any database.
            if not ScheduledDeployment.objects.filter(pk=row.pk, status="pending").update(status="done"):
                continue
            row.status, row.finished_at = "done", timezone.now()
            try:
                with transaction.atomic():
                    row.deployment = services.deploy(actor=_actor_for(row), agent=row.agent,
                                                     revision_id=row.revision_id, reason=row.reason, kind="scheduled")
            except FruxonError as exc:
                row.status, row.failure_code, row.failure_reason = "failed", exc.code, exc.message[:2000]
                logger.info("scheduled deployment %s failed: %s", row.pk, exc.message)
            row.save(update_fields=["status", "finished_at", "deployment", "failure_code", "failure_reason"])
            handled.append(row.pk)
    return handled
