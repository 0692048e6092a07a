"""Admin pages for deployments: the deploy history, and org export / import.

==========  ======  =========================================================
page        who     what
==========  ======  =========================================================
Deployment  viewer  the deploy history, read-only (deploys go through the API)
Export      owner   download an org's ``fruxon.export/v1`` document
Import      owner   upload a document, see the dry-run plan, then apply it
==========  ======  =========================================================

Export and import are two views hung on the Deployment admin
(``admin:deployments_transfer_export`` / ``..._import``), linked from its
list. They offer only the organizations where the user is an owner (every
org for a superuser) and call the same services as the API
(``deployments.transfer``) with ``actor_for(request)``. Import is two steps:
the upload is validated and planned with ``dry_run=True`` (nothing written)
and the page shows the plan; "Apply" posts the same document back, which is
validated, re-planned and applied in one transaction. A refusal (an invalid
document, a deploy that is not ready) is shown on the page; nothing is
written. No page shows a secret value: documents never hold one.
"""
from __future__ import annotations

import json

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse, HttpResponseRedirect
from django.template import engines
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone

from fruxon.admin_base import OrgScopedAdmin, ReadOnlyRecords, actor_for, orgs_with_role
from fruxon.errors import FruxonError
from orgs.models import Organization
from orgs.roles import OWNER

from . import transfer
from .models import Deployment

MAX_UPLOAD_BYTES = 2 * 1024 * 1024  # larger documents: the API or ``manage.py import_org``

_PAGE = """{% extends "admin/base_site.html" %}
{% block breadcrumbs %}<div class="breadcrumbs"><a href="{% url 'admin:index' %}">Home</a> &rsaquo;
<a href="{% url 'admin:deployments_deployment_changelist' %}">Deployments</a> &rsaquo; {{ title }}</div>{% endblock %}
{% block content %}<div id="content-main">
<p>{{ intro }}</p>
{% if error %}<ul class="errorlist"><li>{{ error.code }}: {{ error.message }}</li>
{% for p in error.problems %}<li><code>{{ p.path }}</code>: {{ p.message }}</li>{% endfor %}</ul>{% endif %}
{% if plan %}
<h2>Plan: {{ plan.sourceOrg }} &rarr; {{ plan.targetOrg }} ({{ plan.changes }} change{{ plan.changes|pluralize }})</h2>
<table><thead><tr><th>kind</th><th>created</th><th>updated</th><th>unchanged</th></tr></thead><tbody>
{% for row in plan_rows %}<tr><td>{{ row.kind }}</td><td>{{ row.created|join:", " }}</td>
<td>{{ row.updated|join:", " }}</td><td>{{ row.unchanged|join:", " }}</td></tr>{% endfor %}
<tr><td>cases</td><td>{{ plan.cases.created }}</td><td></td><td>{{ plan.cases.unchanged }}</td></tr>
</tbody></table>
{% if plan.integrations.kept %}<p>Integrations kept as the target has them: {{ plan.integrations.kept|join:", " }}</p>{% endif %}
<p><strong>Missing secrets</strong> (create them in the target; never imported):
{{ plan.missingSecrets|join:", "|default:"none" }}</p>
<p><strong>Missing integrations</strong>: {{ plan.missingIntegrations|join:", "|default:"none" }}</p>
{% if plan.deploys %}<p><strong>Deploys</strong>: {% for d in plan.deploys %}{{ d.agent }} &rarr; {{ d.contentHash|slice:":12" }}
({{ d.action }}){% if not forloop.last %}, {% endif %}{% endfor %}. Readiness is checked when applying.</p>{% endif %}
{% for w in plan.warnings %}<p class="warning">{{ w }}</p>{% endfor %}
{% if apply_form %}<form method="post">{% csrf_token %}{{ apply_form }}
<input type="submit" name="_apply" value="Apply this import" class="default"></form>{% endif %}
{% endif %}
{% if form %}<form method="post" enctype="multipart/form-data">{% csrf_token %}
<table>{{ form.as_table }}</table><input type="submit" value="{{ submit }}" class="default"></form>{% endif %}
</div>{% endblock %}"""

_CHANGE_LIST = """{% extends "admin/change_list.html" %}
{% block object-tools-items %}{% if may_transfer %}
<li><a href="{% url 'admin:deployments_transfer_export' %}">Export an organization</a></li>
<li><a href="{% url 'admin:deployments_transfer_import' %}">Import into an organization</a></li>
{% endif %}{{ block.super }}{% endblock %}"""


def _template(source: str):
    return engines["django"].from_string(source)


def owner_orgs(request):
    """Organizations the user may export or import: owner there (superusers: all)."""
    if request.user.is_superuser:
        return Organization.objects.all()
    return Organization.objects.filter(pk__in=orgs_with_role(request, OWNER))


class ExportForm(forms.Form):
    organization = forms.ModelChoiceField(queryset=Organization.objects.none())
    agents = forms.CharField(required=False, help_text="Comma-separated agent slugs; empty: every agent.")
    history = forms.BooleanField(required=False, help_text="Every revision, not only the deployed one.")

    def __init__(self, *args, orgs, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["organization"].queryset = orgs


class ImportForm(forms.Form):
    organization = forms.ModelChoiceField(queryset=Organization.objects.none(), help_text="The target.")
    document = forms.FileField(help_text="A fruxon.export/v1 JSON document.")
    deploy = forms.BooleanField(required=False, help_text="Also deploy each agent's deployed revision.")

    def __init__(self, *args, orgs, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["organization"].queryset = orgs


class ApplyForm(forms.Form):
    organization = forms.ModelChoiceField(queryset=Organization.objects.none(), widget=forms.HiddenInput)
    payload = forms.CharField(widget=forms.HiddenInput, strip=False)
    deploy = forms.BooleanField(required=False, widget=forms.HiddenInput)

    def __init__(self, *args, orgs, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["organization"].queryset = orgs


def _error(exc: FruxonError) -> dict:
    return {"code": exc.code, "message": exc.message, "problems": exc.details.get("problems") or []}


def _plan_context(plan: dict) -> dict:
    rows = [{"kind": kind, **plan[kind]} for kind in ("agents", "revisions", "datasets", "budgets", "integrations")]
    for row in rows:
        for key in ("created", "updated", "unchanged"):
            row[key] = [f"{e['agent']}@{e['contentHash'][:12]}" if isinstance(e, dict) else e for e in row[key]]
    return {"plan": plan, "plan_rows": rows}


@admin.register(Deployment)
class DeploymentAdmin(ReadOnlyRecords, OrgScopedAdmin):
    """The deploy history (read-only), with the org export and import pages."""

    list_display = ("agent", "kind", "from_revision_id", "to_revision_id", "actor_label", "forced", "at", "organization")
    list_filter = ("organization", "kind")
    list_select_related = ("agent", "organization")
    date_hierarchy = "at"
    fields = ("organization", "agent", "kind", "from_revision", "to_revision", "actor_label", "reason", "forced", "at",
              "checks")
    readonly_fields = fields
    change_list_template = _template(_CHANGE_LIST)

    def changelist_view(self, request, extra_context=None):
        return super().changelist_view(request, {**(extra_context or {}), "may_transfer": owner_orgs(request).exists()})

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("transfer/export/", wrap(self.export_view), name="deployments_transfer_export"),
            path("transfer/import/", wrap(self.import_view), name="deployments_transfer_import"),
            *super().get_urls(),
        ]

    # -- pages ----------------------------------------------------------------------------------
    def _page(self, request, title: str, **context) -> TemplateResponse:
        return TemplateResponse(request, _template(_PAGE), {
            **self.admin_site.each_context(request), "title": title, "opts": self.model._meta, **context})

    def _owner_orgs_or_403(self, request):
        orgs = owner_orgs(request)
        if not orgs.exists():
            raise PermissionDenied
        return orgs

    def export_view(self, request):
        orgs = self._owner_orgs_or_403(request)
        form = ExportForm(request.POST or None, orgs=orgs)
        error = None
        if request.method == "POST" and form.is_valid():
            org, raw = form.cleaned_data["organization"], form.cleaned_data["agents"].strip()
            agents = [s.strip() for s in raw.split(",") if s.strip()] if raw else None
            try:
                document = transfer.export_organization(organization=org, agents=agents,
                                                        history=form.cleaned_data["history"])
            except FruxonError as exc:
                error = _error(exc)
            else:
                response = HttpResponse(json.dumps(document, indent=2, ensure_ascii=False),
                                        content_type="application/json; charset=utf-8")
                name = f"fruxon-export-{org.slug}-{timezone.now():%Y%m%d-%H%M%S}.json"
                response["Content-Disposition"] = f'attachment; filename="{name}"'
                return response
        return self._page(request, "Export an organization", form=form, error=error, submit="Download",
                          intro="A JSON document with agents, revisions, datasets with cases, budgets and integrations. "
                                "It holds secret names, never a value.")

    def import_view(self, request):
        orgs = self._owner_orgs_or_403(request)
        if request.method == "POST" and "_apply" in request.POST:
            return self._apply(request, orgs)
        form = ImportForm(request.POST or None, request.FILES or None, orgs=orgs)
        context = {"form": form, "submit": "Show the plan", "intro": "Upload a document: you will see what it would "
                   "create, update and leave alone (nothing is written) before applying it."}
        if request.method == "POST" and form.is_valid():
            upload = form.cleaned_data["document"]
            if upload.size > MAX_UPLOAD_BYTES:
                context["error"] = {"code": "too_large", "message": "Use the API or manage.py import_org for "
                                                                  "documents over 2 MiB.", "problems": []}
            else:
                text = upload.read().decode("utf-8", errors="replace")
                org, deploy = form.cleaned_data["organization"], form.cleaned_data["deploy"]
                try:
                    document = transfer.validate_document(transfer.parse_json(text))
                    result = transfer.import_document(actor=actor_for(request), organization=org, document=document,
                                                      dry_run=True, deploy=deploy)
                except FruxonError as exc:
                    context["error"] = _error(exc)
                else:
                    apply_form = ApplyForm(orgs=orgs, initial={"organization": org.pk, "payload": text, "deploy": deploy})
                    context |= _plan_context(result.plan.to_dict()) | {"apply_form": apply_form, "form": None}
        return self._page(request, "Import into an organization", **context)

    def _apply(self, request, orgs):
        form = ApplyForm(request.POST, orgs=orgs)
        if not form.is_valid():
            return self._page(request, "Import into an organization", form=ImportForm(orgs=orgs), submit="Show the plan",
                              error={"code": "invalid_request", "message": "The import form expired; upload again.",
                                     "problems": []})
        org = form.cleaned_data["organization"]
        try:
            document = transfer.validate_document(transfer.parse_json(form.cleaned_data["payload"]))
            result = transfer.import_document(actor=actor_for(request), organization=org, document=document,
                                              deploy=form.cleaned_data["deploy"])
        except FruxonError as exc:
            plan = exc.details.get("plan")
            return self._page(request, "Import into an organization", error=_error(exc), form=ImportForm(orgs=orgs),
                              submit="Show the plan", intro="Nothing was written.",
                              **(_plan_context(plan) if plan else {}))
        plan = result.plan
        self.message_user(request, f"Imported {plan.source_org} into {org.slug}: {plan.changes} change(s); "
                                   f"{len(result.deployments)} deploy(s). Missing secrets: "
                                   f"{', '.join(plan.missing_secrets) or 'none'}.", messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:deployments_deployment_changelist"))
