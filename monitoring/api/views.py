"""Monitoring endpoints: runs (list, detail with its span tree, all spans paginated, pin), conversations, metrics.

Every queryset comes from the tenancy base (scoped to the org); an API key
limited to some agents sees only those agents' runs, conversations and
metrics (``only_keys_agents``), and anything else is a 404.
"""
from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.response import Response

from fruxon.api.base import Access, OrgScopedGenericAPIView, OrgScopedViewSet
from fruxon.api.serializers import validated
from orgs.actor import Actor
from orgs.roles import EDITOR, VIEWER

from .. import metrics, services
from ..models import Conversation, Run
from ..spans import detail_spans
from . import serializers as s

READ = Access(VIEWER, "runs:read")
WRITE = Access(EDITOR, "runs:write")
TURNS_LISTED = 500

# query parameter -> Run lookup
RUN_FILTERS = {
    "agent": "agent__slug", "revisionId": "revision_id", "status": "status", "source": "source",
    "conversationId": "conversation__key", "since": "created_at__gte", "until": "created_at__lt",
}


def _filtered(queryset, data: dict, lookups: dict):
    return queryset.filter(**{lookups[name]: value for name, value in data.items() if name in lookups})


class RunViewSet(OrgScopedViewSet):
    """What ran: one row per execution, with its tokens, cost, latency and error."""

    queryset = Run.objects.all()
    serializer_class = s.RunSerializer
    lookup_url_kwarg = "run"
    lookup_field = "pk"
    ordering = ("-created_at", "-id")
    access = {"GET": READ, "POST": WRITE}
    agent_from_object = "agent"  # pinning acts on the run's agent: per-agent grants apply

    def refine_queryset(self, queryset):
        queryset = self.only_keys_agents(queryset.select_related("agent", "conversation"))
        if self.action == "list":
            queryset = _filtered(queryset, validated(s.RunFilter, s.query_data(self.request)), RUN_FILTERS)
        return queryset

    @extend_schema(parameters=[s.RunFilter], responses=s.RunSerializer(many=True),
                   description="Runs, newest first, without their spans (GET /runs/{id} has the span tree).")
    def list(self, request, tenant):
        return self.paginated_response()

    @extend_schema(responses=s.RunDetailSerializer,
                   description="The run with its span tree (steps, llm calls, tools, sub-agents): the run's first "
                               "FRUXON_RUN_DETAIL_SPANS spans (200 by default) in start order; `spansTruncated` says "
                               "when it has more (GET /runs/{id}/spans lists them all).")
    def retrieve(self, request, tenant, run):
        found = self.object
        found.shown_spans, found.more_spans = detail_spans(found)
        return Response(s.RunDetailSerializer(found).data)

    @extend_schema(
        request=s.PinRequest, responses=s.RunSerializer,
        description="Pins the run so retention never deletes it (evidence for an incident). The body is optional: "
                    "`{}` or `{\"pinned\": true}` pins, `{\"pinned\": false}` unpins. A change writes the audit event "
                    "`run.pinned` or `run.unpinned`; asking for the state the run already has changes nothing.",
    )
    def pin(self, request, tenant, run):
        data = validated(s.PinRequest, request.data)
        pinned = services.set_pinned(actor=Actor.from_request(request), run=self.object, pinned=data["pinned"])
        return Response(s.RunSerializer(pinned).data)


class RunSpansViewSet(OrgScopedViewSet):
    """All of one run's spans, in start order, paginated like every list.

    The run in the URL is resolved as GET /runs/{id} resolves it (same org scope,
    per-agent grants, the API key's agent list): anything else is a 404.
    """

    queryset = Run.objects.all()
    serializer_class = s.SpanRowSerializer
    lookup_url_kwarg = "run"
    lookup_field = "pk"
    ordering = ("position",)  # unique within a run: start order, parents before their children
    access = {"GET": READ}
    agent_from_object = "agent"

    def refine_queryset(self, queryset):
        return self.only_keys_agents(queryset.select_related("agent"))

    @extend_schema(responses=s.SpanRowSerializer(many=True),
                   description="Every span of the run, in start order (a span comes after its parent; `parentId` "
                               "links the tree), paginated with `?cursor=` and `?limit=`.")
    def list(self, request, tenant, run):
        return self.paginated_response(self.object.spans.all())


class ConversationViewSet(OrgScopedViewSet):
    """Threads of runs sharing a conversationId."""

    queryset = Conversation.objects.all()
    serializer_class = s.ConversationSerializer
    lookup_url_kwarg = "conversation"
    lookup_field = "key"
    ordering = ("-updated_at", "-id")
    access = {"GET": READ}

    def refine_queryset(self, queryset):
        queryset = self.only_keys_agents(queryset.select_related("agent"))
        if self.action == "list":
            queryset = _filtered(queryset, validated(s.ConversationFilter, s.query_data(self.request)),
                                 {"agent": "agent__slug"})
        return queryset

    @extend_schema(parameters=[s.ConversationFilter], responses=s.ConversationSerializer(many=True),
                   description="Conversations, most recently updated first.")
    def list(self, request, tenant):
        return self.paginated_response()

    @extend_schema(
        parameters=[OpenApiParameter("conversation", str, OpenApiParameter.PATH,
                                     description="the conversation's id (the conversationId of :execute)")],
        responses=s.ConversationDetailSerializer,
        description=f"The conversation with its turns (its runs) oldest first, at most {TURNS_LISTED}; "
                    "`truncated` says when there are more (GET /runs?conversationId= lists them all).",
    )
    def retrieve(self, request, tenant, conversation):
        found = self.object
        turns = list(self.only_keys_agents(found.runs.order_by("created_at", "id"))[:TURNS_LISTED + 1])
        found.listed_turns, found.more_turns = turns[:TURNS_LISTED], len(turns) > TURNS_LISTED
        return Response(s.ConversationDetailSerializer(found).data)


class MetricsView(OrgScopedGenericAPIView):
    """Run metrics per time bucket (``monitoring.metrics``)."""

    queryset = Run.objects.all()
    access = {"GET": READ}

    def refine_queryset(self, queryset):
        return self.only_keys_agents(queryset)

    @extend_schema(
        parameters=[s.MetricsQuery], responses=s.MetricsResponse,
        description="Per UTC bucket of [since, until) (default: the last 24 hours by hour): runs, errors (status "
                    "not ok), error rate, p50/p95 latency, tokens and cost, every source unless `source` is given. "
                    "Percentiles are nearest-rank: the value at rank ceil(p x n) of the bucket's sorted latencies. "
                    "The window is at most 31 days by hour, 366 by day.",
    )
    def get(self, request, tenant):
        query = validated(s.MetricsQuery, s.query_data(request))
        runs = _filtered(self.get_queryset(), query, {"agent": "agent__slug", "revisionId": "revision_id",
                                                      "source": "source"})
        result = metrics.series(runs, since=query["since"], until=query["until"], bucket=query["bucket"])
        return Response(s.MetricsResponse(result).data)
