"""Admin pages for alerts: what was raised, each channel's delivery status, and redelivery.

Owners only (like ``GET /v1/{tenant}/alerts``): the list and page show the payload,
and per channel the status (pending, delivered, failed), attempts, next attempt
and last error (generic words, never a receiver's answer). Nobody adds, changes
or deletes alerts here; the "Redeliver" action (owners of every selected alert's
org) starts a new attempt series through ``monitoring.alerts.redeliver``
(audited ``alert.redelivered``), as ``POST /alerts/{id}:redeliver`` does.
"""
from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import Prefetch
from django.utils.html import format_html, format_html_join

from agents.admin import pretty_json
from fruxon.admin_base import OrgScopedAdmin, ReadOnlyRecords, actor_for
from orgs.roles import OWNER

from . import alerts
from .models import Alert, AlertDelivery


def _status(alert) -> str:
    statuses = {d.status for d in alert.deliveries.all()}
    for status in (AlertDelivery.FAILED, AlertDelivery.PENDING):
        if status in statuses:
            return status
    return AlertDelivery.DELIVERED


@admin.register(Alert)
class AlertAdmin(ReadOnlyRecords, OrgScopedAdmin):
    view_role = OWNER
    change_role = OWNER
    list_display = ("id", "kind", "subject", "organization", "status", "deliveries_summary", "created_at")
    list_filter = ("kind", "deliveries__status", "organization")
    date_hierarchy = "created_at"
    actions = ["redeliver"]
    fields = ("id", "organization", "kind", "subject", "status", "created_at", "delivered_at", "webhook", "emails",
              "webhook_id", "deliveries_table", "payload_pretty")
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("organization").prefetch_related(
            Prefetch("deliveries", queryset=AlertDelivery.objects.order_by("id"))).distinct()

    def has_redeliver_permission(self, request) -> bool:
        return self.has_role(request, None, OWNER)

    @admin.display(description="status")
    def status(self, obj) -> str:
        return _status(obj)

    @admin.display(description="deliveries")
    def deliveries_summary(self, obj) -> str:
        return "; ".join(
            f"{d.channel}: {d.status}, {d.attempts} attempt(s)" + (f", {d.last_error}" if d.last_error else "")
            for d in obj.deliveries.all())

    @admin.display(description="webhook-id")
    def webhook_id(self, obj) -> str:
        return obj.message_id

    @admin.display(description="payload")
    def payload_pretty(self, obj) -> str:
        return pretty_json(obj.payload)

    @admin.display(description="deliveries")
    def deliveries_table(self, obj) -> str:
        rows = format_html_join(
            "", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            ((d.channel, d.status, d.attempts, d.next_attempt_at or "-", d.delivered_at or "-", d.last_error or "-")
             for d in obj.deliveries.all()))
        return format_html(
            "<table><thead><tr><th>channel</th><th>status</th><th>attempts</th><th>next attempt</th>"
            "<th>delivered</th><th>last error</th></tr></thead><tbody>{}</tbody></table>", rows)

    @admin.action(description="Redeliver the selected alerts (a new attempt series)", permissions=["redeliver"])
    def redeliver(self, request, queryset):
        self.require_role(request, queryset, OWNER)
        count = 0
        for alert in queryset:
            alerts.redeliver(actor=actor_for(request), alert=alert)
            count += 1
        self.message_user(request, f"Redelivering {count} alert(s).", messages.SUCCESS)
