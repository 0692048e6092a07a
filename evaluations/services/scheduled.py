"""Scheduled re-evaluation of the deployed revision, and the score-drop alert.

"Keep a deployed baseline": every ``every_hours`` the deployed revision is
evaluated on the agent's gating dataset. When such an evaluation completes
below the previous completed *scheduled* evaluation of the agent on the same
dataset, an alert goes out (webhook signed with HMAC, and email) through
``monitoring.alerts``. Other evaluations on that dataset in between (candidate
revisions, manual runs, baselines started by a compare) are not the series
being watched: they neither raise a false alarm nor hide a real drop. Due rows
are claimed like scheduled deployments: skip-locked select plus a
compare-and-set on ``next_run_at``.
"""
from __future__ import annotations

import logging
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from agents.models import Agent
from fruxon import egress
from fruxon.errors import InvalidRequest
from monitoring.alerts import raise_alert
from orgs.actor import SYSTEM, Actor
from orgs.services import audit

from ..models import EvaluationRun, EvaluationSchedule

logger = logging.getLogger(__name__)


def set_schedule(*, actor: Actor, agent: Agent, every_hours: int, enabled: bool = True, alert_webhook: str = "",
                 alert_emails: list | None = None) -> EvaluationSchedule:
    if enabled and agent.gating_dataset_id is None:
        raise InvalidRequest("Set the agent's gatingDataset first: the schedule evaluates on it.",
                             code="no_gating_dataset")
    egress.check_url(alert_webhook, "alertWebhook")  # 400 egress_denied: see fruxon.egress
    with transaction.atomic():
        schedule, _ = EvaluationSchedule.objects.update_or_create(
            agent=agent, defaults={
                "organization_id": agent.organization_id, "every_hours": every_hours, "enabled": enabled,
                "next_run_at": timezone.now() + timedelta(hours=every_hours), "alert_webhook": alert_webhook,
                "alert_emails": alert_emails or [], "updated_at": timezone.now()})
        audit.record(organization=agent.organization, actor=actor, action="evaluation.schedule_set", target_type="agent",
                     target_id=agent.slug, data={"everyHours": every_hours, "enabled": enabled})
    return schedule


def start_due(*, now=None, limit: int = 100) -> list[str]:
    from .runs import start

    started = []
    for _ in range(limit):
        with transaction.atomic():
            now_ = now or timezone.now()
            schedule = (EvaluationSchedule.objects.select_for_update(skip_locked=True).select_related("agent")
                        .filter(enabled=True, next_run_at__lte=now_).order_by("next_run_at").first())
            if schedule is None:
                break
            upcoming = now_ + timedelta(hours=schedule.every_hours)
            if not EvaluationSchedule.objects.filter(pk=schedule.pk, next_run_at=schedule.next_run_at).update(
                    next_run_at=upcoming):
                continue
            agent = schedule.agent
            if agent.deployed_revision_id is None or agent.gating_dataset_id is None:
                continue
            try:
                evaluation = start(actor=SYSTEM, agent=agent, revision_id=agent.deployed_revision_id,
                                   dataset=agent.gating_dataset, trigger="schedule")
            except InvalidRequest as exc:  # e.g. the gating dataset has no cases yet: try again next period
                logger.warning("scheduled evaluation of %s skipped: %s", agent.slug, exc.message)
                continue
            EvaluationSchedule.objects.filter(pk=schedule.pk).update(last_evaluation=evaluation)
            started.append(evaluation.id)
    return started


def after_completion(evaluation_id: str) -> None:
    """Alert when a scheduled evaluation scores below the previous completed scheduled one on its dataset."""
    evaluation = EvaluationRun.objects.select_related("agent", "organization", "dataset").filter(pk=evaluation_id).first()
    if evaluation is None or evaluation.trigger != "schedule" or evaluation.overall_score is None:
        return
    schedule = EvaluationSchedule.objects.filter(agent=evaluation.agent).first()
    previous = (EvaluationRun.objects.filter(agent=evaluation.agent, dataset=evaluation.dataset, status="completed",
                                             trigger="schedule", finished_at__lt=evaluation.finished_at)
                .exclude(pk=evaluation.pk).order_by("-finished_at").first())
    if schedule is None or previous is None or previous.overall_score is None:
        return
    if evaluation.overall_score >= previous.overall_score:
        return
    raise_alert(
        organization=evaluation.organization, kind="evaluation.score_dropped",
        subject=f"{evaluation.agent.slug}: evaluation score dropped to {evaluation.overall_score:.3f}",
        payload={"agent": evaluation.agent.slug, "revisionId": evaluation.revision_id,
                 "dataset": evaluation.dataset.slug, "evaluationId": evaluation.id, "score": evaluation.overall_score,
                 "previousEvaluationId": previous.id, "previousScore": previous.overall_score},
        webhook=schedule.alert_webhook, emails=schedule.alert_emails, dedupe_key=f"eval-drop:{evaluation.id}",
    )
