"""``GET/PUT /v1/{tenant}/rate-limits`` and the ``rateLimits`` object of API keys (issue 14 item 1)."""
from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.response import Response

from fruxon.api.base import Access, OrgScopedAPIView
from fruxon.api.serializers import StrictSerializer, validated
from orgs.actor import Actor
from orgs.roles import OWNER, VIEWER
from orgs.services import rate_limits

_PER_MINUTE = "per minute, in any 60 s (a sliding window); null = unlimited"


def _limit_field(name: str, what: str, **kwargs) -> serializers.IntegerField:
    return serializers.IntegerField(min_value=1, max_value=rate_limits.MAXIMUM[name], allow_null=True,
                                    help_text=f"{what} {_PER_MINUTE}", **kwargs)


class RateLimitsSerializer(StrictSerializer):
    """The org's three limits; on PUT a missing one becomes null (unlimited)."""

    requestsPerMinute = _limit_field("requests_per_minute", "Authenticated /v1 requests", required=False, default=None)
    executionsPerMinute = _limit_field("executions_per_minute", "Executes", required=False, default=None)
    tokensPerMinute = _limit_field("tokens_per_minute", "Model tokens (reserved at each call's upper bound, settled "
                                   "to the usage)", required=False, default=None)


class KeyRateLimitsSerializer(StrictSerializer):
    """A key's limits, each within the org's; null = only the org's limit applies to the key.
    In a PATCH only the limits given change."""

    requestsPerMinute = _limit_field("requests_per_minute", "Requests by this key", required=False)
    executionsPerMinute = _limit_field("executions_per_minute", "Executes by this key", required=False)
    tokensPerMinute = _limit_field("tokens_per_minute", "Model tokens of this key's runs", required=False)


class RateLimitsView(OrgScopedAPIView):
    """The org-wide rate limits: viewers read them, owners set them."""

    access = {"GET": Access(VIEWER, "org:read"), "PUT": Access(OWNER, "org:write")}

    @extend_schema(responses=RateLimitsSerializer)
    def get(self, request, tenant):
        return Response(rate_limits.to_api(self.organization))

    @extend_schema(request=RateLimitsSerializer, responses=RateLimitsSerializer, description=(
        "Replace the org's limits (a missing one becomes null, unlimited). They apply to every authenticated "
        "request, execute and model call in the org, people's and keys' alike, on top of each key's own. "
        "Audited as `org.rate_limits_changed`."))
    def put(self, request, tenant):
        data = validated(RateLimitsSerializer, request.data)
        org = rate_limits.set_org_limits(actor=Actor.from_request(request), organization=self.organization,
                                         limits=rate_limits.from_api(data))
        return Response(rate_limits.to_api(org))


KEY_LIMITS_400 = OpenApiResponse(description="invalid_request: a limit is not a whole number in range, or a key's "
                                             "limit is above the org's (details.fields names it, e.g. "
                                             "rateLimits.requestsPerMinute)")
KEY_LIMITS_403 = OpenApiResponse(description="forbidden: the caller lacks keys:write, or (a key) does not hold the "
                                             "target key's scopes and agents, or would give rate limits looser than "
                                             "its own (details: missingScopes, agents, rateLimits)")
