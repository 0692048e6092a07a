"""Export, import and promotion endpoints (API.md "Export and import between organizations").

* ``GET /v1/{tenant}/export?agents=a,b&history=false`` (owner; key scope
  ``org:read``): the ``fruxon.export/v1`` document; a key limited to some agents
  exports only those (naming another: 403).
* ``POST /v1/{tenant}/import`` (owner; ``org:write``): the body is the
  document itself (options in the query: ``?dryRun=true&deploy=true``) or
  ``{"document": {...}, "dryRun": bool, "deploy": bool}``; a key limited to some
  agents may import only documents about those (403 otherwise). 200 with
  ``{"dryRun", "applied", "plan", "revisions", "deployments"}``.
* ``POST /v1/{tenant}/agents/{agent}:promote`` (owner of both orgs; people
  only): ``{"targetOrg", "revisionId"?, "reason"?, "force"?}``. The target
  org is resolved through ``orgs.scoping.resolve_tenant`` like any
  ``{tenant}``: not a member there -> 404, a member but not an owner -> 403.
"""
from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response

from fruxon.api.base import Access, OrgScopedAPIView
from fruxon.api.serializers import StrictSerializer, validated
from fruxon.errors import Forbidden, InvalidRequest
from orgs.actor import Actor
from orgs.roles import OWNER, role_at_least
from orgs.scoping import resolve_tenant

from .. import transfer

_TRUE, _FALSE = {"true", "1", "yes"}, {"false", "0", "no", ""}


def _flag(request, name: str) -> bool:
    raw = request.query_params.get(name, "false").strip().lower()
    if raw not in _TRUE | _FALSE:
        raise InvalidRequest(f"{name} must be true or false.", details={"fields": {name: ["Expected true or false."]}})
    return raw in _TRUE


class ImportEnvelope(StrictSerializer):
    document = serializers.JSONField(help_text="a fruxon.export/v1 document")
    dryRun = serializers.BooleanField(required=False, default=False, help_text="return the plan, write nothing")
    deploy = serializers.BooleanField(required=False, default=False,
                                      help_text="deploy each agent's deployedRevisionId (readiness checked)")


class PromoteRequest(StrictSerializer):
    targetOrg = serializers.CharField(max_length=50, help_text="slug of an org where you are an owner too")
    revisionId = serializers.CharField(max_length=20, required=False, allow_null=True, default=None,
                                       help_text="default: the deployed revision")
    reason = serializers.CharField(max_length=1000, required=False, allow_blank=True, default="")
    force = serializers.BooleanField(required=False, default=False,
                                     help_text="deploy past failing checks other than missing secrets/integrations; "
                                               "needs a reason")


class ExportView(OrgScopedAPIView):
    access = {"GET": Access(OWNER, "org:read")}

    @extend_schema(parameters=[
        OpenApiParameter("agents", str, description="comma-separated agent slugs (default: all; for an API key "
                                                    "limited to some agents, those: naming another is a 403)"),
        OpenApiParameter("history", bool, description="every revision instead of the deployed one"),
    ], responses={200: OpenApiResponse(OpenApiTypes.OBJECT, description="a fruxon.export/v1 document"),
                  403: OpenApiResponse(description="forbidden: the role or scope, or an agent outside the key's list")})
    def get(self, request, tenant):
        raw = request.query_params.get("agents")
        agents = None if raw is None else [s.strip() for s in raw.split(",") if s.strip()]
        document = transfer.export_organization(organization=self.organization, agents=agents,
                                                history=_flag(request, "history"), allowed=self.keys_agents())
        return Response(document)


class ImportView(OrgScopedAPIView):
    access = {"POST": Access(OWNER, "org:write")}

    @extend_schema(request=OpenApiTypes.OBJECT, parameters=[
        OpenApiParameter("dryRun", bool, description="return the plan, write nothing"),
        OpenApiParameter("deploy", bool, description="also deploy the imported deployed revisions"),
    ], responses={
        200: OpenApiResponse(OpenApiTypes.OBJECT, description="{dryRun, applied, plan, revisions, deployments}"),
        400: OpenApiResponse(description="invalid_export: details.problems names each JSON path; "
                                         "secret_destination: a revision would send a secret to a host it does not "
                                         "allow (details: secret, path, host); nothing written"),
        403: OpenApiResponse(description="forbidden: the role or scope; a document naming an agent outside the "
                                         "key's list (details.agents), or a revision naming a sub-agent the caller "
                                         "may not execute (details.subAgent), dry run included; nothing written"),
        409: OpenApiResponse(description="not_ready: a deploy failed its checklist; nothing was written"),
    })
    def post(self, request, tenant):
        body = request.data
        dry_run, deploy = _flag(request, "dryRun"), _flag(request, "deploy")
        if isinstance(body, dict) and "document" in body and "format" not in body:
            options = validated(ImportEnvelope, body)
            body, dry_run, deploy = options["document"], dry_run or options["dryRun"], deploy or options["deploy"]
        document = transfer.validate_document(body)
        result = transfer.import_document(actor=Actor.from_request(request), organization=self.organization,
                                          document=document, dry_run=dry_run, deploy=deploy)
        return Response(result.to_dict())


class PromoteView(OrgScopedAPIView):
    access = {"POST": Access(OWNER, None)}

    @extend_schema(request=PromoteRequest, responses={
        201: OpenApiResponse(OpenApiTypes.OBJECT, description="{targetOrg, agent, sourceRevisionId, revisionId, "
                                                              "contentHash, deploymentId, forced, plan}"),
        400: OpenApiResponse(description="secret_destination: the revision would send a secret to a host the "
                                         "target org's secret does not allow (details: secret, path, host)"),
        403: OpenApiResponse(description="not an owner of the target org, or an API key"),
        404: OpenApiResponse(description="the target org does not exist or you are not a member"),
        409: OpenApiResponse(description="not_ready (details.plan, details.checks), already_deployed, nothing_deployed"),
    })
    def post(self, request, tenant, agent):
        data = validated(PromoteRequest, request.data)
        target = resolve_tenant(slug=data["targetOrg"], user=request.user, api_key=None)
        if not role_at_least(target.role, OWNER):
            raise Forbidden(f"Promoting to '{target.organization.slug}' needs the owner role there; you are {target.role}.",
                            details={"requiredRole": OWNER, "role": target.role, "targetOrg": target.organization.slug})
        outcome = transfer.promote(actor=Actor.from_request(request), agent=self.agent, target=target.organization,
                                   revision_id=data["revisionId"], reason=data["reason"], force=data["force"])
        return Response(outcome, status=status.HTTP_201_CREATED)
