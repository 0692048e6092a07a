"""Deployment endpoints: readiness, deploy, rollback, history, health, schedules, shadow."""
from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.response import Response

from agents.models import Revision
from fruxon.api.base import Access, OrgScopedAPIView, OrgScopedViewSet
from fruxon.api.serializers import validated
from fruxon.errors import InvalidRequest, NotFound
from orgs.actor import Actor
from orgs.roles import EDITOR, OWNER, VIEWER

from .. import readiness, scheduling, services, shadow
from ..health import deployment_health
from ..models import Deployment, DeployPolicy, ScheduledDeployment, ShadowConfig, ShadowResult
from . import serializers as s

READ = Access(VIEWER, "revisions:read")
# Scheduled deployments and the shadow configuration are deploy operations: API.md gives every
# method of them to editors, reads included (as evaluations' evaluation-schedule does).
EDITOR_READ = Access(EDITOR, "revisions:read")
DEPLOY = Access(EDITOR, "revisions:deploy")


def _actor(request) -> Actor:
    return Actor.from_request(request)


class ReadinessView(OrgScopedAPIView):
    access = {"GET": READ}

    @extend_schema(parameters=[OpenApiParameter("revisionId", str, required=True)], responses=s.ReadinessResponse)
    def get(self, request, tenant, agent):
        revision_id = request.query_params.get("revisionId")
        if not revision_id:
            raise InvalidRequest("revisionId is required.", details={"fields": {"revisionId": ["Required."]}})
        revision = Revision.objects.filter(agent=self.agent, pk=revision_id).first()
        if revision is None:
            raise NotFound(f"Revision '{revision_id}' not found for agent '{self.agent.slug}'.")
        items = readiness.check(self.agent, revision)
        return Response({"revisionId": revision.id, "ready": readiness.is_ready(items),
                         "checks": [i.to_dict() for i in items]})


class DeployView(OrgScopedAPIView):
    access = {"POST": DEPLOY}

    @extend_schema(request=s.DeployRequest, responses={
        201: s.DeploymentDetail,
        409: OpenApiResponse(description="not_ready (details.checks holds the checklist) or already_deployed"),
        403: OpenApiResponse(description="force needs an owner (a person, not an API key)"),
    })
    def post(self, request, tenant, agent):
        data = validated(s.DeployRequest, request.data)
        if data["force"]:
            self.require_role(OWNER, "A forced deploy")
        deployment = services.deploy(actor=_actor(request), agent=self.agent, revision_id=data["revisionId"],
                                     reason=data["reason"], force=data["force"])
        return Response(s.DeploymentDetail(deployment).data, status=status.HTTP_201_CREATED)


class RollbackView(OrgScopedAPIView):
    access = {"POST": DEPLOY}

    @extend_schema(request=s.RollbackRequest, responses={
        201: s.DeploymentDetail,
        409: OpenApiResponse(description="no_rollback_target, not_previously_deployed or already_deployed"),
    })
    def post(self, request, tenant, agent):
        data = validated(s.RollbackRequest, request.data)
        deployment = services.rollback(actor=_actor(request), agent=self.agent, revision_id=data.get("revisionId"),
                                       reason=data["reason"])
        return Response(s.DeploymentDetail(deployment).data, status=status.HTTP_201_CREATED)


class DeploymentViewSet(OrgScopedViewSet):
    queryset = Deployment.objects.all()
    serializer_class = s.DeploymentSerializer
    lookup_url_kwarg = "deployment"
    lookup_field = "pk"
    ordering = ("-at", "-id")
    access = {"GET": READ}

    def refine_queryset(self, queryset):
        return queryset.filter(agent=self.agent)

    def list(self, request, tenant, agent):
        return self.paginated_response()

    @extend_schema(responses=s.DeploymentDetail)
    def retrieve(self, request, tenant, agent, deployment):
        return Response(s.DeploymentDetail(self.object).data)

    @extend_schema(responses=s.HealthResponse)
    def health(self, request, tenant, agent, deployment):
        return Response(s.HealthResponse(deployment_health(self.object)).data)


class ScheduledDeploymentViewSet(OrgScopedViewSet):
    queryset = ScheduledDeployment.objects.all()
    serializer_class = s.ScheduledDeploymentSerializer
    lookup_url_kwarg = "schedule"
    lookup_field = "pk"
    ordering = ("-run_at", "-id")
    access = {"GET": EDITOR_READ, "POST": DEPLOY}

    def refine_queryset(self, queryset):
        return queryset.filter(agent=self.agent)

    def list(self, request, tenant, agent):
        return self.paginated_response()

    @extend_schema(request=s.ScheduleRequest, responses={201: s.ScheduledDeploymentSerializer})
    def create(self, request, tenant, agent):
        data = validated(s.ScheduleRequest, request.data)
        row = scheduling.schedule(actor=_actor(request), agent=self.agent, revision_id=data["revisionId"],
                                  run_at=data["runAt"], reason=data["reason"])
        return Response(self.get_serializer(row).data, status=status.HTTP_201_CREATED)

    def retrieve(self, request, tenant, agent, schedule):
        return Response(self.get_serializer(self.object).data)

    @extend_schema(request=None, responses={200: s.ScheduledDeploymentSerializer, 409: OpenApiResponse(description="not pending")})
    def cancel(self, request, tenant, agent, schedule):
        row = scheduling.cancel(actor=_actor(request), agent=self.agent, schedule_id=self.object.pk)
        return Response(self.get_serializer(row).data)


class ShadowView(OrgScopedAPIView):
    access = {"GET": EDITOR_READ, "PUT": DEPLOY, "DELETE": DEPLOY}

    def _body(self, config: ShadowConfig) -> dict:
        return {"revisionId": config.revision_id, "sampleRate": config.sample_rate,
                "updatedBy": config.updated_by_label, "updatedAt": config.updated_at}

    @extend_schema(responses={200: s.ShadowConfigOut, 404: OpenApiResponse(description="shadow mode is off")})
    def get(self, request, tenant, agent):
        config = ShadowConfig.objects.filter(agent=self.agent).first()
        if config is None:
            raise NotFound(f"Shadow mode is not on for agent '{self.agent.slug}'.")
        return Response(s.ShadowConfigOut(self._body(config)).data)

    @extend_schema(request=s.ShadowPut, responses=s.ShadowConfigOut)
    def put(self, request, tenant, agent):
        data = validated(s.ShadowPut, request.data)
        config = shadow.configure(actor=_actor(request), agent=self.agent, revision_id=data["revisionId"],
                                  sample_rate=data["sampleRate"])
        return Response(s.ShadowConfigOut(self._body(config)).data)

    @extend_schema(responses={204: None})
    def delete(self, request, tenant, agent):
        shadow.disable(actor=_actor(request), agent=self.agent)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ShadowResultViewSet(OrgScopedViewSet):
    queryset = ShadowResult.objects.all()
    serializer_class = s.ShadowResultSerializer
    ordering = ("-created_at", "-id")
    access = {"GET": READ}

    def refine_queryset(self, queryset):
        queryset = queryset.filter(agent=self.agent).select_related("live_run", "shadow_run")
        if revision := self.request.query_params.get("revisionId"):
            queryset = queryset.filter(candidate_revision_id=revision)
        return queryset

    @extend_schema(parameters=[OpenApiParameter("revisionId", str, description="only this candidate")],
                   responses=s.ShadowResultsPage)
    def list(self, request, tenant, agent):
        queryset = self.get_queryset()
        response = self.paginated_response(queryset)
        response.data["summary"] = shadow.summary(queryset)
        return response


class DeployPolicyView(OrgScopedAPIView):
    access = {"GET": READ, "PUT": DEPLOY}

    @extend_schema(responses=s.DeployPolicySerializer)
    def get(self, request, tenant, agent):
        policy = DeployPolicy.objects.filter(agent=self.agent).first()
        return Response(_policy_body(policy))

    @extend_schema(request=s.DeployPolicySerializer, responses=s.DeployPolicySerializer)
    def put(self, request, tenant, agent):
        data = validated(s.DeployPolicySerializer, request.data)
        policy = services.set_policy(actor=_actor(request), agent=self.agent, auto_rollback=data["autoRollback"],
                                     alert_webhook=data["alertWebhook"], alert_emails=data["alertEmails"])
        return Response(_policy_body(policy))


def _policy_body(policy) -> dict:
    if policy is None:
        return {"autoRollback": False, "alertWebhook": "", "alertEmails": []}
    return {"autoRollback": policy.auto_rollback, "alertWebhook": policy.alert_webhook,
            "alertEmails": policy.alert_emails}
