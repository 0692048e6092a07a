"""Admin pages for what ran (runs with their trace, conversations) and model prices.

Viewers read traces and conversations here. Runs and spans are written once
by the execution service; nobody adds or changes them in the admin. Roles:

=============  ==============  ====================================================
model          view            add / change / delete
=============  ==============  ====================================================
Run            viewer          nobody adds or changes; owners delete (audited)
Conversation   viewer          nobody
ModelPrice     anyone who may  built-in rows (no organization): superusers only;
               use the admin   org and agent overrides: that org's owners, through
                               ``monitoring.pricing.set_overrides`` (audited)
Budget         viewer          owners, through ``monitoring.budgets.put_budget`` /
                               ``delete_budget`` (audited)
=============  ==============  ====================================================

A budget's list row and page show its live usage from ``monitoring.budgets.status``
(the ledger: spent and reserved in the current period, usage percent, when the
period resets), never a cached copy.

Spans have no admin of their own: a run's page shows its span tree (steps >
llm / tool / subAgent calls, nested by ``parent_id``). Span inputs hold the
templates the engine was given (``{{secret.NAME}}``), never secret values
(DESIGN rule 7), so the trace is safe to show to viewers as stored.
"""
from __future__ import annotations

import json
from decimal import Decimal

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.validators import EmailValidator
from django.db import transaction
from django.db.models import Q
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from agents.admin import AgentChoiceField, RawIdLookupMixin, admin_link, deletion_summary, pretty_json, revision_link
from agents.models import Agent
from fruxon import egress
from fruxon.admin_base import OrgScopedAdmin, ReadOnlyRecords, OrgScopedModelForm, actor_for, adopt, org_roles, orgs_with_role
from orgs.admin import CommaSeparatedField
from orgs.models import Organization
from orgs.roles import OWNER

from . import budgets, pricing
from .models import Budget, Conversation, ModelPrice, Run, Span
from .services import delete_run
from .spans import detail_spans

TURNS_ON_CONVERSATION_PAGE = 200


# --- the trace ------------------------------------------------------------------------------------
def span_tree(spans: list[Span]) -> list[tuple[Span, int]]:
    """``spans`` (in recorded order) depth-first, each with its depth.

    A span whose ``parent_id`` names no span of the run is shown as a root, so
    nothing recorded is ever hidden.
    """
    ids = {span.id for span in spans}
    children: dict[str, list[Span]] = {}
    roots: list[Span] = []
    for span in spans:
        if span.parent_id and span.parent_id in ids and span.parent_id != span.id:
            children.setdefault(span.parent_id, []).append(span)
        else:
            roots.append(span)
    ordered, seen = [], set()
    stack = [(span, 0) for span in reversed(roots)]
    while stack:
        span, depth = stack.pop()
        if span.id in seen:
            continue
        seen.add(span.id)
        ordered.append((span, depth))
        stack.extend((child, depth + 1) for child in reversed(children.get(span.id, [])))
    return ordered


def _json_text(value) -> str:
    return "" if value is None else json.dumps(value, indent=2, ensure_ascii=False, default=str)


def _usd(value: Decimal) -> str:
    return f"${value:.6f}"


def _tokens(row) -> str:
    return (f"in {row.input_tokens} (cached {row.cached_input_tokens}) · out {row.output_tokens}"
            f" · reasoning {row.reasoning_tokens}")


# --- runs -------------------------------------------------------------------------------------------
@admin.register(Run)
class RunAdmin(RawIdLookupMixin, OrgScopedAdmin):
    """Runs and their trace view. Read-only for everyone; org owners may delete a run."""

    change_role = OWNER  # governs delete only: add and change are refused below
    list_display = ("id", "agent", "revision_id_column", "organization", "source", "status", "cost", "latency",
                    "created_at")
    list_filter = ("status", "source", "agent", "organization")
    search_fields = ("=id",)
    search_help_text = "Exact run id (run_...)."
    date_hierarchy = "created_at"
    list_select_related = ("agent", "organization")
    summary_fields = ("id", "organization", "agent", "revision_page", "conversation_page", "source", "status",
                      "created_at", "latency", "usage", "cost", "usage_over_reservation", "pinned")
    payload_fields = ("input_pretty", "output_pretty", "error_pretty")
    fieldsets = [
        (None, {"fields": summary_fields}),
        ("Input and output", {"fields": payload_fields}),
        ("Trace", {"fields": ("trace",)}),
    ]
    readonly_fields = (*summary_fields, *payload_fields, "trace")

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        match = getattr(request, "resolver_match", None)
        if match is not None and match.url_name == "monitoring_run_changelist":
            queryset = queryset.defer("input", "output", "error")  # the list never shows payloads
        return queryset

    def get_search_results(self, request, queryset, search_term):
        """Run ids match exactly (an indexed primary-key lookup), never by a scan."""
        terms = search_term.split()
        if not terms:
            return queryset, False
        return queryset.filter(pk__in=terms), False

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="revision", ordering="revision_id")
    def revision_id_column(self, obj) -> str:
        # The id is on the run row: naming the FK itself would load every revision (and its spec).
        return obj.revision_id

    @admin.display(description="revision")
    def revision_page(self, obj) -> str:
        return revision_link(obj.revision_id)

    @admin.display(description="conversation")
    def conversation_page(self, obj) -> str:
        return admin_link(obj.conversation) if obj.conversation_id else "-"

    @admin.display(description="cost (USD)", ordering="cost_usd")
    def cost(self, obj) -> str:
        return _usd(obj.cost_usd)

    @admin.display(description="latency", ordering="latency_ms")
    def latency(self, obj) -> str:
        return f"{obj.latency_ms} ms (provider {obj.provider_ms} ms)"

    @admin.display(description="tokens")
    def usage(self, obj) -> str:
        return _tokens(obj)

    @admin.display(description="input")
    def input_pretty(self, obj) -> str:
        return pretty_json(obj.input)

    @admin.display(description="output")
    def output_pretty(self, obj) -> str:
        return pretty_json(obj.output)

    @admin.display(description="error")
    def error_pretty(self, obj) -> str:
        return pretty_json(obj.error)

    @admin.display(description="spans")
    def trace(self, obj) -> str:
        shown, truncated = detail_spans(obj)
        rows = [
            {"span": span, "indent": depth * 1.5, "cost": _usd(span.cost_usd), "tokens": _tokens(span),
             "input": _json_text(span.input), "output": _json_text(span.output), "error": _json_text(span.error),
             "attributes": _json_text(span.attributes) if span.attributes else ""}
            for span, depth in span_tree(shown)
        ]
        # The same cut as the API's run detail: the first FRUXON_RUN_DETAIL_SPANS spans, then a note.
        total = obj.spans.count() if truncated else len(shown)
        return render_to_string("admin/monitoring/run/trace.html", {
            "rows": rows, "truncated": truncated, "total": total, "shown": len(shown),
            "spans_url": f"/v1/{obj.organization.slug}/runs/{obj.pk}/spans"})

    def delete_model(self, request, obj):
        delete_run(actor=actor_for(request), run=obj)

    def get_deleted_objects(self, objs, request):
        runs = list(objs)
        perms_needed = set() if all(self.has_delete_permission(request, run) for run in runs) else {"run"}
        spans = Span.objects.filter(run__in=[run.pk for run in runs]).count()
        return deletion_summary(runs, {"runs": len(runs), "spans": spans}, perms_needed)


# --- conversations ----------------------------------------------------------------------------------
@admin.register(Conversation)
class ConversationAdmin(ReadOnlyRecords, OrgScopedAdmin):
    """Conversations, read-only: each page lists its runs in order, one per turn."""

    list_display = ("key", "agent", "organization", "turns", "created_at", "updated_at")
    list_filter = ("agent", "organization")
    search_fields = ("=key",)
    list_select_related = ("agent", "organization")
    date_hierarchy = "updated_at"
    fields = ("key", "organization", "agent", "turns", "created_at", "updated_at", "turn_list")
    readonly_fields = fields

    @admin.display(description="runs, in order")
    def turn_list(self, obj) -> str:
        runs = list(obj.runs.order_by("created_at", "id")[:TURNS_ON_CONVERSATION_PAGE + 1])
        rows = [
            {"number": number, "run": run, "url": reverse("admin:monitoring_run_change", args=[run.pk]),
             "input": _json_text(run.input), "output": _json_text(run.output), "cost": _usd(run.cost_usd)}
            for number, run in enumerate(runs[:TURNS_ON_CONVERSATION_PAGE], start=1)
        ]
        return render_to_string("admin/monitoring/conversation/turns.html", {
            "rows": rows,
            "more": len(runs) > TURNS_ON_CONVERSATION_PAGE,
            "all_url": reverse("admin:monitoring_run_changelist") + f"?conversation__id__exact={obj.pk}",
        })


# --- model prices ---------------------------------------------------------------------------------
class ModelPriceForm(forms.ModelForm):
    """One price row. Prices are non-negative; an agent row belongs to the agent's org."""

    class Meta:
        model = ModelPrice
        fields = ("organization", "agent", "provider", "model", "input_per_million", "cached_input_per_million",
                  "output_per_million", "reasoning_per_million")

    def clean(self):
        cleaned = super().clean()
        for name in ("input_per_million", "cached_input_per_million", "output_per_million", "reasoning_per_million"):
            value = cleaned.get(name)
            if value is not None and value < 0:
                self.add_error(name, "A price cannot be negative.")
        # Both are read-only (not form fields) once a row exists.
        org = cleaned.get("organization") if "organization" in self.fields else self.instance.organization
        agent = cleaned.get("agent") if "agent" in self.fields else self.instance.agent
        if agent is not None and (org is None or agent.organization_id != org.pk):
            self.add_error("agent" if "agent" in self.fields else None,
                           "An agent's price belongs to the agent's organization.")
        provider, model = cleaned.get("provider"), cleaned.get("model")
        if provider and model:
            twins = ModelPrice.objects.filter(organization=org, agent=agent, provider=provider, model=model)
            if twins.exclude(pk=self.instance.pk).exists():
                self.add_error("model", f"{provider}/{model} already has a price at this level.")
        return cleaned


def _row(price: ModelPrice) -> dict:
    """A price as one row of ``pricing.set_overrides``."""
    return {"provider": price.provider, "model": price.model, "inputPerMillion": price.input_per_million,
            "cachedInputPerMillion": price.cached_input_per_million, "outputPerMillion": price.output_per_million,
            "reasoningPerMillion": price.reasoning_per_million}


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    """Prices per million tokens: built-in rows for all, overrides per org or agent.

    ``OrgScopedAdmin`` hides rows without an organization, and here those are the
    built-in prices every member needs to read; so this small admin decides
    itself: everyone who may use the admin reads the built-in rows and their
    orgs' overrides; only superusers change built-in rows; an org's owners
    change its overrides, each save replacing that level through
    ``pricing.set_overrides`` (one AuditEvent ``prices.set``).
    """

    form = ModelPriceForm
    list_display = ("provider", "model", "level", "organization", "agent", "input_per_million",
                    "cached_input_per_million", "output_per_million", "reasoning_per_million", "updated_at")
    list_filter = ("provider", ("organization", admin.RelatedOnlyFieldListFilter),
                   ("agent", admin.RelatedOnlyFieldListFilter))
    search_fields = ("provider", "model")
    list_select_related = ("organization", "agent")

    # -- who may do what --------------------------------------------------------------------
    def _owner_of(self, request, org_id) -> bool:
        return request.user.is_superuser or (org_id is not None and org_id in orgs_with_role(request, OWNER))

    def has_module_permission(self, request) -> bool:
        return self.admin_site.has_permission(request)

    def has_view_permission(self, request, obj=None) -> bool:
        if obj is None or obj.organization_id is None or request.user.is_superuser:
            return self.admin_site.has_permission(request)
        return obj.organization_id in org_roles(request)

    def has_add_permission(self, request) -> bool:
        return request.user.is_superuser or bool(orgs_with_role(request, OWNER))

    def has_change_permission(self, request, obj=None) -> bool:
        if obj is None:
            return self.has_add_permission(request)
        return self._owner_of(request, obj.organization_id)

    def has_delete_permission(self, request, obj=None) -> bool:
        return self.has_change_permission(request, obj)

    # -- rows and choices -------------------------------------------------------------------
    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        if request.user.is_superuser:
            return queryset
        return queryset.filter(Q(organization__isnull=True) | Q(organization__in=set(org_roles(request))))

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        owned = None if request.user.is_superuser else orgs_with_role(request, OWNER)
        if db_field.related_model is Organization and owned is not None:
            kwargs["queryset"] = Organization.objects.filter(pk__in=owned)
            kwargs["required"] = True  # only superusers write built-in rows
        elif db_field.related_model is Agent:
            agents = Agent.objects.select_related("organization")
            kwargs["queryset"] = agents if owned is None else agents.filter(organization__in=owned)
            kwargs["form_class"] = AgentChoiceField
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def get_readonly_fields(self, request, obj=None):
        # A row keeps its level: moving it between orgs or agents would move a tenant's data.
        return () if obj is None else ("organization", "agent", "updated_at")

    @admin.display(description="level")
    def level(self, obj) -> str:
        return "agent" if obj.agent_id else "org" if obj.organization_id else "built-in"

    # -- writes ---------------------------------------------------------------------------------
    def save_model(self, request, obj, form, change):
        if obj.organization_id is None:  # a built-in row; only superusers get here
            obj.updated_at = timezone.now()
            obj.save()
            return
        level = ModelPrice.objects.filter(organization_id=obj.organization_id, agent_id=obj.agent_id)
        rows = [_row(price) for price in level.exclude(pk=obj.pk)] + [_row(obj)]
        pricing.set_overrides(actor=actor_for(request), organization=obj.organization, agent=obj.agent, rows=rows)
        adopt(obj, ModelPrice.objects.get(organization_id=obj.organization_id, agent_id=obj.agent_id,
                                          provider=obj.provider, model=obj.model))

    def delete_model(self, request, obj):
        if not self.has_delete_permission(request, obj):
            raise PermissionDenied
        if obj.organization_id is None:
            obj.delete()
            return
        # set_overrides re-creates a level's rows, so rows are matched by (provider, model), not pk.
        level = ModelPrice.objects.filter(organization_id=obj.organization_id, agent_id=obj.agent_id)
        rows = [_row(price) for price in level if (price.provider, price.model) != (obj.provider, obj.model)]
        pricing.set_overrides(actor=actor_for(request), organization=obj.organization, agent=obj.agent, rows=rows)

    def delete_queryset(self, request, queryset):
        """Delete each row through ``delete_model`` (the service), all or nothing."""
        with transaction.atomic():
            for obj in list(queryset.select_related("organization", "agent")):
                self.delete_model(request, obj)


# --- budgets -----------------------------------------------------------------------------------------
class ThresholdsField(forms.CharField):
    """Alert thresholds typed as ``0.5, 0.8, 1`` (fractions of the amount); cleans to a sorted list of floats."""

    def prepare_value(self, value):
        return ", ".join(f"{v:g}" for v in value) if isinstance(value, list | tuple) else value

    def to_python(self, value):
        items = [item.strip() for item in (super().to_python(value) or "").split(",") if item.strip()]
        try:
            values = sorted({float(item) for item in items})
        except ValueError:
            raise ValidationError("Write fractions of the amount separated by commas, e.g. 0.5, 0.8, 1.") from None
        if len(values) > 10:
            raise ValidationError("At most 10 thresholds.")
        if any(not 0.01 <= v <= 10 for v in values):
            raise ValidationError("Each threshold is a fraction of the amount between 0.01 and 10.")
        return values

    def has_changed(self, initial, data):
        try:
            return sorted(initial or []) != self.to_python(data)
        except ValidationError:
            return True


class BudgetForm(OrgScopedModelForm):
    """The fields of ``PUT /agents/{agent}/budget``, with the API's limits."""

    alert_thresholds = ThresholdsField(required=False, label="alert thresholds",
                                       help_text="Fractions of the amount, each alerting once per period: 0.5, 0.8, 1")
    alert_emails = CommaSeparatedField(required=False, item_validators=[EmailValidator()], label="alert emails",
                                       help_text="Comma-separated, at most 20.")
    alert_webhook = forms.URLField(required=False, max_length=2000, assume_scheme="https", label="alert webhook",
                                   help_text="POSTed a JSON alert when a threshold is crossed.")

    class Meta:
        model = Budget
        fields = ("agent", "period", "amount_usd", "enforce", "alert_thresholds", "alert_webhook", "alert_emails")
        field_classes = {"agent": AgentChoiceField}
        labels = {"amount_usd": "amount (USD)", "enforce": "hard cap"}
        help_texts = {"enforce": "On: runs past the amount are refused. Off: alerts only.",
                      "period": "UTC day or month."}

    def clean_amount_usd(self):
        amount = self.cleaned_data["amount_usd"]
        if amount is not None and amount < 0:
            raise ValidationError("The amount cannot be negative.")
        return amount

    def clean_alert_webhook(self):
        url = self.cleaned_data["alert_webhook"]
        refusal = egress.url_refusal(url, "The alert webhook")  # as put_budget refuses it
        if refusal is not None:
            raise ValidationError(refusal.message)
        return url

    def clean_alert_emails(self):
        emails = self.cleaned_data["alert_emails"]
        if len(emails) > 20:
            raise ValidationError("At most 20 addresses.")
        return emails


@admin.register(Budget)
class BudgetAdmin(OrgScopedAdmin):
    """Per-agent budgets with live spend: members read them; owners set and remove them through the service."""

    change_role = OWNER
    form = BudgetForm
    list_display = ("agent", "organization", "period", "amount", "enforce", "thresholds", "spent", "reserved",
                    "usage", "resets_at")
    list_filter = ("period", "enforce", "organization")
    list_select_related = ("agent", "organization")
    usage_fields = ("spent", "reserved", "usage", "period_start", "resets_at")

    def get_fieldsets(self, request, obj=None):
        settings = ("period", "amount_usd", "enforce", "alert_thresholds", "alert_webhook", "alert_emails")
        if obj is None:
            return [(None, {"fields": ("agent", *settings)})]
        return [(None, {"fields": ("organization", "agent", *settings, "updated_at")}),
                ("This period", {"fields": self.usage_fields})]

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return ()
        fields = (*super().get_readonly_fields(request, obj), "agent", "updated_at", *self.usage_fields)
        if not self.has_change_permission(request, obj):  # viewers: the lists as text, not Python reprs
            fields = (*fields, "alert_thresholds", "alert_emails")
        return fields

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "agent":
            agents = Agent.objects.select_related("organization").filter(budget__isnull=True)
            if not request.user.is_superuser:
                agents = agents.filter(organization__in=orgs_with_role(request, OWNER))
            kwargs["queryset"] = agents
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    # -- live usage (one ledger read per budget and request) ----------------------------------------
    def _status(self, obj) -> dict:
        if not hasattr(obj, "_fruxon_status"):
            obj._fruxon_status = budgets.status(obj)
        return obj._fruxon_status

    @admin.display(description="amount", ordering="amount_usd")
    def amount(self, obj) -> str:
        return f"${obj.amount_usd}/{obj.period}"

    @admin.display(description="alert thresholds")
    def thresholds(self, obj) -> str:
        return ", ".join(f"{t:.0%}" for t in obj.alert_thresholds) or "-"

    @admin.display(description="spent (USD)")
    def spent(self, obj) -> str:
        return f"${self._status(obj)['spentUsd']}"

    @admin.display(description="reserved (USD)")
    def reserved(self, obj) -> str:
        return f"${self._status(obj)['reservedUsd']}"

    @admin.display(description="usage")
    def usage(self, obj) -> str:
        percent = self._status(obj)["usagePercent"]
        return "-" if percent is None else f"{percent:.2f}%"

    @admin.display(description="period start")
    def period_start(self, obj):
        return self._status(obj)["periodStart"]

    @admin.display(description="resets at")
    def resets_at(self, obj):
        return self._status(obj)["resetsAt"]

    # -- writes -----------------------------------------------------------------------------------
    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        agent = obj.agent if change else data["agent"]
        saved, _ = budgets.put_budget(
            actor=actor_for(request), agent=agent, period=data["period"], amount_usd=data["amount_usd"],
            enforce=data["enforce"], alert_thresholds=data.get("alert_thresholds") or [],
            alert_webhook=data.get("alert_webhook") or "", alert_emails=data.get("alert_emails") or [])
        adopt(obj, saved)

    def delete_model(self, request, obj):
        budgets.delete_budget(actor=actor_for(request), agent=obj.agent)

from . import admin_alerts  # noqa: E402,F401  (alerts and their deliveries: monitoring.admin_alerts)
