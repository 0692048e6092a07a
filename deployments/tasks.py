"""Celery tasks for deployments: thin wrappers that take ids (DESIGN rule 9)."""
from __future__ import annotations

import logging

from celery import shared_task

logger = logging.getLogger(__name__)


@shared_task(name="deployments.tick_scheduled", acks_late=True, reject_on_worker_lost=True)
def tick_scheduled() -> list[int]:
    """Beat, every 15 s: apply due scheduled deployments (exactly once, see scheduling)."""
    from .scheduling import apply_due

    return apply_due()


@shared_task(name="deployments.auto_rollback", acks_late=True, reject_on_worker_lost=True)
def auto_rollback() -> list[int]:
    """Beat, every minute: roll back degraded deploys of agents whose policy asks for it."""
    from .autorollback import rollback_degraded

    return rollback_degraded()


@shared_task(name="deployments.run_shadow", acks_late=True, reject_on_worker_lost=True, queue="shadow")
def run_shadow(live_run_id: str, candidate_revision_id: str) -> int | None:
    from .shadow import run_shadow_for

    result = run_shadow_for(live_run_id, candidate_revision_id)
    return result.pk if result else None
