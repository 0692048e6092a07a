"""``/agents/{agent}/budget``: read (with live spend) for viewers, set and remove for owners.

``/agents/{agent}/budget:correct`` (beyond API.md): an owner sets the current
period's spent, down as well as up, with a reason; audited (``budget.corrected``).
"""
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


class BudgetCorrect(StrictSerializer):
    spentUsd = serializers.DecimalField(max_digits=14, decimal_places=8, min_value=0,
                                        help_text="the current period's spent; not below what its recorded runs cost")
    reason = serializers.CharField(max_length=500, help_text="why (a fixed price, a provider refund); kept in the audit log")


class BudgetCorrected(BudgetOut):
    previousUsd = serializers.CharField(help_text="spent before the correction")
    reason = serializers.CharField()


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


class BudgetCorrectionView(OrgScopedAPIView):
    """The explicit, audited way down: spent otherwise only ever rises (reconciliation never lowers it)."""

    access = {"POST": Access(OWNER, "budgets:write")}

    @extend_schema(request=BudgetCorrect, responses={
        200: BudgetCorrected,
        400: OpenApiResponse(description="invalid_request: no reason, or spentUsd below the recorded runs' cost"),
        404: OpenApiResponse(description="the agent has no budget")})
    def post(self, request, tenant, agent):
        data = validated(BudgetCorrect, request.data)
        correction = budgets.correct_spent(actor=Actor.from_request(request), agent=self.agent,
                                           spent_usd=data["spentUsd"], reason=data["reason"])
        budget = Budget.objects.get(agent=self.agent)
        return Response(BudgetCorrected(budgets.status(budget) | {"previousUsd": correction["previousUsd"],
                                                                  "reason": correction["reason"]}).data)
