"""Agents endpoints: CRUD, revisions, diff, grants, execute, prices.

Views validate, call one service, serialize. Tenancy, agent resolution (with
grants) and access checks happen in the base class before any handler runs.
"""
from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.response import Response

from fruxon.api.base import Access, OrgScopedAPIView, OrgScopedViewSet
from fruxon.api.serializers import validated
from fruxon.errors import Conflict
from monitoring import pricing
from orgs.actor import Actor
from orgs.roles import ADMIN, EDITOR, OWNER, VIEWER

from .. import grants, services
from ..diff import diff_specs
from ..models import Agent, Revision
from ..scoping import EXECUTE_ROLE, EXECUTE_SCOPE
from . import serializers as s


def _actor(request) -> Actor:
    return Actor.from_request(request)


class AgentViewSet(OrgScopedViewSet):
    queryset = Agent.objects.all()
    serializer_class = s.AgentSerializer
    ordering = "slug"
    access = {
        "GET": Access(VIEWER, "agents:read"),
        "POST": Access(EDITOR, "agents:write"),
        "PATCH": Access(EDITOR, "agents:write"),
        "DELETE": Access(EDITOR, "agents:write"),
    }

    def refine_queryset(self, queryset):
        queryset = queryset.select_related("shadow_config", "gating_dataset")
        return self.only_keys_agents(queryset, field="slug")

    def list(self, request, tenant):
        return self.paginated_response()

    @extend_schema(request=s.AgentCreate, responses={201: s.AgentSerializer})
    def create(self, request, tenant):
        data = validated(s.AgentCreate, request.data)
        agent = services.create_agent(actor=_actor(request), organization=self.organization, **data)
        return Response(self.get_serializer(agent).data, status=status.HTTP_201_CREATED)

    def retrieve(self, request, tenant, agent):
        return Response(self.get_serializer(self.agent).data)

    @extend_schema(request=s.AgentPatch, responses=s.AgentSerializer)
    def partial_update(self, request, tenant, agent):
        data = dict(validated(s.AgentPatch, request.data))
        changes = {k: v for k, v in data.items() if k in ("name", "description")}
        if "gateTolerance" in data:
            changes["gate_tolerance"] = data["gateTolerance"]
        if "gatingDataset" in data:
            changes["gating_dataset"] = services.dataset_in_org(organization=self.organization, slug=data["gatingDataset"])
        return Response(self.get_serializer(services.update_agent(actor=_actor(request), agent=self.agent, changes=changes)).data)

    @extend_schema(responses={204: None, 409: OpenApiResponse(description="deployed, or a sub-agent of another agent")})
    def destroy(self, request, tenant, agent):
        services.delete_agent(actor=_actor(request), agent=self.agent)
        return Response(status=status.HTTP_204_NO_CONTENT)


class RevisionViewSet(OrgScopedViewSet):
    queryset = Revision.objects.all()
    serializer_class = s.RevisionSerializer
    lookup_url_kwarg = "rev"
    lookup_field = "pk"
    ordering = "-created_at"
    access = {"GET": Access(VIEWER, "revisions:read"), "POST": Access(EDITOR, "revisions:write")}

    def refine_queryset(self, queryset):
        return queryset.filter(agent=self.agent).select_related("agent")

    def list(self, request, tenant, agent):
        return self.paginated_response()

    @extend_schema(request=s.RevisionCreate, responses={
        201: s.RevisionDetail,
        400: OpenApiResponse(description="invalid_spec (details.problems: path, message); secret_destination: a "
                                         "secret would be sent to a host it does not allow (details: secret, path, "
                                         "host, allowedHosts, uses); nothing written"),
        403: OpenApiResponse(description="forbidden: the role or scope, or a sub-agent the spec names that the "
                                         "caller may not execute (details.subAgent)"),
    })
    def create(self, request, tenant, agent):
        data = validated(s.RevisionCreate, request.data)
        revision = services.create_revision(actor=_actor(request), agent=self.agent, spec=data["spec"],
                                            message=data["message"], parent_id=data.get("parentId"))
        return Response(s.RevisionDetail(revision).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses=s.RevisionDetail)
    def retrieve(self, request, tenant, agent, rev):
        return Response(s.RevisionDetail(self.object).data)

    @extend_schema(
        parameters=[OpenApiParameter("against", str, description="a revision id of this agent, or 'deployed' (default)")],
        responses=s.DiffResponse,
    )
    def diff(self, request, tenant, agent, rev):
        against = request.query_params.get("against", "deployed")
        if against == "deployed":
            if not self.agent.deployed_revision_id:
                # 409, as execute answers for the same state: the request is fine, the agent is not deployed.
                raise Conflict("The agent has no deployed revision; pass ?against=<revision id>.",
                               code="not_deployed", details={"fields": {"against": ["Nothing deployed."]}})
            against = self.agent.deployed_revision_id
        base = services.get_revision(agent=self.agent, revision_id=against)
        result = diff_specs(base.spec, self.object.spec)
        return Response({"revisionId": self.object.id, "againstRevisionId": base.id, **result})


class GrantViewSet(OrgScopedViewSet):
    """Per-agent collaborators; an org owner or the agent's admins manage them."""

    serializer_class = s.GrantSerializer
    # One page holds every grant of the agent (members of one org): no cursor, no limit.
    pagination_class = None
    access = {
        "GET": Access(ADMIN, "members:read"),
        "PUT": Access(ADMIN, "members:write"),
        "DELETE": Access(ADMIN, "members:write"),
    }

    # Not DRF's "list" action: one unpaginated page, described as the object it is.
    @extend_schema(operation_id="agents_grants_list", responses=s.GrantList,
                   description="Every grant on the agent, in one page (`next` is always null).")
    def list_all(self, request, tenant, agent):
        rows = [{"user": user.username, "role": role} for user, role in grants.list_grants(agent=self.agent)]
        return Response({"results": rows, "next": None, "previous": None})

    def retrieve(self, request, tenant, agent, user):
        found, role = grants.get_grant(agent=self.agent, username=user)
        return Response({"user": found.username, "role": role})

    @extend_schema(request=s.GrantPut, responses={
        200: s.GrantSerializer, 201: s.GrantSerializer,
        403: OpenApiResponse(description="forbidden: the role (or the grant it replaces) is more than the caller "
                                         "holds on this agent (a key: a scope of the role it lacks)"),
    })
    def update(self, request, tenant, agent, user):
        data = validated(s.GrantPut, request.data)
        found, role, created = grants.set_grant(actor=_actor(request), agent=self.agent, username=user, role=data["role"])
        return Response({"user": found.username, "role": role}, status=201 if created else 200)

    @extend_schema(responses={204: None, 403: OpenApiResponse(
        description="forbidden: the grant is more than the caller holds on this agent")})
    def destroy(self, request, tenant, agent, user):
        grants.remove_grant(actor=_actor(request), agent=self.agent, username=user)
        return Response(status=status.HTTP_204_NO_CONTENT)


_EXECUTE_LIMITS = {"revisionId": 20, "conversationId": 64}


def execute_request(data) -> dict:
    """``ExecuteRequest``'s validated data. The common body (an object with ``input``,
    plain optional ids and a boolean ``stream``) is accepted here directly, since the
    serializer costs a tenth of a fast execute; anything else goes through the
    serializer, which produces the exact answer, errors included."""
    if (isinstance(data, dict) and data.keys() <= {"input", "stream", *_EXECUTE_LIMITS}
            and data.get("input", {}) is not None and isinstance(data.get("stream", False), bool)):
        plain = all(
            data.get(name) is None
            or (isinstance(data[name], str) and data[name].isascii() and data[name].isprintable()
                and data[name] == data[name].strip() and 0 < len(data[name]) <= limit)
            for name, limit in _EXECUTE_LIMITS.items()
        )
        if plain:
            return {"input": data.get("input", {}), "stream": data.get("stream", False),
                    **{name: data[name] for name in _EXECUTE_LIMITS if name in data}}
    return validated(s.ExecuteRequest, data)


class EventStreamRenderer(BaseRenderer):
    """``text/event-stream``: what an execute answers when asked to stream (``agents.api.execute``
    writes the events itself; listed here so content negotiation and the schema know the type)."""

    media_type = "text/event-stream"
    format = "sse"
    charset = "utf-8"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        return data


class ExecuteView(OrgScopedAPIView):
    """Run the agent: on its deployed revision, or on a pinned ``revisionId`` (canary).

    The endpoint's declaration (access map, OpenAPI schema, the DRF base's checks for people):
    requests are served by the async view ``agents.api.execute.execute``, which ``as_view``
    returns, on the event loop under the ASGI server.
    """

    access = {"POST": Access(EXECUTE_ROLE, EXECUTE_SCOPE)}
    # The deployed revision comes with the agent (one query): the run resolves it from that row.
    agent_select_related = ("deployed_revision",)
    renderer_classes = [JSONRenderer, EventStreamRenderer]

    @classmethod
    def as_view(cls, **initkwargs):
        from .execute import execute

        # What DRF's as_view sets, so the schema generator and the route sweeps find this class.
        execute.cls, execute.initkwargs = cls, initkwargs
        return execute

    @extend_schema(
        request=s.ExecuteRequest,
        parameters=[
            OpenApiParameter("X-Fruxon-Overhead-Ms", float, OpenApiParameter.HEADER, response=True,
                             description="server time minus time spent waiting on the model provider (ms); "
                                         "on every answer, errors included"),
            OpenApiParameter("X-Fruxon-Run-Id", str, OpenApiParameter.HEADER, response=[200, 422, 429, 502, 504],
                             description="the recorded run's id"),
        ],
        responses={
            200: OpenApiResponse(s.ExecuteResponse, description="the run finished with status ok; with stream: "
                                 "text/event-stream (run.started ... run.completed whose data is this body, "
                                 "or run.failed {runId, error})"),
            400: OpenApiResponse(description="invalid input (details name each input)"),
            404: OpenApiResponse(description="unknown agent, or revisionId not a revision of this agent"),
            409: OpenApiResponse(description="not_deployed: nothing deployed and no revisionId"),
            422: OpenApiResponse(description="the run failed for a non-provider reason (max_tool_calls, "
                                             "integration_unavailable, secret_not_allowed, secret_destination: a secret "
                                             "would have gone to a host it does not allow, nothing was sent, ...); "
                                             "the run is recorded"),
            429: OpenApiResponse(description="budget_exceeded: the budget's hard cap cannot admit the run; "
                                             "Retry-After says when the period resets. rate_limited: past the "
                                             "requests or executions per minute of the key or org (nothing run), or "
                                             "a model call's tokens do not fit the tokens per minute (the run is "
                                             "recorded, stopped before that call); Retry-After and RateLimit-* say "
                                             "when it would pass"),
            503: OpenApiResponse(description="ledger_unavailable: the budget ledger cannot be reached, so the run "
                                             "is refused (fail closed) and the refusal recorded. overloaded: this "
                                             "server process holds its maximum of executions in flight "
                                             "(FRUXON_MAX_IN_FLIGHT); nothing was run, Retry-After says when to "
                                             "retry. database_unavailable: PostgreSQL cannot be reached"),
            502: OpenApiResponse(description="provider_error; the run is recorded (details.runId)"),
            504: OpenApiResponse(description="provider_timeout or timeout; the run is recorded"),
        },
        description="Every response carries X-Fruxon-Overhead-Ms (server time minus model-provider wait) "
                    "and, once a run is recorded, X-Fruxon-Run-Id.",
    )
    def post(self, request, tenant, agent):
        """Never called: ``as_view`` routes requests to ``agents.api.execute.execute``."""
        raise NotImplementedError("served by agents.api.execute.execute")


class PricesView(OrgScopedAPIView):
    """Effective model prices (USD per million tokens) and this level's overrides."""

    access = {"GET": Access(VIEWER, "org:read"), "PUT": Access(OWNER, "org:write")}

    @extend_schema(responses=s.PricesResponse)
    def get(self, request, tenant, agent=None):
        return Response({"prices": pricing.price_table(organization_id=self.organization.pk,
                                                       agent_id=getattr(self.agent, "pk", None))})

    @extend_schema(request=s.PricesPut, responses=s.PricesResponse)
    def put(self, request, tenant, agent=None):
        data = validated(s.PricesPut, request.data)
        pricing.set_overrides(actor=_actor(request), organization=self.organization, agent=self.agent, rows=data["prices"])
        return self.get(request, tenant, agent)
