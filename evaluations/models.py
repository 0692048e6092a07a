"""Golden datasets, their cases, evaluation runs and per-case results.

One ``CaseResult`` per (evaluation, case), enforced by a unique constraint:
evaluation chunks can be retried or redelivered (a killed worker) and the
result set never gains duplicates.
"""
from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from fruxon.ids import new_id
from orgs.models import TenantModel, slug_validator

EVALUATION_STATUSES = ["queued", "running", "completed", "cancelled", "failed"]
EVALUATION_TRIGGERS = ["api", "schedule", "baseline", "admin"]


def evaluation_id() -> str:
    return new_id("eval", 12)


class Dataset(TenantModel):
    slug = models.CharField(max_length=50, validators=[slug_validator])
    name = models.CharField(max_length=200, blank=True, default="")
    description = models.TextField(blank=True, default="", max_length=5000)
    metrics = models.JSONField(default=list)
    pass_threshold = models.FloatField(default=1.0, validators=[MinValueValidator(0.0), MaxValueValidator(1.0)])
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["slug"]
        constraints = [models.UniqueConstraint(fields=["organization", "slug"], name="uniq_dataset_slug")]

    def __str__(self) -> str:
        return self.slug


class Case(TenantModel):
    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="cases")
    input = models.JSONField(default=dict)
    expected = models.JSONField(null=True, blank=True)
    critical = models.BooleanField(default=False)
    tags = models.JSONField(default=list, blank=True)
    source_run_id = models.CharField(max_length=24, blank=True, default="", help_text="The production run it came from.")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"case {self.pk} of {self.dataset_id}"


class EvaluationRun(TenantModel):
    id = models.CharField(primary_key=True, max_length=20, default=evaluation_id, editable=False)
    agent = models.ForeignKey("agents.Agent", on_delete=models.CASCADE, related_name="evaluations")
    revision = models.ForeignKey("agents.Revision", on_delete=models.CASCADE, related_name="evaluations")
    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="evaluations")
    status = models.CharField(max_length=10, choices=[(s, s) for s in EVALUATION_STATUSES], default="queued")
    trigger = models.CharField(max_length=10, choices=[(t, t) for t in EVALUATION_TRIGGERS], default="api")
    # What the evaluation used, frozen at start: later edits to the dataset do not change it.
    metrics = models.JSONField(default=list)
    pass_threshold = models.FloatField(default=1.0)
    case_ids = models.JSONField(default=list)
    total = models.PositiveIntegerField(default=0)
    aggregates = models.JSONField(default=dict, blank=True)
    overall_score = models.FloatField(null=True, blank=True)
    pass_rate = models.FloatField(null=True, blank=True)
    cost_usd = models.DecimalField(max_digits=18, decimal_places=8, default=Decimal("0"))
    error = models.CharField(max_length=2000, blank=True, default="")
    created_by_label = models.CharField(max_length=200, blank=True, default="")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # resume_stalled's bookkeeping: when it last sent this evaluation's missing work out again, and
    # how many times in a row it did so without a new result since (it fails the evaluation past a cap).
    resumed_at = models.DateTimeField(null=True, blank=True)
    resumes = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["organization", "-created_at"], name="eval_org_created"),
            models.Index(fields=["revision", "dataset", "status"], name="eval_rev_dataset_status"),
        ]

    def __str__(self) -> str:
        return self.id


class CaseResult(TenantModel):
    evaluation = models.ForeignKey(EvaluationRun, on_delete=models.CASCADE, related_name="results")
    case = models.ForeignKey(Case, on_delete=models.CASCADE, related_name="results")
    run = models.ForeignKey("monitoring.Run", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    output = models.JSONField(null=True, blank=True)
    run_status = models.CharField(max_length=16, default="ok")
    scores = models.JSONField(default=list)
    score = models.FloatField(default=0.0)
    passed = models.BooleanField(default=False)
    critical = models.BooleanField(default=False)
    # The agent's run (what costCeiling checks); the llmJudge model calls that graded it are apart.
    cost_usd = models.DecimalField(max_digits=18, decimal_places=8, default=Decimal("0"))
    judge_cost_usd = models.DecimalField(max_digits=18, decimal_places=8, default=Decimal("0"))
    latency_ms = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["case_id"]
        constraints = [models.UniqueConstraint(fields=["evaluation", "case"], name="uniq_result_per_case")]


class EvaluationSchedule(TenantModel):
    """Re-evaluate the deployed revision on the agent's gating dataset every N hours."""

    agent = models.OneToOneField("agents.Agent", on_delete=models.CASCADE, related_name="evaluation_schedule")
    every_hours = models.PositiveIntegerField(validators=[MinValueValidator(1), MaxValueValidator(24 * 30)])
    enabled = models.BooleanField(default=True)
    next_run_at = models.DateTimeField(db_index=True)
    alert_webhook = models.URLField(blank=True, default="", max_length=2000)
    alert_emails = models.JSONField(default=list, blank=True)
    last_evaluation = models.ForeignKey(EvaluationRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    updated_at = models.DateTimeField(default=timezone.now)
