"""Deploy history, scheduled rollouts, shadow mode and deploy policies.

``Agent.deployed_revision`` is the one pointer a deploy changes (DESIGN rule
5); every change of it writes a ``Deployment`` row in the same transaction.
"""
from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from orgs.models import TenantModel

DEPLOYMENT_KINDS = ["deploy", "rollback", "scheduled", "import"]
SCHEDULE_STATUSES = ["pending", "done", "cancelled", "failed"]


class Deployment(TenantModel):
    agent = models.ForeignKey("agents.Agent", on_delete=models.CASCADE, related_name="deployments")
    from_revision = models.ForeignKey("agents.Revision", null=True, blank=True, on_delete=models.RESTRICT, related_name="+")
    to_revision = models.ForeignKey("agents.Revision", on_delete=models.RESTRICT, related_name="+")
    kind = models.CharField(max_length=10, choices=[(k, k) for k in DEPLOYMENT_KINDS])
    actor_user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    actor_label = models.CharField(max_length=200)
    reason = models.CharField(max_length=1000, blank=True, default="")
    forced = models.BooleanField(default=False)
    checks = models.JSONField(default=list, blank=True, help_text="The readiness checklist at deploy time.")
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["agent", "-at"], name="deployment_agent_at")]

    def __str__(self) -> str:
        return f"{self.agent} {self.kind} {self.from_revision_id} -> {self.to_revision_id}"


class ScheduledDeployment(TenantModel):
    agent = models.ForeignKey("agents.Agent", on_delete=models.CASCADE, related_name="scheduled_deployments")
    revision = models.ForeignKey("agents.Revision", on_delete=models.RESTRICT, related_name="+")
    run_at = models.DateTimeField(db_index=True)
    reason = models.CharField(max_length=1000, blank=True, default="")
    status = models.CharField(max_length=10, choices=[(s, s) for s in SCHEDULE_STATUSES], default="pending")
    failure_reason = models.CharField(max_length=2000, blank=True, default="")
    failure_code = models.CharField(max_length=50, blank=True, default="")
    deployment = models.ForeignKey(Deployment, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_by_key = models.ForeignKey("orgs.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
                                       help_text="The API key that scheduled it (its actor at apply time).")
    created_by_label = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-run_at", "-id"]
        indexes = [models.Index(fields=["status", "run_at"], name="schedule_due")]

    def __str__(self) -> str:
        return f"{self.agent} -> {self.revision_id} at {self.run_at:%Y-%m-%d %H:%M}"


class ShadowConfig(TenantModel):
    """Run ``revision`` on a sample of live inputs, after the live response is served."""

    agent = models.OneToOneField("agents.Agent", on_delete=models.CASCADE, related_name="shadow_config")
    revision = models.ForeignKey("agents.Revision", on_delete=models.RESTRICT, related_name="+")
    sample_rate = models.FloatField(validators=[MinValueValidator(0.0), MaxValueValidator(1.0)])
    updated_by_label = models.CharField(max_length=200, blank=True, default="")
    updated_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"shadow {self.agent} -> {self.revision_id} @ {self.sample_rate:.0%}"


class ShadowResult(TenantModel):
    agent = models.ForeignKey("agents.Agent", on_delete=models.CASCADE, related_name="shadow_results")
    candidate_revision = models.ForeignKey("agents.Revision", on_delete=models.CASCADE, related_name="+")
    live_run = models.OneToOneField("monitoring.Run", on_delete=models.CASCADE, related_name="shadow_result")
    shadow_run = models.ForeignKey("monitoring.Run", null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    outputs_equal = models.BooleanField(default=False)
    similarity = models.FloatField(default=0.0, help_text="difflib ratio of the two outputs as text, 0..1")
    cost_delta_usd = models.DecimalField(max_digits=18, decimal_places=8, default=Decimal("0"))
    latency_delta_ms = models.IntegerField(default=0)
    error = models.CharField(max_length=1000, blank=True, default="",
                             help_text="Why the candidate could not run on this input (no shadow run then).")
    metric_scores = models.JSONField(
        default=list, blank=True,
        help_text="The gating dataset's metrics scoring the shadow output with the live output as the expected value: "
                  '[{"type", "metric", "score", "passed", "reason"}]; empty when the agent has no gating metrics.')
    agreement = models.FloatField(null=True, blank=True,
                                  help_text="Mean of the metric scores, 0..1; null when no metric scored the pair.")
    agreed = models.BooleanField(
        default=False,
        help_text="The pair agrees: every metric passed and the mean reaches the dataset's passThreshold; "
                  "without gating metrics, the outputs are equal.")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["agent", "-created_at"], name="shadowresult_agent")]


class ShadowClaim(TenantModel):
    """One shadow attempt per live run, claimed (and committed) before the candidate runs.

    ``run_shadow`` is ``acks_late``: a redelivered or duplicated task finds the
    claim and does nothing, so the candidate never runs (nor is charged) twice
    for one live run. A worker killed mid-shadow loses that one sample.
    """

    live_run = models.OneToOneField("monitoring.Run", on_delete=models.CASCADE, related_name="+")
    candidate_revision = models.ForeignKey("agents.Revision", on_delete=models.CASCADE, related_name="+")
    claimed_at = models.DateTimeField(default=timezone.now)


class DeployPolicy(TenantModel):
    """Per-agent deploy settings: automatic rollback of a degraded deploy, and where to alert about one."""

    agent = models.OneToOneField("agents.Agent", on_delete=models.CASCADE, related_name="deploy_policy")
    auto_rollback = models.BooleanField(default=False)
    # A degraded deploy raises a ``deployment.degraded`` alert (monitoring.alerts) to these channels.
    alert_webhook = models.URLField(blank=True, default="", max_length=2000)
    alert_emails = models.JSONField(default=list, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)
