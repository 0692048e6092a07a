"""The base views every endpoint inherits: tenancy and access in ONE place.

``OrgScopedAPIView`` / ``OrgScopedViewSet`` (DESIGN rule 1, after PostHog's
``TeamAndOrgViewSetMixin`` and NetBox's ``BaseViewSet.initial()``):

1. DRF authenticates (401 without valid credentials);
2. ``{tenant}`` is resolved against the caller (``orgs.scoping``): unknown org,
   non-member, or another org's key -> 404;
3. when the route has ``{agent}``, the agent is resolved inside the org (404
   otherwise) and per-agent grants adjust the caller's role (for an API key,
   steps 2 and 3 are one query: ``agents.scoping.resolve_tenant_and_agent_for_key``);
4. the view's ``access`` map (Sentry's ``scope_map``) is checked for the HTTP
   method: a person needs the role, an API key needs the scope -> 403;
5. an object named in the URL is looked up in the org's queryset (404) and kept
   as ``self.object`` before the handler reads any body;
6. ``get_queryset`` is always filtered to the org.

Between 3 and 4, requests per minute are counted (``fruxon.ratelimit``): an API key
against its own limit and its org's, a person against the org's; past one, 429
``rate_limited`` with ``Retry-After`` and ``RateLimit-*`` headers (those also on
answers a limit applied to).

Subclasses cannot override ``initial``, ``get_queryset``, ``check_permissions``,
``get_permissions`` or ``get_authenticators`` (``__init_subclass__`` refuses the
class). They narrow a queryset with ``refine_queryset``. The only escape hatch,
``dangerously_allow_anonymous``, is for the token endpoint.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rest_framework import exceptions, generics, viewsets
from rest_framework.views import APIView

from fruxon.errors import Forbidden
from orgs.models import ApiKey
from orgs.roles import RANK, role_at_least
from orgs.scoping import resolve_tenant, scoped

_FINAL = ("initial", "get_queryset", "check_permissions", "get_permissions", "get_authenticators")


@dataclass(frozen=True)
class Access:
    """Who may call one HTTP method: a person's minimum role, an API key's scope.

    ``scope=None`` means API keys may not call it at all (people only).
    """

    role: str
    scope: str | None


def access_refusal(access: Access, *, api_key: ApiKey | None, role: str | None) -> Forbidden | None:
    """Why a caller fails ``access`` (the 403 to raise), or None when it passes: an API key needs the
    scope, a person the role (after per-agent grants). The one rule for the DRF views and the async
    execute family (``agents.api.execute``)."""
    if api_key is not None:
        if access.scope is None:
            return Forbidden("This endpoint is for people; API keys cannot call it.")
        if access.scope not in api_key.scopes:
            return Forbidden(f"This API key lacks the '{access.scope}' scope.",
                             details={"requiredScope": access.scope})
        return None
    if not role_at_least(role, access.role):
        return Forbidden(f"This needs the {access.role} role; you are {role}.",
                         details={"requiredRole": access.role, "role": role})
    return None


def closest_rate_limit_headers(current: dict | None, decision) -> dict:
    """The RateLimit-* headers to answer with: ``decision``'s (e.g. an execute's executions per minute)
    when its limit is closer to refusing than the request's own (``current``), else ``current``."""
    headers = decision.headers() if decision is not None else {}
    if headers and (not current or int(headers["RateLimit-Remaining"]) < int(current["RateLimit-Remaining"])):
        return headers
    return current or {}


def _refuse_overrides(cls, base_names: set[str]) -> None:
    if cls.__name__ in base_names:
        return
    for name in _FINAL:
        if name in cls.__dict__:
            raise TypeError(
                f"{cls.__name__} overrides {name}(); tenancy and access checks live only in "
                "fruxon.api.base. Use refine_queryset() or the access map instead."
            )


class _TenantScoped:
    """Shared by the APIView and ViewSet bases. See the module docstring."""

    access: ClassVar[dict[str, Access]] = {}
    # Methods that create-or-update the object named in the URL (no 404 when absent).
    upsert_methods: ClassVar[tuple[str, ...]] = ()
    agent_url_kwarg: ClassVar[str] = "agent"
    # Relations of the agent loaded with it in the same query (e.g. execute's deployed revision).
    agent_select_related: ClassVar[tuple[str, ...]] = ()
    # Endpoints that act on one agent without ``{agent}`` in the URL. Per-agent grants and a key's
    # agent list apply to that agent exactly as on ``/agents/{agent}/...`` routes:
    # ``agent_from_body`` maps HTTP methods to the body field naming the agent's slug (resolved
    # inside the org, 404 otherwise); ``agent_from_object`` names the attribute of the object in the
    # URL that holds its agent (the object is then resolved before the role check).
    agent_from_body: ClassVar[dict[str, str]] = {}
    agent_from_object: ClassVar[str | None] = None

    organization = None
    agent = None
    role: str | None = None
    api_key: ApiKey | None = None
    rate_limit_headers: dict[str, str] | None = None

    _BASES = {"_TenantScoped", "OrgScopedAPIView", "OrgScopedViewSet", "OrgScopedGenericAPIView"}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _refuse_overrides(cls, cls._BASES)

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)  # authentication -> 401, throttles
        self.api_key = request.auth if isinstance(request.auth, ApiKey) else None
        if self.agent_url_kwarg in kwargs and self.api_key is not None:
            from agents.scoping import (
                resolve_tenant_and_agent_for_key,  # agents app builds on orgs
            )

            # The execute hot path: the key's org and the agent in one query, same 404/403 answers.
            self.organization, self.agent = resolve_tenant_and_agent_for_key(
                tenant=kwargs["tenant"], slug=kwargs[self.agent_url_kwarg], api_key=self.api_key,
                select_related=self.agent_select_related,
            )
            self.role = None
        else:
            tenant = resolve_tenant(slug=kwargs["tenant"], user=request.user, api_key=self.api_key)
            self.organization, self.role = tenant.organization, tenant.role
            if self.agent_url_kwarg in kwargs:
                from agents.scoping import (
                    resolve_agent_for,  # agents app builds on orgs
                )

                self.agent, self.role = resolve_agent_for(
                    organization=self.organization,
                    slug=kwargs[self.agent_url_kwarg],
                    user=request.user,
                    org_role=self.role,
                    api_key=self.api_key,
                    select_related=self.agent_select_related,
                )
        self._check_rate_limits()
        self.object = None
        lookup = getattr(self, "lookup_url_kwarg", None) or getattr(self, "lookup_field", None)
        names_object = lookup in kwargs and request.method not in self.upsert_methods
        if self.agent is None:
            if names_object and self.agent_from_object:
                # The role depends on the object's agent: resolve the object (inside the org) first.
                self.object = self.get_object()
                self._apply_agent(request, getattr(self.object, self.agent_from_object))
            elif request.method in self.agent_from_body:
                slug = request.data.get(self.agent_from_body[request.method]) if isinstance(request.data, dict) else None
                if isinstance(slug, str) and slug:  # anything else is left to the body's validation (400)
                    from agents.scoping import get_agent  # agents app builds on orgs

                    self._apply_agent(request, get_agent(organization=self.organization, slug=slug))
        self._check_access(request)
        if names_object and self.object is None:
            # Objects named in the URL resolve inside the org before any body is
            # read: another org's id is a 404 whatever the body holds.
            self.object = self.get_object()

    def _check_rate_limits(self) -> None:
        """Requests per minute (fruxon.ratelimit), once the org is known: an API key counts against its own
        limit and its org's, a person against the org's. No query: both rows are already loaded."""
        from fruxon import ratelimit

        limits = ratelimit.limits_for("requests", organization=self.organization, api_key=self.api_key)
        if not limits:
            return
        decision = ratelimit.limiter().check(limits)
        self.rate_limit_headers = decision.headers()
        if not decision.allowed:
            raise ratelimit.refusal(decision)

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        # The RateLimit-* headers of this request's check, unless the answer carries a refusal's own.
        if self.rate_limit_headers and "RateLimit-Limit" not in response:
            for name, value in self.rate_limit_headers.items():
                response[name] = value
        return response

    def _apply_agent(self, request, agent) -> None:
        """Make ``agent`` the one this request acts on: its grants set the person's role, a key must allow it."""
        from agents.scoping import resolve_agent_for

        self.agent, self.role = resolve_agent_for(organization=self.organization, slug=agent.slug, user=request.user,
                                                  org_role=self.role, api_key=self.api_key, resolved=agent)

    def access_for_method(self, method: str) -> Access:
        method = "GET" if method == "HEAD" else method
        if method == "OPTIONS" and self.access:
            # Describing an endpoint needs no more than its least-privileged method.
            return min(self.access.values(), key=lambda a: RANK[a.role])
        try:
            return self.access[method]
        except KeyError:
            raise exceptions.MethodNotAllowed(method) from None

    def _access_refusal(self, access: Access) -> Forbidden | None:
        return access_refusal(access, api_key=self.api_key, role=self.role)

    def _check_access(self, request) -> None:
        refusal = self._access_refusal(self.access_for_method(request.method))
        if refusal is not None:
            raise refusal

    def permits(self, method: str) -> bool:
        """Whether this caller (role with its agent grants, or key scopes) could call ``method`` here.

        For a read whose side effect belongs to a write (e.g. a comparison that
        would start a missing baseline): the same rule as the access map, asked
        instead of enforced.
        """
        return self._access_refusal(self.access_for_method(method)) is None

    def only_keys_agents(self, queryset, field: str = "agent__slug"):
        """``queryset`` narrowed to the agents the API key is limited to, if it is (as every list does)."""
        agents = self.keys_agents()
        return queryset.filter(**{f"{field}__in": agents}) if agents else queryset

    def keys_agents(self) -> list[str] | None:
        """The agents the API key is limited to; None for people and unlimited keys."""
        key = self.api_key
        return list(key.agents) if key is not None and key.agents else None

    def require_role(self, role: str, what: str) -> None:
        """A body-dependent escalation (e.g. ``force``): the person needs ``role``; keys cannot."""
        if self.api_key is not None:
            raise Forbidden(f"{what} needs a person with the {role} role; API keys cannot do it.")
        if not role_at_least(self.role, role):
            raise Forbidden(f"{what} needs the {role} role; you are {self.role}.",
                            details={"requiredRole": role, "role": self.role})

    def get_queryset(self):
        return self.refine_queryset(scoped(self.queryset.all(), self.organization))

    def refine_queryset(self, queryset):
        """Hook: narrow the org-scoped queryset (filters, select_related)."""
        return queryset

    def paginated_response(self, queryset=None):
        """One page of ``queryset`` (default: the scoped queryset), serialized, with cursor links."""
        page = self.paginate_queryset(self.get_queryset() if queryset is None else queryset)
        return self.get_paginated_response(self.get_serializer(page, many=True).data)

    def get_serializer_context(self):
        context = super().get_serializer_context()
        context["organization"] = self.organization
        context["agent"] = self.agent
        return context


class OrgScopedAPIView(_TenantScoped, APIView):
    """For single-purpose endpoints (custom ``:methods``, settings)."""


class OrgScopedGenericAPIView(_TenantScoped, generics.GenericAPIView):
    """For endpoints that need a queryset and serializers but are not CRUD sets."""


class OrgScopedViewSet(_TenantScoped, viewsets.GenericViewSet):
    """For CRUD collections of one tenant-owned model."""


class PrincipalAPIView(APIView):
    """Endpoints outside any tenant (``/v1/orgs``, ``/v1/auth/token``).

    Authentication is required unless the method is listed in
    ``dangerously_allow_anonymous`` (only the login endpoint does this).
    """

    dangerously_allow_anonymous: ClassVar[tuple[str, ...]] = ()
    people_only: ClassVar[bool] = True

    def initial(self, request, *args, **kwargs):
        if request.method in self.dangerously_allow_anonymous:
            self.permission_classes = []
        super().initial(request, *args, **kwargs)
        if self.people_only and isinstance(request.auth, ApiKey) and request.method not in self.dangerously_allow_anonymous:
            raise Forbidden("This endpoint is for people; API keys cannot call it.")
