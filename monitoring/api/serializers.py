"""Shapes of the monitoring API: runs and spans, conversations, metrics, and the query filters.

Query-parameter serializers (``RunFilter``, ``ConversationFilter``,
``MetricsQuery``) validate ``request.query_params``: a bad value answers 400
``invalid_request`` naming the parameter in ``details.fields``. They are also
what ``extend_schema(parameters=...)`` documents.
"""
from __future__ import annotations

from django.utils import timezone
from rest_framework import serializers

from fruxon.api.serializers import StrictSerializer

from ..metrics import BUCKETS, MAX_WINDOW
from ..models import Conversation, Run, Span
from .enums import RunSourceField, RunStatusField


class UsageOut(serializers.Serializer):
    inputTokens = serializers.IntegerField(source="input_tokens")
    cachedInputTokens = serializers.IntegerField(source="cached_input_tokens")
    outputTokens = serializers.IntegerField(source="output_tokens")
    reasoningTokens = serializers.IntegerField(source="reasoning_tokens")
    costUsd = serializers.DecimalField(source="cost_usd", max_digits=18, decimal_places=8, coerce_to_string=True)


class SpanRowSerializer(serializers.ModelSerializer):
    """One span on its own (GET /runs/{id}/spans): ``parentId`` links it into the tree."""

    parentId = serializers.CharField(source="parent_id")
    startedAt = serializers.DateTimeField(source="started_at")
    latencyMs = serializers.IntegerField(source="latency_ms")
    usage = UsageOut(source="*")

    class Meta:
        model = Span
        fields = ["id", "parentId", "kind", "name", "status", "startedAt", "latencyMs", "provider", "model",
                  "input", "output", "error", "attributes", "usage"]


class SpanSerializer(SpanRowSerializer):
    """A span in the run detail's tree, with its (shown) children."""

    children = serializers.SerializerMethodField()

    class Meta(SpanRowSerializer.Meta):
        fields = SpanRowSerializer.Meta.fields + ["children"]

    def get_children(self, span) -> list[dict]:
        kids = self.context["children"].get(span.id, [])
        return SpanSerializer(kids, many=True, context=self.context).data


class RunSerializer(serializers.ModelSerializer):
    agent = serializers.CharField(source="agent.slug")
    source = RunSourceField()
    status = RunStatusField()
    revisionId = serializers.CharField(source="revision_id")
    conversationId = serializers.CharField(source="conversation.key", default=None, allow_null=True)
    usage = UsageOut(source="*")
    latencyMs = serializers.IntegerField(source="latency_ms")
    providerMs = serializers.IntegerField(source="provider_ms")
    createdAt = serializers.DateTimeField(source="created_at")
    usageOverReservation = serializers.BooleanField(
        source="usage_over_reservation",
        help_text="true when a model call reported more usage than the upper bound its budget reservation was "
                  "made for; the cost is recorded (and counted against the budget) as the provider reported it")

    class Meta:
        model = Run
        fields = ["id", "agent", "revisionId", "source", "status", "input", "output", "error", "usage", "latencyMs",
                  "providerMs", "conversationId", "createdAt", "pinned", "usageOverReservation"]


class RunDetailSerializer(RunSerializer):
    """A run whose ``shown_spans`` and ``more_spans`` the view has set (``monitoring.spans.detail_spans``)."""

    spans = serializers.SerializerMethodField(
        help_text="the span tree (steps, llm calls, tools, sub-agents) of the run's first spans in start order, at "
                  "most FRUXON_RUN_DETAIL_SPANS (200 by default); every shown span's parent is shown")
    spansTruncated = serializers.BooleanField(
        source="more_spans", help_text="true when the run has more spans than the tree shows; "
                                       "GET /runs/{id}/spans pages through all of them")

    class Meta(RunSerializer.Meta):
        fields = RunSerializer.Meta.fields + ["spans", "spansTruncated"]

    def get_spans(self, run) -> list[dict]:
        spans = run.shown_spans
        ids = {span.id for span in spans}
        children: dict[str, list] = {}
        roots = []
        for span in spans:
            if span.parent_id and span.parent_id in ids:
                children.setdefault(span.parent_id, []).append(span)
            else:
                roots.append(span)
        return SpanSerializer(roots, many=True, context={"children": children}).data


# --- runs: filters and pin --------------------------------------------------------------------------
def query_data(request) -> dict:
    """The query string as a dict of single values, empty values dropped (``?agent=`` means no filter)."""
    return {key: value for key, value in request.query_params.items() if value != ""}


class _Window(serializers.Serializer):
    since = serializers.DateTimeField(required=False, help_text="ISO 8601 date-time, inclusive (UTC if no offset)")
    until = serializers.DateTimeField(required=False, help_text="ISO 8601 date-time, exclusive (UTC if no offset)")

    def validate(self, attrs):
        if attrs.get("since") and attrs.get("until") and attrs["since"] >= attrs["until"]:
            raise serializers.ValidationError({"until": ["Must be later than since."]})
        return attrs


class RunFilter(_Window):
    agent = serializers.CharField(required=False, help_text="agent slug")
    revisionId = serializers.CharField(required=False, help_text="revision id, e.g. rev_3k9f2a")
    status = RunStatusField(required=False)
    source = RunSourceField(required=False)
    conversationId = serializers.CharField(required=False, help_text="the conversation's id (its key)")


class PinRequest(StrictSerializer):
    """Optional body of :pin; without it the run is pinned."""

    pinned = serializers.BooleanField(default=True, help_text="true (the default) pins the run; false unpins it")


# --- conversations ------------------------------------------------------------------------------------
class ConversationFilter(serializers.Serializer):
    agent = serializers.CharField(required=False, help_text="agent slug")


class ConversationSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="key", help_text="the conversationId clients pass to :execute")
    agent = serializers.CharField(source="agent.slug")
    turnCount = serializers.IntegerField(source="turns", help_text="turns recorded, including runs since purged")
    createdAt = serializers.DateTimeField(source="created_at")
    updatedAt = serializers.DateTimeField(source="updated_at")

    class Meta:
        model = Conversation
        fields = ["id", "agent", "turnCount", "createdAt", "updatedAt"]


class TurnSerializer(serializers.ModelSerializer):
    runId = serializers.CharField(source="id")
    status = RunStatusField()
    revisionId = serializers.CharField(source="revision_id")
    latencyMs = serializers.IntegerField(source="latency_ms")
    costUsd = serializers.DecimalField(source="cost_usd", max_digits=18, decimal_places=8, coerce_to_string=True)
    createdAt = serializers.DateTimeField(source="created_at")

    class Meta:
        model = Run
        fields = ["runId", "revisionId", "status", "input", "output", "error", "latencyMs", "costUsd", "createdAt"]


class ConversationDetailSerializer(ConversationSerializer):
    """A conversation whose ``listed_turns`` and ``more_turns`` the view has set."""

    turns = TurnSerializer(source="listed_turns", many=True, help_text="its runs, oldest first")
    truncated = serializers.BooleanField(source="more_turns", help_text="true when there are more turns than listed; "
                                                                        "GET /runs?conversationId= pages through all")

    class Meta(ConversationSerializer.Meta):
        fields = ConversationSerializer.Meta.fields + ["turns", "truncated"]


# --- metrics ------------------------------------------------------------------------------------------
class MetricsQuery(_Window):
    agent = serializers.CharField(required=False, help_text="agent slug")
    revisionId = serializers.CharField(required=False)
    source = RunSourceField(required=False, help_text="default: every source")
    bucket = serializers.ChoiceField(list(BUCKETS), default="hour", help_text="UTC hour (default) or day")

    def validate(self, attrs):
        attrs = super().validate(attrs)
        until = attrs.setdefault("until", timezone.now())
        since = attrs.setdefault("since", until - BUCKETS["day"])
        if since >= until:
            raise serializers.ValidationError({"since": ["Must be earlier than until (default: now)."]})
        limit = MAX_WINDOW[attrs["bucket"]]
        if until - since > limit:
            raise serializers.ValidationError(
                {"since": [f"The window is at most {limit.days} days with bucket={attrs['bucket']}."]})
        return attrs


class MetricsStats(serializers.Serializer):
    runs = serializers.IntegerField()
    errors = serializers.IntegerField(help_text="runs whose status is not ok")
    errorRate = serializers.FloatField(source="error_rate", allow_null=True, help_text="errors / runs; null without runs")
    p50LatencyMs = serializers.IntegerField(source="p50_latency_ms", allow_null=True,
                                            help_text="nearest-rank median latency; null without runs")
    p95LatencyMs = serializers.IntegerField(source="p95_latency_ms", allow_null=True,
                                            help_text="nearest-rank 95th percentile latency; null without runs")
    inputTokens = serializers.IntegerField(source="input_tokens")
    outputTokens = serializers.IntegerField(source="output_tokens")
    cachedInputTokens = serializers.IntegerField(source="cached_input_tokens")
    reasoningTokens = serializers.IntegerField(source="reasoning_tokens")
    costUsd = serializers.DecimalField(source="cost_usd", max_digits=24, decimal_places=8, coerce_to_string=True)


class MetricsBucket(MetricsStats):
    start = serializers.DateTimeField(help_text="the bucket's UTC start")


class MetricsResponse(serializers.Serializer):
    bucket = serializers.ChoiceField(list(BUCKETS))
    since = serializers.DateTimeField()
    until = serializers.DateTimeField()
    buckets = MetricsBucket(many=True, help_text="every bucket of the window, oldest first, empty ones included")
    totals = MetricsStats(help_text="the whole window")
