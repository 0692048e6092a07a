"""Alerts: what was raised, and whether it arrived (``GET /alerts``, ``GET /alerts/{id}``, ``:redeliver``),
and the webhook signing secret's rotation (``POST /settings/webhook-secret:rotate``).

Owners only (keys: ``org:read`` to read, ``org:write`` to redeliver and rotate). An
API key limited to some agents sees only alerts about those agents (the payload's
``agent``); alerts about no agent are hidden from it.
"""
from __future__ import annotations

from django.db.models import Exists, OuterRef, Prefetch
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.response import Response

from fruxon.api.base import Access, OrgScopedAPIView, OrgScopedViewSet
from fruxon.api.serializers import StrictSerializer, validated
from orgs.actor import Actor
from orgs.roles import OWNER
from orgs.services import organizations

from .. import alerts
from ..models import Alert, AlertDelivery
from .serializers import query_data

STATUS_HELP = ("pending: being delivered or waiting for its next retry; delivered: the receiver accepted it (a 2xx "
               "answer, or the mail server took the email); failed: every retry failed for "
               "FRUXON_ALERT_RETRY_HOURS (24 h)")


class AlertDeliverySerializer(serializers.ModelSerializer):
    channel = serializers.ChoiceField(choices=[AlertDelivery.WEBHOOK, AlertDelivery.EMAIL])
    status = serializers.ChoiceField(choices=list(AlertDelivery.STATUSES), help_text=STATUS_HELP)
    attempts = serializers.IntegerField(help_text="attempts in the current series (since the alert or its last "
                                                  "redeliver)")
    lastError = serializers.CharField(source="last_error", help_text="why the last attempt failed, in generic words "
                                                                     "(never the receiver's answer); empty if none")
    nextAttemptAt = serializers.DateTimeField(source="next_attempt_at", allow_null=True)
    lastAttemptAt = serializers.DateTimeField(source="last_attempt_at", allow_null=True)
    deliveredAt = serializers.DateTimeField(source="delivered_at", allow_null=True)
    seriesStartedAt = serializers.DateTimeField(source="series_started_at")

    class Meta:
        model = AlertDelivery
        fields = ["channel", "status", "attempts", "lastError", "nextAttemptAt", "lastAttemptAt", "deliveredAt",
                  "seriesStartedAt"]


class AlertSerializer(serializers.ModelSerializer):
    kind = serializers.CharField(help_text="budget.threshold, evaluation.score_dropped, deployment.degraded, ...")
    status = serializers.SerializerMethodField(help_text="failed if any channel failed, pending if any is pending, "
                                                         "else delivered")
    webhookId = serializers.CharField(source="message_id", help_text="the webhook-id header of every attempt")
    webhook = serializers.CharField(help_text="the URL webhooks go to; empty if none")
    emails = serializers.ListField(child=serializers.CharField())
    createdAt = serializers.DateTimeField(source="created_at")
    deliveredAt = serializers.DateTimeField(source="delivered_at", allow_null=True,
                                            help_text="when every channel had delivered")
    deliveries = AlertDeliverySerializer(many=True, help_text="one per channel")

    class Meta:
        model = Alert
        fields = ["id", "kind", "subject", "status", "payload", "webhookId", "webhook", "emails", "createdAt",
                  "deliveredAt", "deliveries"]

    def get_status(self, alert) -> str:
        statuses = {d.status for d in alert.deliveries.all()}
        for status in (AlertDelivery.FAILED, AlertDelivery.PENDING):
            if status in statuses:
                return status
        return AlertDelivery.DELIVERED


class AlertFilter(serializers.Serializer):
    kind = serializers.CharField(required=False, help_text="exact kind, or a prefix such as 'budget'")
    status = serializers.ChoiceField(choices=list(AlertDelivery.STATUSES), required=False,
                                     help_text="the alert's status (see the alert's `status`)")
    since = serializers.DateTimeField(required=False, help_text="ISO 8601 date-time, inclusive (UTC if no offset)")
    until = serializers.DateTimeField(required=False, help_text="ISO 8601 date-time, exclusive (UTC if no offset)")


def _with_status(queryset, status: str):
    def having(s):
        return Exists(AlertDelivery.objects.filter(alert=OuterRef("pk"), status=s))

    if status == AlertDelivery.FAILED:
        return queryset.filter(having(AlertDelivery.FAILED))
    if status == AlertDelivery.PENDING:
        return queryset.filter(having(AlertDelivery.PENDING)).exclude(having(AlertDelivery.FAILED))
    return queryset.exclude(having(AlertDelivery.PENDING)).exclude(having(AlertDelivery.FAILED))


class AlertViewSet(OrgScopedViewSet):
    queryset = Alert.objects.all()
    serializer_class = AlertSerializer
    lookup_url_kwarg = "alert"
    lookup_field = "pk"
    ordering = ("-created_at", "-id")
    access = {"GET": Access(OWNER, "org:read"), "POST": Access(OWNER, "org:write")}

    def refine_queryset(self, queryset):
        queryset = queryset.select_related("organization").prefetch_related(
            Prefetch("deliveries", queryset=AlertDelivery.objects.order_by("id")))
        if (agents := self.keys_agents()) is not None:
            queryset = queryset.filter(payload__agent__in=agents)
        if self.action == "list":
            params = validated(AlertFilter, query_data(self.request))
            if kind := params.get("kind"):
                queryset = queryset.filter(kind__startswith=kind) if "." not in kind else queryset.filter(kind=kind)
            if status := params.get("status"):
                queryset = _with_status(queryset, status)
            if since := params.get("since"):
                queryset = queryset.filter(created_at__gte=since)
            if until := params.get("until"):
                queryset = queryset.filter(created_at__lt=until)
        return queryset

    @extend_schema(parameters=[AlertFilter], description=(
        "Every alert (budget threshold, evaluation score drop, degraded deployment, ...), newest first, with its "
        "payload and each channel's delivery status, attempts and last error. A key limited to some agents sees "
        "only alerts about them."))
    def list(self, request, tenant):
        return self.paginated_response()

    def retrieve(self, request, tenant, alert):
        return Response(self.get_serializer(self.object).data)

    @extend_schema(request=None, responses={202: AlertSerializer, 404: OpenApiResponse(description="not_found")},
                   description=(
        "Sends the alert again on each of its channels: a new attempt series (attempts from 0, retried for "
        "FRUXON_ALERT_RETRY_HOURS), due now. The webhook keeps its webhook-id (it is the same message; a receiver "
        "that already processed it may ignore it). Audited as `alert.redelivered`. 202: the delivery is under way; "
        "the answer shows the alert as it is after the first attempt when that ran at once."))
    def redeliver(self, request, tenant, alert):
        alerts.redeliver(actor=Actor.from_request(request), alert=self.object)
        return Response(self.get_serializer(self.get_queryset().get(pk=self.object.pk)).data, status=202)


# --- the signing secret ------------------------------------------------------------------------------------
class WebhookSecretRotate(StrictSerializer):
    graceSeconds = serializers.IntegerField(
        required=False, min_value=0, max_value=7 * 24 * 3600,
        help_text="how long the replaced secret keeps signing as a second signature (default "
                  "FRUXON_WEBHOOK_SECRET_GRACE_HOURS, 24 h); 0 stops it at once (e.g. after a leak)")


class WebhookSecretRotated(serializers.Serializer):
    webhookSecret = serializers.CharField(help_text="the new Standard Webhooks signing secret whsec_<base64>: shown "
                                                    "only in this answer")
    previousSecretSignsUntil = serializers.DateTimeField(allow_null=True, help_text="until when the replaced "
                                                                                    "secret also signs")


class WebhookSecretRotateView(OrgScopedAPIView):
    """A new alert-webhook signing secret (Standard Webhooks ``whsec_...``), shown once in the answer."""

    access = {"POST": Access(OWNER, "org:write")}

    @extend_schema(request=WebhookSecretRotate, responses={200: WebhookSecretRotated}, description=(
        "Makes a new signing secret and answers it (the only time it is shown). For `graceSeconds` (default 24 h) "
        "webhooks carry two signatures, `v1,<new> v1,<previous>`, so a receiver that still verifies with the "
        "previous secret keeps accepting them until it switches. Audited as `org.webhook_secret_rotated` (without "
        "the secret)."))
    def post(self, request, tenant):
        data = validated(WebhookSecretRotate, request.data)  # no body: {}; a body that is not an object: 400
        grace = data.get("graceSeconds")
        if grace is None:
            grace = int(alerts.setting("FRUXON_WEBHOOK_SECRET_GRACE_HOURS") * 3600)
        org, secret = organizations.rotate_webhook_secret(actor=Actor.from_request(request),
                                                          organization=self.organization, grace_seconds=grace)
        return Response({"webhookSecret": secret, "previousSecretSignsUntil": org.webhook_secret_previous_until})
