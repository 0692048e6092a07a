"""Request and response shapes for deployments, schedules and shadow mode."""
from __future__ import annotations

from drf_spectacular.utils import extend_schema_field, extend_schema_serializer
from rest_framework import serializers

from fruxon.api.serializers import StrictSerializer

from ..models import Deployment, ScheduledDeployment, ShadowResult


class ReadinessItem(serializers.Serializer):
    check = serializers.ChoiceField(choices=["evaluation", "diff", "integrations", "secrets", "subAgents", "budget",
                                             "rollbackTarget"])
    status = serializers.ChoiceField(choices=["pass", "warn", "fail"])
    detail = serializers.CharField()
    data = serializers.DictField()


class ReadinessResponse(serializers.Serializer):
    revisionId = serializers.CharField()
    ready = serializers.BooleanField(help_text="false when a blocking check (integrations, secrets, subAgents) fails")
    checks = ReadinessItem(many=True)


class DeployRequest(StrictSerializer):
    revisionId = serializers.CharField(max_length=20)
    reason = serializers.CharField(max_length=1000, required=False, allow_blank=True, default="")
    force = serializers.BooleanField(required=False, default=False, help_text="owner only; needs a reason")


class RollbackRequest(StrictSerializer):
    revisionId = serializers.CharField(max_length=20, required=False, allow_null=True,
                                       help_text="default: the revision deployed before the current one")
    reason = serializers.CharField(max_length=1000, required=False, allow_blank=True, default="")


class DeploymentSerializer(serializers.ModelSerializer):
    fromRevisionId = serializers.CharField(source="from_revision_id", allow_null=True)
    toRevisionId = serializers.CharField(source="to_revision_id")
    actor = serializers.CharField(source="actor_label")

    class Meta:
        model = Deployment
        fields = ["id", "fromRevisionId", "toRevisionId", "kind", "actor", "reason", "forced", "at"]


class DeploymentDetail(DeploymentSerializer):
    class Meta(DeploymentSerializer.Meta):
        fields = DeploymentSerializer.Meta.fields + ["checks"]


class HealthSide(serializers.Serializer):
    runs = serializers.IntegerField()
    errors = serializers.IntegerField()
    errorRate = serializers.FloatField(allow_null=True)
    p95LatencyMs = serializers.FloatField(allow_null=True)
    costPerRunUsd = serializers.CharField(allow_null=True)


class HealthResponse(serializers.Serializer):
    deploymentId = serializers.IntegerField()
    revisionId = serializers.CharField()
    baselineRevisionId = serializers.CharField(allow_null=True)
    since = serializers.DateTimeField()
    until = serializers.DateTimeField(allow_null=True)
    current = HealthSide()
    baseline = HealthSide()
    verdict = serializers.ChoiceField(choices=["healthy", "degraded", "insufficient_data"])
    reasons = serializers.ListField(child=serializers.CharField())
    thresholds = serializers.DictField()


class ScheduleRequest(StrictSerializer):
    revisionId = serializers.CharField(max_length=20)
    runAt = serializers.DateTimeField()
    reason = serializers.CharField(max_length=1000, required=False, allow_blank=True, default="")


class ScheduledDeploymentSerializer(serializers.ModelSerializer):
    revisionId = serializers.CharField(source="revision_id")
    runAt = serializers.DateTimeField(source="run_at")
    failureReason = serializers.CharField(source="failure_reason")
    failureCode = serializers.CharField(source="failure_code")
    deploymentId = serializers.IntegerField(source="deployment_id", allow_null=True)
    createdBy = serializers.CharField(source="created_by_label")
    createdAt = serializers.DateTimeField(source="created_at")
    finishedAt = serializers.DateTimeField(source="finished_at", allow_null=True)

    class Meta:
        model = ScheduledDeployment
        fields = ["id", "revisionId", "runAt", "reason", "status", "failureCode", "failureReason", "deploymentId",
                  "createdBy", "createdAt", "finishedAt"]


class ShadowPut(StrictSerializer):
    revisionId = serializers.CharField(max_length=20)
    sampleRate = serializers.FloatField(min_value=0.0, max_value=1.0)


class ShadowConfigOut(serializers.Serializer):
    revisionId = serializers.CharField()
    sampleRate = serializers.FloatField()
    updatedBy = serializers.CharField()
    updatedAt = serializers.DateTimeField()


class ShadowMetricScore(serializers.Serializer):
    type = serializers.CharField(allow_null=True, help_text="the metric's type, e.g. exact, contains, llmJudge")
    metric = serializers.CharField(help_text="the metric's name (its config name, or its type)")
    score = serializers.FloatField(help_text="0..1")
    passed = serializers.BooleanField()
    reason = serializers.CharField()


class ShadowResultSerializer(serializers.ModelSerializer):
    liveRunId = serializers.CharField(source="live_run_id")
    shadowRunId = serializers.CharField(source="shadow_run_id", allow_null=True)
    candidateRevisionId = serializers.CharField(source="candidate_revision_id")
    liveOutput = serializers.JSONField(source="live_run.output")
    shadowOutput = serializers.JSONField(source="shadow_run.output", default=None, allow_null=True)
    shadowStatus = serializers.CharField(source="shadow_run.status", default=None, allow_null=True)
    outputsEqual = serializers.BooleanField(source="outputs_equal")
    metrics = ShadowMetricScore(source="metric_scores", many=True, help_text=(
        "the agent's gating-dataset metrics scoring the shadow output with the live output as the expected value; "
        "empty without gating metrics"))
    agreement = serializers.FloatField(allow_null=True, help_text="mean metric score 0..1; null when no metric scored")
    agreed = serializers.BooleanField(help_text=(
        "every metric passed and the mean reaches the dataset's passThreshold; without metrics, outputsEqual"))
    agreementBasis = serializers.SerializerMethodField()
    costDeltaUsd = serializers.DecimalField(source="cost_delta_usd", max_digits=18, decimal_places=8)
    latencyDeltaMs = serializers.IntegerField(source="latency_delta_ms")
    createdAt = serializers.DateTimeField(source="created_at")

    class Meta:
        model = ShadowResult
        fields = ["id", "liveRunId", "shadowRunId", "candidateRevisionId", "liveOutput", "shadowOutput", "shadowStatus",
                  "outputsEqual", "similarity", "metrics", "agreement", "agreed", "agreementBasis", "costDeltaUsd",
                  "latencyDeltaMs", "error", "createdAt"]

    @extend_schema_field(serializers.ChoiceField(choices=["metrics", "outputsEqual"]))
    def get_agreementBasis(self, result: ShadowResult) -> str:
        return "metrics" if result.agreement is not None else "outputsEqual"


class ShadowMetricSummary(serializers.Serializer):
    metric = serializers.CharField()
    type = serializers.CharField(allow_null=True)
    count = serializers.IntegerField()
    meanScore = serializers.FloatField()
    passRate = serializers.FloatField()


class ShadowSummary(serializers.Serializer):
    count = serializers.IntegerField()
    agreementRate = serializers.FloatField(allow_null=True, help_text="fraction of pairs that agreed (see agreed)")
    outputsEqualRate = serializers.FloatField(allow_null=True)
    metricScored = serializers.IntegerField(help_text="pairs scored by the gating dataset's metrics")
    meanAgreement = serializers.FloatField(allow_null=True, help_text="mean agreement of the metric-scored pairs")
    metrics = ShadowMetricSummary(many=True)
    meanSimilarity = serializers.FloatField(allow_null=True)
    shadowErrorRate = serializers.FloatField(allow_null=True)
    meanCostDeltaUsd = serializers.CharField(allow_null=True)
    meanLatencyDeltaMs = serializers.FloatField(allow_null=True)


@extend_schema_serializer(many=False)  # already the whole page: not to be wrapped in the paginator again
class ShadowResultsPage(serializers.Serializer):
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = ShadowResultSerializer(many=True)
    summary = ShadowSummary(help_text="over every result matching the filter, not only this page")


class DeployPolicySerializer(StrictSerializer):
    autoRollback = serializers.BooleanField(help_text="roll back automatically when the deploy's health is degraded")
    alertWebhook = serializers.URLField(required=False, allow_blank=True, default="", max_length=2000,
                                        help_text="receives a deployment.degraded alert (Standard Webhooks) when the "
                                                  "latest deploy is judged degraded; empty for none")
    alertEmails = serializers.ListField(child=serializers.EmailField(), default=list, max_length=20,
                                        help_text="receive the same alert by email")
