"""Response shapes for runs and spans."""
from __future__ import annotations

from rest_framework import serializers

from ..models import Run, Span


class UsageOut(serializers.Serializer):
    inputTokens = serializers.IntegerField(source="input_tokens")
    cachedInputTokens = serializers.IntegerField(source="cached_input_tokens")
    outputTokens = serializers.IntegerField(source="output_tokens")
    reasoningTokens = serializers.IntegerField(source="reasoning_tokens")
    costUsd = serializers.DecimalField(source="cost_usd", max_digits=18, decimal_places=8, coerce_to_string=True)


class SpanSerializer(serializers.ModelSerializer):
    parentId = serializers.CharField(source="parent_id")
    startedAt = serializers.DateTimeField(source="started_at")
    latencyMs = serializers.IntegerField(source="latency_ms")
    usage = UsageOut(source="*")
    children = serializers.SerializerMethodField()

    class Meta:
        model = Span
        fields = ["id", "parentId", "kind", "name", "status", "startedAt", "latencyMs", "provider", "model",
                  "input", "output", "error", "attributes", "usage", "children"]

    def get_children(self, span) -> list[dict]:
        kids = self.context["children"].get(span.id, [])
        return SpanSerializer(kids, many=True, context=self.context).data


class RunSerializer(serializers.ModelSerializer):
    agent = serializers.CharField(source="agent.slug")
    revisionId = serializers.CharField(source="revision_id")
    conversationId = serializers.CharField(source="conversation.key", default=None)
    usage = UsageOut(source="*")
    latencyMs = serializers.IntegerField(source="latency_ms")
    providerMs = serializers.IntegerField(source="provider_ms")
    createdAt = serializers.DateTimeField(source="created_at")

    class Meta:
        model = Run
        fields = ["id", "agent", "revisionId", "source", "status", "input", "output", "error", "usage", "latencyMs",
                  "providerMs", "conversationId", "createdAt", "pinned"]


class RunDetailSerializer(RunSerializer):
    spans = serializers.SerializerMethodField(help_text="the span tree: steps, llm calls, tools, sub-agents")

    class Meta(RunSerializer.Meta):
        fields = RunSerializer.Meta.fields + ["spans"]

    def get_spans(self, run) -> list[dict]:
        spans = list(run.spans.all())
        ids = {span.id for span in spans}
        children: dict[str, list] = {}
        roots = []
        for span in spans:
            if span.parent_id and span.parent_id in ids:
                children.setdefault(span.parent_id, []).append(span)
            else:
                roots.append(span)
        return SpanSerializer(roots, many=True, context={"children": children}).data
