"""Request and response shapes for agents, revisions, grants, execute and prices."""
from __future__ import annotations

from rest_framework import serializers

from fruxon.api.serializers import StrictSerializer
from orgs.models import slug_validator

from ..grants import GRANT_ROLES
from ..models import Agent, Revision


class AgentSerializer(serializers.ModelSerializer):
    deployedRevisionId = serializers.CharField(source="deployed_revision_id", allow_null=True)
    shadow = serializers.SerializerMethodField(help_text="The shadow configuration, or null when shadow mode is off.")
    gatingDataset = serializers.SerializerMethodField(help_text="Slug of the dataset that gates deploys, or null.")
    gateTolerance = serializers.FloatField(source="gate_tolerance")
    createdAt = serializers.DateTimeField(source="created_at")
    updatedAt = serializers.DateTimeField(source="updated_at")

    class Meta:
        model = Agent
        fields = ["slug", "name", "description", "deployedRevisionId", "shadow", "gatingDataset", "gateTolerance",
                  "createdAt", "updatedAt"]

    def get_shadow(self, agent) -> dict | None:
        config = getattr(agent, "shadow_config", None)
        return None if config is None else {"revisionId": config.revision_id, "sampleRate": config.sample_rate}

    def get_gatingDataset(self, agent) -> str | None:
        dataset = getattr(agent, "gating_dataset", None)
        return getattr(dataset, "slug", None)


class AgentCreate(StrictSerializer):
    slug = serializers.CharField(max_length=50, validators=[slug_validator])
    name = serializers.CharField(max_length=200, required=False, allow_blank=True)
    description = serializers.CharField(max_length=5000, required=False, allow_blank=True)


class AgentPatch(StrictSerializer):
    name = serializers.CharField(max_length=200, required=False, allow_blank=True)
    description = serializers.CharField(max_length=5000, required=False, allow_blank=True)
    gatingDataset = serializers.CharField(max_length=50, required=False, allow_null=True,
                                          help_text="slug of a dataset in this org that gates deploys; null to remove")
    gateTolerance = serializers.FloatField(required=False, min_value=0.0, max_value=1.0,
                                           help_text="how far below the deployed score a candidate may be (default 0)")


class RevisionSerializer(serializers.ModelSerializer):
    agent = serializers.CharField(source="agent.slug")
    contentHash = serializers.CharField(source="content_hash")
    parentId = serializers.CharField(source="parent_id", allow_null=True)
    createdBy = serializers.CharField(source="created_by_label")
    createdAt = serializers.DateTimeField(source="created_at")
    deployed = serializers.SerializerMethodField()

    class Meta:
        model = Revision
        fields = ["id", "agent", "message", "contentHash", "parentId", "createdBy", "createdAt", "deployed", "origin"]

    def get_deployed(self, revision) -> bool:
        return revision.agent.deployed_revision_id == revision.id


class RevisionDetail(RevisionSerializer):
    class Meta(RevisionSerializer.Meta):
        fields = RevisionSerializer.Meta.fields + ["spec"]


class RevisionCreate(StrictSerializer):
    spec = serializers.JSONField(help_text="The workflow spec (DESIGN.md 'Engine'). Secrets are written as {{secret.NAME}}.")
    message = serializers.CharField(max_length=1000, required=False, allow_blank=True, default="")
    parentId = serializers.CharField(max_length=20, required=False)


class DiffChange(serializers.Serializer):
    path = serializers.CharField()
    change = serializers.ChoiceField(choices=["added", "removed", "changed"])
    before = serializers.JSONField(allow_null=True)
    after = serializers.JSONField(allow_null=True)


class SecretDestination(serializers.Serializer):
    secret = serializers.CharField()
    path = serializers.CharField(help_text="the credential position, e.g. $.steps[0].model.apiKey")
    host = serializers.CharField(allow_null=True, help_text="host (host:port off the default port) it is sent to; "
                                                            "null when the spec does not fix it")


class SecretDestinations(serializers.Serializer):
    before = SecretDestination(many=True, help_text="in the revision compared against")
    after = SecretDestination(many=True, help_text="in this revision")


class DiffResponse(serializers.Serializer):
    revisionId = serializers.CharField()
    againstRevisionId = serializers.CharField()
    changes = DiffChange(many=True)
    summary = serializers.DictField()
    promptDiff = serializers.CharField(help_text="unified diff of prompt texts")
    secretDestinations = SecretDestinations()


class GrantSerializer(serializers.Serializer):
    user = serializers.CharField()
    role = serializers.ChoiceField(choices=GRANT_ROLES)


class GrantList(serializers.Serializer):
    results = GrantSerializer(many=True)
    next = serializers.CharField(allow_null=True)
    previous = serializers.CharField(allow_null=True)


class GrantPut(StrictSerializer):
    role = serializers.ChoiceField(choices=GRANT_ROLES)


class ExecuteRequest(StrictSerializer):
    input = serializers.JSONField(required=False, default=dict, help_text="values for the spec's inputs")
    revisionId = serializers.CharField(max_length=20, required=False, allow_null=True,
                                       help_text="pin a revision of this agent (canary by caller)")
    conversationId = serializers.CharField(max_length=64, required=False, allow_null=True,
                                           help_text="continue (or start) this conversation")
    stream = serializers.BooleanField(
        required=False, default=False,
        help_text="answer with server-sent events (text/event-stream) as the run goes; so does "
                  "'Accept: text/event-stream'. Events: run.started, step.started, output.delta, tool.call, "
                  "tool.result, step.completed, then run.completed (data: the JSON answer) or run.failed")


class Usage(serializers.Serializer):
    inputTokens = serializers.IntegerField()
    cachedInputTokens = serializers.IntegerField()
    outputTokens = serializers.IntegerField()
    reasoningTokens = serializers.IntegerField()
    costUsd = serializers.CharField(help_text="decimal string, USD")


class ExecuteResponse(serializers.Serializer):
    runId = serializers.CharField()
    revisionId = serializers.CharField()
    status = serializers.CharField()
    source = serializers.ChoiceField(choices=["api", "canary"], help_text="canary when pinned off the deployed revision")
    output = serializers.JSONField(allow_null=True)
    usage = Usage()
    latencyMs = serializers.IntegerField()
    conversationId = serializers.CharField(allow_null=True)


class PriceRow(StrictSerializer):
    provider = serializers.CharField(max_length=40)
    model = serializers.CharField(max_length=200)
    inputPerMillion = serializers.DecimalField(max_digits=12, decimal_places=6, min_value=0)
    cachedInputPerMillion = serializers.DecimalField(max_digits=12, decimal_places=6, min_value=0, required=False, allow_null=True)
    outputPerMillion = serializers.DecimalField(max_digits=12, decimal_places=6, min_value=0)
    reasoningPerMillion = serializers.DecimalField(max_digits=12, decimal_places=6, min_value=0, required=False, allow_null=True)


class PricesPut(StrictSerializer):
    prices = PriceRow(many=True, help_text="the complete override list for this level; [] removes all overrides")


class PriceOut(serializers.Serializer):
    provider = serializers.CharField()
    model = serializers.CharField()
    inputPerMillion = serializers.CharField()
    cachedInputPerMillion = serializers.CharField(allow_null=True)
    outputPerMillion = serializers.CharField()
    reasoningPerMillion = serializers.CharField(allow_null=True)
    source = serializers.ChoiceField(choices=["builtin", "org", "agent"])


class PricesResponse(serializers.Serializer):
    prices = PriceOut(many=True)
