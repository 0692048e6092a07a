"""``/agents/{agent}/budget``: read (with live spend) for viewers, set and remove for owners."""
from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response

from fruxon.api.base import Access, OrgScopedAPIView
from fruxon.api.serializers import StrictSerializer, validated
from fruxon.errors import NotFound
from orgs.actor import Actor
from orgs.roles import OWNER, VIEWER

from .. import budgets
from ..models import Budget


class BudgetPut(StrictSerializer):
    period = serializers.ChoiceField(choices=Budget.PERIODS, default="month", help_text="UTC day or month")
    amountUsd = serializers.DecimalField(max_digits=14, decimal_places=4, min_value=0)
    enforce = serializers.BooleanField(default=True, help_text="true: a hard cap; false: alerts only")
    alertThresholds = serializers.ListField(child=serializers.FloatField(min_value=0.01, max_value=10),
                                            default=lambda: [0.5, 0.8, 1.0], max_length=10,
                                            help_text="fractions of amountUsd (default [0.5, 0.8, 1.0]; [] for none)")
    alertWebhook = serializers.URLField(required=False, allow_blank=True, default="", max_length=2000)
    alertEmails = serializers.ListField(child=serializers.EmailField(), default=list, max_length=20)


class BudgetOut(serializers.Serializer):
    period = serializers.CharField()
    amountUsd = serializers.CharField()
    enforce = serializers.BooleanField()
    alertThresholds = serializers.ListField(child=serializers.FloatField())
    alertWebhook = serializers.CharField()
    alertEmails = serializers.ListField(child=serializers.CharField())
    spentUsd = serializers.CharField()
    reservedUsd = serializers.CharField()
    usagePercent = serializers.FloatField(allow_null=True)
    periodStart = serializers.DateTimeField()
    resetsAt = serializers.DateTimeField()


class BudgetView(OrgScopedAPIView):
    access = {"GET": Access(VIEWER, "budgets:read"), "PUT": Access(OWNER, "budgets:write"),
              "DELETE": Access(OWNER, "budgets:write")}

    @extend_schema(responses={200: BudgetOut, 404: OpenApiResponse(description="the agent has no budget")})
    def get(self, request, tenant, agent):
        budget = Budget.objects.filter(agent=self.agent).first()
        if budget is None:
            raise NotFound(f"Agent '{self.agent.slug}' has no budget.")
        return Response(BudgetOut(budgets.status(budget)).data)

    @extend_schema(request=BudgetPut, responses={200: BudgetOut, 201: BudgetOut})
    def put(self, request, tenant, agent):
        data = validated(BudgetPut, request.data)
        budget, created = budgets.put_budget(
            actor=Actor.from_request(request), agent=self.agent, period=data["period"], amount_usd=data["amountUsd"],
            enforce=data["enforce"], alert_thresholds=data["alertThresholds"], alert_webhook=data["alertWebhook"],
            alert_emails=data["alertEmails"])
        return Response(BudgetOut(budgets.status(budget)).data, status=status.HTTP_201_CREATED if created else 200)

    @extend_schema(responses={204: None})
    def delete(self, request, tenant, agent):
        budgets.delete_budget(actor=Actor.from_request(request), agent=self.agent)
        return Response(status=status.HTTP_204_NO_CONTENT)
