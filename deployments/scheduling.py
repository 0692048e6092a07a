"""Scheduled rollouts: rows that the beat tick claims and applies exactly once.

A due row is claimed with ``select_for_update(skip_locked=True)`` (a second
beat or worker skips it) AND a compare-and-set on ``status`` inside the same
transaction as the deploy, so even on a database without row locks only one
claimer wins. If the process dies mid-deploy, the transaction rolls back and
the row is still ``pending`` for the next tick. Readiness is re-checked at the
moment of the deploy; a refusal is recorded as ``failed`` with its reason.

The deploy runs as the schedule's creator, re-checked at that moment: a person
must still have the editor role on the agent, an API key must still be active,
hold ``revisions:deploy`` and be allowed this agent; otherwise the row fails
with "creator no longer allowed". An unexpected error while applying one row
rolls back that row's work and records it ``failed`` (``internal_error``, the
exception's class and a short message); the tick goes on with the next rows.
"""
from __future__ import annotations

import logging
import os
import re
import time

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from agents.models import Agent, Revision
from fruxon.errors import Conflict, FruxonError, InvalidRequest, NotFound
from orgs.actor import SYSTEM, Actor
from orgs.models import Membership
from orgs.roles import EDITOR, role_at_least
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
            created_by=actor.user_or_none, created_by_key=actor.api_key, created_by_label=actor.label,
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


DEPLOY_SCOPE = "revisions:deploy"
CREATOR_NOT_ALLOWED = "creator_not_allowed"
# Test hook (FRUXON_TESTING only): seconds to hold a scheduled deploy's transaction open after
# its writes, so a test can kill the worker while it holds the row (tests/test_scheduled_worker.py).
TEST_DELAY_ENV = "FRUXON_TEST_SCHEDULED_DEPLOY_DELAY"
_KEYS = re.compile(r"\b(fx_live_|fxu_)\S+")
_URL_USERINFO = re.compile(r"://[^/@\s]+@")


class _CreatorNotAllowed(FruxonError):
    code = CREATOR_NOT_ALLOWED


def _creator_actor(row: ScheduledDeployment, agent: Agent) -> Actor:
    """Who the deploy runs as: the creator, if they may still deploy this agent (else raise)."""
    def refuse(why: str):
        return _CreatorNotAllowed(f"creator no longer allowed: {why}")

    label = row.created_by_label or "the creator"
    if row.created_by_key_id:
        key = row.created_by_key
        if not key.is_active():
            raise refuse(f"{label} is revoked or expired")
        if DEPLOY_SCOPE not in key.scopes:
            raise refuse(f"{label} lacks the '{DEPLOY_SCOPE}' scope")
        if not key.allows_agent(agent.slug):
            raise refuse(f"{label} is limited to other agents than '{agent.slug}'")
        return Actor(api_key=key)
    if row.created_by_id:
        user = row.created_by
        org_role = (Membership.objects.filter(organization_id=agent.organization_id, user_id=user.pk)
                    .values_list("role", flat=True).first())
        if not user.is_active or org_role is None:
            raise refuse(f"{label} is no longer a member of this organization")
        from agents.scoping import effective_role

        role = effective_role(agent=agent, user=user, org_role=org_role)
        if not role_at_least(role, EDITOR):
            raise refuse(f"{label} is {role} on agent '{agent.slug}'; deploying needs {EDITOR}")
        return Actor(user=user)
    if row.created_by_label == SYSTEM.label:
        return SYSTEM
    raise refuse(f"{label} no longer exists")


def _short(exc: Exception) -> str:
    """``ClassName: first line of the message`` (200 characters, credentials blanked) for the row."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = _URL_USERINFO.sub("://[redacted]@", _KEYS.sub(r"\1[redacted]", text))[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _hold_for_tests() -> None:
    if settings.TESTING and (delay := os.environ.get(TEST_DELAY_ENV)):
        time.sleep(float(delay))


def _apply(row: ScheduledDeployment) -> None:
    """Deploy ``row`` as its creator (inside the caller's transaction and row lock)."""
    agent = Agent.objects.get(pk=row.agent_id)
    actor = _creator_actor(row, agent)
    row.deployment = services.deploy(actor=actor, agent=agent, revision_id=row.revision_id, reason=row.reason,
                                     kind="scheduled")
    _hold_for_tests()


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
                with transaction.atomic():  # a failure rolls back this row's work, and only it
                    _apply(row)
            except FruxonError as exc:
                row.deployment = None
                row.status, row.failure_code, row.failure_reason = "failed", exc.code, exc.message[:2000]
                logger.info("scheduled deployment %s failed: %s", row.pk, exc.message)
            except Exception as exc:  # noqa: BLE001 - one broken row must not stop the tick or block the rows after it
                row.deployment = None
                row.status, row.failure_code, row.failure_reason = "failed", "internal_error", _short(exc)
                logger.exception("scheduled deployment %s failed unexpectedly", row.pk)
            row.save(update_fields=["status", "finished_at", "deployment", "failure_code", "failure_reason"])
            handled.append(row.pk)
    return handled
