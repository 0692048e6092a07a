"""Request and response shapes for datasets, cases and evaluations."""
from __future__ import annotations

from rest_framework import serializers

from fruxon.api.serializers import StrictSerializer
from orgs.models import slug_validator

from ..models import Case, CaseResult, Dataset, EvaluationRun


class DatasetSerializer(serializers.ModelSerializer):
    passThreshold = serializers.FloatField(source="pass_threshold")
    caseCount = serializers.IntegerField(source="case_count", read_only=True, default=None, allow_null=True)
    createdAt = serializers.DateTimeField(source="created_at")
    updatedAt = serializers.DateTimeField(source="updated_at")

    class Meta:
        model = Dataset
        fields = ["slug", "name", "description", "metrics", "passThreshold", "caseCount", "createdAt", "updatedAt"]


class DatasetCreate(StrictSerializer):
    slug = serializers.CharField(max_length=50, validators=[slug_validator])
    name = serializers.CharField(max_length=200, required=False, allow_blank=True)
    description = serializers.CharField(max_length=5000, required=False, allow_blank=True)
    metrics = serializers.ListField(child=serializers.DictField(), required=False, max_length=50,
                                    help_text='e.g. [{"type": "exact"}, {"type": "contains", "field": "output"}, '
                                              '{"type": "regex", "pattern": "..."}, {"type": "jsonMatch"}, '
                                              '{"type": "numeric", "tolerance": 0.01}, {"type": "llmJudge", "rubric": "...", '
                                              '"model": {...}}, {"type": "costCeiling", "maxUsd": 0.01}, '
                                              '{"type": "latencyCeiling", "maxMs": 2000}]')
    passThreshold = serializers.FloatField(source="pass_threshold", min_value=0, max_value=1, required=False)


class DatasetPatch(DatasetCreate):
    slug = None

    def __init__(self, *args, **kwargs):
        kwargs["partial"] = True
        super().__init__(*args, **kwargs)


class CaseSerializer(serializers.ModelSerializer):
    sourceRunId = serializers.CharField(source="source_run_id")
    createdAt = serializers.DateTimeField(source="created_at")

    class Meta:
        model = Case
        fields = ["id", "input", "expected", "critical", "tags", "sourceRunId", "createdAt"]


class CaseWrite(StrictSerializer):
    input = serializers.DictField()
    expected = serializers.JSONField(required=False, allow_null=True)
    critical = serializers.BooleanField(required=False, default=False)
    tags = serializers.ListField(child=serializers.CharField(max_length=50), required=False, default=list, max_length=20)
    sourceRunId = serializers.CharField(source="source_run_id", required=False, allow_blank=True, max_length=24,
                                        help_text="the production run this case came from: a run id of this "
                                                  "organization (400 unknown_run otherwise); '' for none")


class CasePatch(CaseWrite):
    def __init__(self, *args, **kwargs):
        kwargs["partial"] = True
        super().__init__(*args, **kwargs)


class CasesBulk(StrictSerializer):
    cases = CaseWrite(many=True, help_text="add many cases at once; all or nothing")


class AddToDataset(StrictSerializer):
    dataset = serializers.CharField(max_length=50, help_text="dataset slug in this organization")
    expected = serializers.JSONField(required=False, allow_null=True)
    critical = serializers.BooleanField(required=False, default=True)
    tags = serializers.ListField(child=serializers.CharField(max_length=50), required=False, default=list, max_length=20)


class EvaluationCreate(StrictSerializer):
    agent = serializers.CharField(max_length=50)
    revisionId = serializers.CharField(max_length=20)
    dataset = serializers.CharField(max_length=50)


class CaseResultSerializer(serializers.ModelSerializer):
    caseId = serializers.IntegerField(source="case_id")
    runId = serializers.CharField(source="run_id", allow_null=True)
    runStatus = serializers.CharField(source="run_status")
    expected = serializers.JSONField(source="case.expected")
    input = serializers.JSONField(source="case.input")
    costUsd = serializers.DecimalField(source="cost_usd", max_digits=18, decimal_places=8,
                                       help_text="the agent's run (what costCeiling checks)")
    judgeCostUsd = serializers.DecimalField(source="judge_cost_usd", max_digits=18, decimal_places=8,
                                            help_text="the llmJudge model calls that graded it (spans of the same run)")
    latencyMs = serializers.IntegerField(source="latency_ms")

    class Meta:
        model = CaseResult
        fields = ["caseId", "runId", "critical", "input", "expected", "output", "runStatus", "scores", "score", "passed",
                  "costUsd", "judgeCostUsd", "latencyMs"]


class EvaluationSerializer(serializers.ModelSerializer):
    agent = serializers.CharField(source="agent.slug")
    revisionId = serializers.CharField(source="revision_id")
    dataset = serializers.CharField(source="dataset.slug")
    progress = serializers.SerializerMethodField()
    overallScore = serializers.FloatField(source="overall_score", allow_null=True)
    passRate = serializers.FloatField(source="pass_rate", allow_null=True)
    passThreshold = serializers.FloatField(source="pass_threshold")
    costUsd = serializers.DecimalField(source="cost_usd", max_digits=18, decimal_places=8,
                                       help_text="everything the evaluation spent: the agent's runs and the llmJudge "
                                                 "calls (aggregates has agentCostUsd and judgeCostUsd)")
    error = serializers.CharField(help_text="why a failed evaluation stopped (the agent's budget cap, no progress "
                                            "after repeated resumes); '' otherwise")
    createdBy = serializers.CharField(source="created_by_label")
    createdAt = serializers.DateTimeField(source="created_at")
    startedAt = serializers.DateTimeField(source="started_at", allow_null=True)
    finishedAt = serializers.DateTimeField(source="finished_at", allow_null=True)

    class Meta:
        model = EvaluationRun
        fields = ["id", "agent", "revisionId", "dataset", "status", "trigger", "progress", "metrics", "passThreshold",
                  "aggregates", "overallScore", "passRate", "costUsd", "error", "createdBy", "createdAt", "startedAt",
                  "finishedAt"]

    def get_progress(self, evaluation) -> dict:
        done = getattr(evaluation, "done_count", None)
        if done is None:
            done = evaluation.results.count()
        total = evaluation.total
        return {"completed": done, "total": total, "fraction": round(done / total, 4) if total else 1.0}


class EvaluationDetail(EvaluationSerializer):
    results = serializers.SerializerMethodField()

    class Meta(EvaluationSerializer.Meta):
        fields = EvaluationSerializer.Meta.fields + ["results"]

    def get_results(self, evaluation) -> list[dict]:
        rows = evaluation.results.select_related("case").order_by("case_id")
        return CaseResultSerializer(rows, many=True).data


class ScheduleSerializer(StrictSerializer):
    everyHours = serializers.IntegerField(min_value=1, max_value=24 * 30)
    enabled = serializers.BooleanField(required=False, default=True)
    alertWebhook = serializers.URLField(required=False, allow_blank=True, default="", max_length=2000)
    alertEmails = serializers.ListField(child=serializers.EmailField(), required=False, default=list, max_length=20)


class _MetricDelta(serializers.Serializer):
    meanScore = serializers.FloatField(allow_null=True)
    passRate = serializers.FloatField(allow_null=True)


class _Deltas(serializers.Serializer):
    overallScore = serializers.FloatField(allow_null=True, help_text="candidate minus baseline")
    passRate = serializers.FloatField(allow_null=True)
    metrics = serializers.DictField(child=_MetricDelta(), help_text="per metric name")


class _Regression(serializers.Serializer):
    caseId = serializers.IntegerField()
    critical = serializers.BooleanField()
    baselineScore = serializers.FloatField()
    score = serializers.FloatField()
    input = serializers.JSONField()
    expected = serializers.JSONField(allow_null=True)
    output = serializers.JSONField(allow_null=True)
    failedMetrics = serializers.ListField(child=serializers.DictField())


class _StartNeeds(serializers.Serializer):
    role = serializers.CharField(help_text="the role a person needs to start the missing baseline: editor")
    scope = serializers.CharField(help_text="the scope an API key needs: evaluations:write")


class CompareResponse(serializers.Serializer):
    """The answer of GET /evaluations/{id}:compare (documentation only)."""

    evaluationId = serializers.CharField()
    baselineId = serializers.CharField(allow_null=True, help_text="null when the deployed baseline is missing")
    tolerance = serializers.FloatField()
    verdict = serializers.ChoiceField(choices=["pass", "fail", "pending"],
                                      help_text="pending while either evaluation is unfinished or the baseline is "
                                                "missing")
    reasons = serializers.ListField(child=serializers.CharField(),
                                    help_text="why the verdict is fail or pending, as sentences")
    baselineStarted = serializers.BooleanField(help_text="this call started (or joined) the deployed baseline")
    baselineMissing = serializers.BooleanField(
        help_text="the deployed revision has no evaluation on this dataset and the caller may not start one; "
                  "an editor (or a key with evaluations:write) must start it")
    startNeeds = _StartNeeds(required=False, help_text="only when baselineMissing")
    deltas = _Deltas(required=False, help_text="only when both evaluations completed")
    score = serializers.FloatField(required=False)
    baselineScore = serializers.FloatField(required=False)
    regressions = _Regression(many=True, required=False,
                              help_text="cases that passed on the baseline and fail now, critical ones first")
    criticalRegressions = serializers.IntegerField(required=False)
    improvements = serializers.IntegerField(required=False)
