"""Orgs endpoints: each view validates, calls one service, serializes.

Access is declared per HTTP method (``access``); tenancy comes from the base.
"""
from __future__ import annotations

from datetime import timedelta

from django.db.models import Q
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle

from fruxon.api.base import Access, OrgScopedAPIView, OrgScopedViewSet, PrincipalAPIView
from fruxon.api.serializers import validated
from fruxon.errors import InvalidRequest
from orgs.actor import Actor
from orgs.login_throttle import client_address
from orgs.models import ApiKey, AuditEvent, Integration, Membership, Secret, UserToken
from orgs.roles import ALL_SCOPES, EDITOR, OWNER, PRESETS, VIEWER
from orgs.scoping import orgs_for_user
from orgs.services import api_keys, integrations, members, organizations, secrets, tokens
from orgs.services import rate_limits as rate_limit_service

from . import rate_limits
from . import serializers as s


def _actor(request) -> Actor:
    return Actor.from_request(request)


# --- /v1/auth/token ------------------------------------------------------------------------
class ClientAddressThrottle(ScopedRateThrottle):
    """DRF's scoped rate per client address as ``orgs.login_throttle`` finds it: DRF's own ident
    believes any X-Forwarded-For, so a new header per try would count as a new client."""

    def get_ident(self, request):
        return client_address(request)


class AuthTokenView(PrincipalAPIView):
    """Exchange a username and password for a personal token; DELETE revokes the token used."""

    dangerously_allow_anonymous = ("POST",)
    throttle_scope = "token"

    def get_throttles(self):
        return [ClientAddressThrottle()] if self.request.method == "POST" else []

    @extend_schema(request=s.TokenRequest, auth=[], responses={
        201: s.TokenResponse,
        401: OpenApiResponse(description="unauthenticated: wrong username or password"),
        429: OpenApiResponse(description="rate_limited: too many attempts (20 a minute per client address), or too "
                                         "many failed logins for the account or from the address (then even the "
                                         "right password is refused until the lock ends); see Retry-After"),
    })
    def post(self, request):
        data = validated(s.TokenRequest, request.data)
        token, plaintext = tokens.issue_token(username=data["username"], password=data["password"], request=request)
        return Response({"token": plaintext, "prefix": token.prefix}, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={204: None})
    def delete(self, request):
        if not isinstance(request.auth, UserToken):
            raise InvalidRequest("Send the fxu_ token to revoke as 'Authorization: Bearer ...'.", code="no_token")
        tokens.revoke_token(token=request.auth)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- /v1/orgs --------------------------------------------------------------------------------
class OrgListView(PrincipalAPIView):
    """The organizations the caller belongs to; POST creates one with the caller as owner."""

    @extend_schema(responses=s.OrganizationSerializer(many=True))
    def get(self, request):
        orgs = orgs_for_user(request.user).order_by("slug")
        roles = dict(Membership.objects.filter(user_id=request.user.pk).values_list("organization_id", "role"))
        return Response({"results": s.OrganizationSerializer(orgs, many=True, context={"roles": roles}).data,
                         "next": None, "previous": None})

    @extend_schema(request=s.OrganizationCreate, responses={201: s.OrganizationSerializer})
    def post(self, request):
        data = validated(s.OrganizationCreate, request.data)
        org = organizations.create_organization(actor=_actor(request), **data)
        return Response(s.OrganizationSerializer(org, context={"roles": {org.pk: OWNER}}).data, status=status.HTTP_201_CREATED)


class SettingsView(OrgScopedAPIView):
    access = {"GET": Access(VIEWER, "org:read"), "PUT": Access(OWNER, "org:write"), "PATCH": Access(OWNER, "org:write")}

    def _body(self, org):
        # The alert-webhook signing secret is shown once, by settings/webhook-secret:rotate.
        until = org.webhook_secret_previous_until
        return {"slug": org.slug, "name": org.name, "retentionDays": org.retention_days,
                "webhookSecretPreviousUntil": until if until and until > timezone.now() else None}

    @extend_schema(responses=s.SettingsSerializer)
    def get(self, request, tenant):
        return Response(self._body(self.organization))

    @extend_schema(request=s.SettingsSerializer, responses=s.SettingsSerializer)
    def put(self, request, tenant):
        changes = validated(s.SettingsSerializer, request.data, partial=True)
        org = organizations.update_settings(actor=_actor(request), organization=self.organization, changes=dict(changes))
        return Response(self._body(org))

    patch = put


# --- members ----------------------------------------------------------------------------------
class MemberViewSet(OrgScopedViewSet):
    queryset = Membership.objects.all()
    serializer_class = s.MembershipSerializer
    ordering = "id"
    access = {
        "GET": Access(OWNER, "members:read"),
        "POST": Access(OWNER, "members:write"),
        "PATCH": Access(OWNER, "members:write"),
        "DELETE": Access(OWNER, "members:write"),
    }

    def refine_queryset(self, queryset):
        return queryset.select_related("user")

    def list(self, request, tenant):
        return self.paginated_response()

    def retrieve(self, request, tenant, pk):
        return Response(self.get_serializer(self.object).data)

    @extend_schema(request=s.MemberCreate, responses={
        201: s.MembershipSerializer,
        202: OpenApiResponse(s.MemberInvited, description="the email has no account yet: it is invited with the "
                                                          "role and becomes a member when that account is created"),
        403: OpenApiResponse(description="forbidden: the role is above the caller's own (a key: it lacks a scope of "
                                         "the role, or is limited to agents)"),
    })
    def create(self, request, tenant):
        data = validated(s.MemberCreate, request.data)
        added = members.add_or_invite(actor=_actor(request), organization=self.organization,
                                      user_identifier=data["user"], role=data["role"])
        if not isinstance(added, Membership):
            return Response({"invited": True}, status=status.HTTP_202_ACCEPTED)
        return Response(self.get_serializer(added).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=s.MemberUpdate, responses={
        200: s.MembershipSerializer,
        403: OpenApiResponse(description="forbidden: the member's role or the new one is above the caller's own"),
    })
    def partial_update(self, request, tenant, pk):
        data = validated(s.MemberUpdate, request.data)
        membership = members.change_role(actor=_actor(request), organization=self.organization,
                                         membership_id=self.object.pk, role=data["role"])
        return Response(self.get_serializer(membership).data)

    @extend_schema(responses={204: None, 403: OpenApiResponse(
        description="forbidden: the member's role is above the caller's own")})
    def destroy(self, request, tenant, pk):
        members.remove_member(actor=_actor(request), organization=self.organization, membership_id=self.object.pk)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- API keys ------------------------------------------------------------------------------------
class ApiKeyViewSet(OrgScopedViewSet):
    queryset = ApiKey.objects.all()
    serializer_class = s.ApiKeySerializer
    access = {
        "GET": Access(OWNER, "keys:read"),
        "POST": Access(OWNER, "keys:write"),
        "PATCH": Access(OWNER, "keys:write"),
        "DELETE": Access(OWNER, "keys:write"),
    }

    def refine_queryset(self, queryset):
        return queryset.select_related("created_by")

    def list(self, request, tenant):
        return self.paginated_response()

    def retrieve(self, request, tenant, pk):
        return Response(self.get_serializer(self.object).data)

    @extend_schema(request=s.ApiKeyCreate, responses={
        201: s.ApiKeyCreated,
        400: rate_limits.KEY_LIMITS_400,
        403: OpenApiResponse(description="forbidden: the caller lacks keys:write, or the new key's scopes, agents, "
                                         "expiry or rate limits are beyond the caller's own (details: missingScopes, "
                                         "agents, expiresAt, rateLimits)"),
    })
    def create(self, request, tenant):
        data = dict(validated(s.ApiKeyCreate, request.data))
        if "rateLimits" in data:
            data["rate_limits"] = rate_limit_service.from_api(data.pop("rateLimits"))
        minted = api_keys.create_key(actor=_actor(request), organization=self.organization, **data)
        return Response(s.ApiKeyCreated(minted.key, context={"plaintext": minted.plaintext}).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=s.ApiKeyPatch, responses={200: s.ApiKeySerializer, 400: rate_limits.KEY_LIMITS_400,
                                                     403: rate_limits.KEY_LIMITS_403},
                   description="Change the key's rate limits (those given; null = only the org's apply). "
                               "Audited as `key.rate_limits_changed`; effective on the key's next request.")
    def partial_update(self, request, tenant, pk):
        data = validated(s.ApiKeyPatch, request.data)
        key = rate_limit_service.set_key_limits(actor=_actor(request), organization=self.organization,
                                                key_id=self.object.pk, limits=rate_limit_service.from_api(data["rateLimits"]))
        return Response(self.get_serializer(key).data)

    @extend_schema(request=None, responses={204: None}, description="Revoke the key; it stops working at once.")
    def destroy(self, request, tenant, pk):
        api_keys.revoke_key(actor=_actor(request), organization=self.organization, key_id=self.object.pk)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=s.ApiKeyRotate, responses={
        201: s.ApiKeyCreated,
        403: OpenApiResponse(description="forbidden: the caller lacks keys:write, or the rotated key's scopes, agents "
                                         "or expiry are beyond the caller's own (details: missingScopes, agents, expiresAt)"),
    }, description="Mint a successor key with the same scopes; the old key keeps working for overlapSeconds. "
                   "Only a caller holding every right of the key may rotate it.")
    def rotate(self, request, tenant, pk):
        data = validated(s.ApiKeyRotate, request.data)
        minted = api_keys.rotate_key(actor=_actor(request), organization=self.organization, key_id=self.object.pk,
                                     overlap=timedelta(seconds=data["overlapSeconds"]))
        return Response(s.ApiKeyCreated(minted.key, context={"plaintext": minted.plaintext}).data, status=status.HTTP_201_CREATED)


class ApiKeyScopesView(OrgScopedAPIView):
    access = {"GET": Access(OWNER, "keys:read")}

    @extend_schema(responses=s.ScopesResponse)
    def get(self, request, tenant):
        return Response({"scopes": list(ALL_SCOPES), "presets": {k: list(v) for k, v in PRESETS.items()}})


# --- secrets --------------------------------------------------------------------------------------
class SecretViewSet(OrgScopedViewSet):
    queryset = Secret.objects.all()
    serializer_class = s.SecretSerializer
    lookup_field = "name"
    ordering = "name"
    upsert_methods = ("PUT",)
    access = {
        "GET": Access(EDITOR, "secrets:read"),
        "PUT": Access(OWNER, "secrets:write"),
        "POST": Access(OWNER, "secrets:write"),
        "DELETE": Access(OWNER, "secrets:write"),
    }

    def refine_queryset(self, queryset):
        return queryset.select_related("updated_by")

    def list(self, request, tenant):
        return self.paginated_response()

    def retrieve(self, request, tenant, name):
        return Response(self.get_serializer(self.object).data)

    @extend_schema(request=s.SecretPut, responses={200: s.SecretSerializer, 201: s.SecretSerializer},
                   description="Create the secret or update it; a value makes a new version. The value is never returned.")
    def update(self, request, tenant, name):
        validated(s.SecretName, {"name": name})
        data = validated(s.SecretPut, request.data)
        secret, created = secrets.put_secret(actor=_actor(request), organization=self.organization, name=name, **data)
        return Response(self.get_serializer(secret).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)

    def destroy(self, request, tenant, name):
        secrets.delete_secret(actor=_actor(request), organization=self.organization, name=name)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=s.SecretRollback, responses=s.SecretSerializer,
                   description="Make an earlier version current again (recorded as a new version).")
    def rollback(self, request, tenant, name):
        data = validated(s.SecretRollback, request.data)
        secret = secrets.rollback_secret(actor=_actor(request), organization=self.organization, name=name, version=data["version"])
        return Response(self.get_serializer(secret).data)


# --- integrations ------------------------------------------------------------------------------------
class IntegrationViewSet(OrgScopedViewSet):
    queryset = Integration.objects.all()
    serializer_class = s.IntegrationSerializer
    lookup_field = "slug"
    ordering = "slug"
    access = {
        "GET": Access(EDITOR, "integrations:read"),
        "POST": Access(OWNER, "integrations:write"),
        "PATCH": Access(OWNER, "integrations:write"),
        "DELETE": Access(OWNER, "integrations:write"),
    }

    def list(self, request, tenant):
        return self.paginated_response()

    def retrieve(self, request, tenant, slug):
        return Response(self.get_serializer(self.object).data)

    @extend_schema(request=s.IntegrationWrite, responses={201: s.IntegrationSerializer})
    def create(self, request, tenant):
        data = dict(validated(s.IntegrationWrite, request.data))
        integration = integrations.create_integration(actor=_actor(request), organization=self.organization, **data)
        return Response(self.get_serializer(integration).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=s.IntegrationPatch, responses=s.IntegrationSerializer)
    def partial_update(self, request, tenant, slug):
        changes = dict(validated(s.IntegrationPatch, request.data))
        integration = integrations.update_integration(actor=_actor(request), organization=self.organization,
                                                      slug=self.object.slug, changes=changes)
        return Response(self.get_serializer(integration).data)

    def destroy(self, request, tenant, slug):
        integrations.delete_integration(actor=_actor(request), organization=self.organization, slug=self.object.slug)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- audit ---------------------------------------------------------------------------------------------
def _about_agents(organization, agents: list[str]) -> Q:
    """Events about one of ``agents``: the agent itself, its revisions, runs and evaluations.

    What an API key limited to those agents may read; every other event (members, keys,
    secrets, integrations, datasets, the org) is org-level and hidden from such a key.
    """
    from agents.models import Revision
    from evaluations.models import EvaluationRun

    return (Q(target_type="agent", target_id__in=agents)
            | Q(target_type="revision", target_id__in=Revision.objects.filter(
                organization=organization, agent__slug__in=agents).values("id"))
            | Q(target_type="run", data__agent__in=agents)
            | Q(target_type="evaluation", target_id__in=EvaluationRun.objects.filter(
                organization=organization, agent__slug__in=agents).values("id")))


class AuditEventViewSet(OrgScopedViewSet):
    queryset = AuditEvent.objects.all()
    serializer_class = s.AuditEventSerializer
    access = {"GET": Access(OWNER, "org:read")}

    def refine_queryset(self, queryset):
        params = self.request.query_params
        if (agents := self.keys_agents()) is not None:
            queryset = queryset.filter(_about_agents(self.organization, agents))
        if action := params.get("action"):
            # "secret" matches every secret.* action; "secret.updated" only that one.
            queryset = queryset.filter(Q(action=action) | Q(action__startswith=action + "."))
        if since := params.get("since"):
            moment = parse_datetime(since)
            if moment is None:
                raise InvalidRequest("since must be an ISO 8601 date-time.", details={"fields": {"since": ["Invalid date-time."]}})
            queryset = queryset.filter(at__gte=moment)
        return queryset

    @extend_schema(parameters=[
        OpenApiParameter("action", str, description="exact action, or a prefix such as 'secret'"),
        OpenApiParameter("since", str, description="ISO 8601 date-time"),
    ], description="An API key limited to some agents sees only events about those agents (the agent, its "
                   "revisions, runs and evaluations); org-level events are hidden from it.")
    def list(self, request, tenant):
        return self.paginated_response()
