"""Admin pages for golden datasets, their cases, and evaluations.

Every write goes through ``evaluations.services`` with ``actor_for(request)``, so
the admin obeys the API's rules and leaves the same AuditEvents. Roles mirror the
API's access table:

=============  ======  ======================================================================
model          view    add / change / delete
=============  ======  ======================================================================
Dataset        viewer  editor (``create_dataset`` / ``update_dataset`` / ``delete_dataset``);
                       bad metrics are form errors, checked by the service's own validator
Case           viewer  editor (``add_case`` / ``update_case`` / ``delete_case``, as the API)
EvaluationRun  viewer  nobody changes one; "Start an evaluation" (``runs.start``) and the
                       "cancel" action (``runs.cancel``) need the editor role on the
                       evaluated agent, per-agent grants included (``agents.admin_deploy.may``)
=============  ======  ======================================================================

An evaluation's page shows its aggregates (per metric mean score and pass rate,
critical failures), its comparison with the deployed revision's latest completed
evaluation on the same dataset (never starting one), and every case result with the
expected output and the actual output side by side, failed cases highlighted, each
metric's score with its reason.
"""
from __future__ import annotations

import json

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.validators import MaxLengthValidator
from django.db.models import Count
from django.http import HttpResponseRedirect
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.text import Truncator

from agents.admin import RawIdLookupMixin, admin_link, editable_agents, may_edit_agent, pretty_json, revision_link
from agents.admin_deploy import may
from agents.models import Revision
from fruxon.admin_base import OrgScopedAdmin, ReadOnlyRecords, OrgScopedModelForm, actor_for, adopt, orgs_with_role
from fruxon.api.parsers import BoundedJSONDecoder
from fruxon.errors import FruxonError, InvalidRequest
from orgs.admin import CommaSeparatedField
from orgs.roles import EDITOR, VIEWER

from .models import Case, CaseResult, Dataset, EvaluationRun
from .services import compare as comparing
from .services import datasets, runs

CASES_ON_DATASET_PAGE = 100
RESULTS_ON_EVALUATION_PAGE = 1000
EVALUATIONS_ON_DATASET_PAGE = 20


def _text(value) -> str:
    """A case's value as text: strings as they are, anything else as indented JSON; "-" for none."""
    if value is None:
        return "-"
    return value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False, default=str)


def _short(value, length: int = 80) -> str:
    if value is None:
        return "-"
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return Truncator(text).chars(length)


def _percent(value) -> str:
    return "-" if value is None else f"{value:.1%}"


# --- datasets ---------------------------------------------------------------------------------------
class JsonTextarea(forms.Textarea):
    def __init__(self, rows: int = 8):
        super().__init__(attrs={"rows": rows, "cols": 90, "class": "vLargeTextField", "spellcheck": "false"})


class DatasetForm(OrgScopedModelForm):
    metrics = forms.JSONField(
        decoder=BoundedJSONDecoder, widget=JsonTextarea(10), initial=[{"type": "exact"}],
        help_text='A JSON list, e.g. [{"type": "exact"}, {"type": "contains", "values": ["refund"]}, '
                  '{"type": "latencyCeiling", "maxMs": 2000}].')

    class Meta:
        model = Dataset
        fields = ("organization", "slug", "name", "description", "metrics", "pass_threshold")

    def clean_metrics(self):
        metrics = self.cleaned_data["metrics"]
        try:
            datasets._check_metrics(metrics)  # the service's own check: what it would refuse
        except InvalidRequest as exc:
            problems = exc.details.get("problems") or []
            raise ValidationError([f"{p['path']}: {p['message']}" for p in problems] or [exc.message]) from None
        return metrics


@admin.register(Dataset)
class DatasetAdmin(OrgScopedAdmin):
    """Members read datasets; editors create, change and delete them through the service."""

    change_role = EDITOR
    form = DatasetForm
    list_display = ("slug", "name", "organization", "case_count", "metric_types", "pass_threshold", "updated_at")
    list_filter = ("organization",)
    search_fields = ("slug", "name")
    list_select_related = ("organization",)
    detail_fields = ("created_at", "updated_at")

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(case_total=Count("cases"))

    def get_fieldsets(self, request, obj=None):
        if obj is None:
            return [(None, {"fields": DatasetForm.Meta.fields})]
        return [
            (None, {"fields": (*DatasetForm.Meta.fields, *self.detail_fields)}),
            ("Cases", {"fields": ("case_table",)}),
            ("Evaluations", {"fields": ("evaluation_table",)}),
        ]

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return ()
        return (*super().get_readonly_fields(request, obj), "slug", "case_table", "evaluation_table",
                *self.detail_fields)

    @admin.display(description="cases", ordering="case_total")
    def case_count(self, obj) -> int:
        return obj.case_total

    @admin.display(description="metrics")
    def metric_types(self, obj) -> str:
        return ", ".join(str(m.get("name") or m.get("type")) for m in obj.metrics if isinstance(m, dict)) or "-"

    @admin.display(description="cases")
    def case_table(self, obj) -> str:
        cases = list(obj.cases.order_by("id")[:CASES_ON_DATASET_PAGE + 1])
        return render_to_string("admin/evaluations/dataset/cases.html", {
            "rows": [{"case": c, "url": reverse("admin:evaluations_case_change", args=[c.pk]),
                      "input": _short(c.input, 120), "expected": _short(c.expected, 120)}
                     for c in cases[:CASES_ON_DATASET_PAGE]],
            "more": len(cases) > CASES_ON_DATASET_PAGE,
            "all_url": reverse("admin:evaluations_case_changelist") + f"?dataset__id__exact={obj.pk}",
            "add_url": reverse("admin:evaluations_case_add") + f"?dataset={obj.pk}",
            "may_add": getattr(obj, "may_change", False),
        })

    @admin.display(description="latest evaluations")
    def evaluation_table(self, obj) -> str:
        evaluations = (obj.evaluations.select_related("agent").order_by("-created_at", "-id")
                       [:EVALUATIONS_ON_DATASET_PAGE])
        return render_to_string("admin/evaluations/dataset/evaluations.html", {
            "rows": [{"evaluation": e, "url": reverse("admin:evaluations_evaluationrun_change", args=[e.pk]),
                      "revision_link": revision_link(e.revision_id), "pass_rate": _percent(e.pass_rate)}
                     for e in evaluations],
            "all_url": reverse("admin:evaluations_evaluationrun_changelist") + f"?dataset__id__exact={obj.pk}",
        })

    def get_object(self, request, object_id, from_field=None):
        dataset = super().get_object(request, object_id, from_field)
        if dataset is not None:
            dataset.may_change = self.has_change_permission(request, dataset)
        return dataset

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        if change:
            changes = {name: data[name] for name in ("name", "description", "metrics", "pass_threshold")
                       if name in form.changed_data}
            if not changes:
                return
            saved = datasets.update_dataset(actor=actor_for(request), dataset=obj, changes=changes)
        else:
            saved = datasets.create_dataset(actor=actor_for(request), organization=data["organization"],
                                            slug=data["slug"], name=data.get("name") or "",
                                            description=data.get("description") or "", metrics=data["metrics"],
                                            pass_threshold=data["pass_threshold"])
        adopt(obj, saved)

    def delete_model(self, request, obj):
        datasets.delete_dataset(actor=actor_for(request), dataset=obj)


# --- cases ------------------------------------------------------------------------------------------
class DatasetChoiceField(forms.ModelChoiceField):
    """Datasets labelled ``org / slug``: two orgs may use the same slug."""

    def label_from_instance(self, obj) -> str:
        return f"{obj.organization.slug} / {obj.slug}"


class CaseForm(OrgScopedModelForm):
    input = forms.JSONField(decoder=BoundedJSONDecoder, widget=JsonTextarea(6),
                            help_text='The agent\'s input as a JSON object: {"question": "..."}')
    expected = forms.JSONField(required=False, decoder=BoundedJSONDecoder, widget=JsonTextarea(6),
                               help_text='What the metrics compare with: a JSON value ("text", {...}, 42); '
                                         "empty for none.")
    tags = CommaSeparatedField(required=False, item_validators=[MaxLengthValidator(50)],
                               help_text="Comma-separated, at most 20.")

    class Meta:
        model = Case
        fields = ("dataset", "input", "expected", "critical", "tags")
        field_classes = {"dataset": DatasetChoiceField}

    def clean_input(self):
        value = self.cleaned_data["input"]
        if not isinstance(value, dict):
            raise ValidationError('The input must be a JSON object, e.g. {"question": "..."}.')
        return value

    def clean_tags(self):
        tags = self.cleaned_data["tags"]
        if len(tags) > 20:
            raise ValidationError("At most 20 tags.")
        return tags


@admin.register(Case)
class CaseAdmin(OrgScopedAdmin):
    """A dataset's cases: members read them; editors add and change them through the service."""

    change_role = EDITOR
    form = CaseForm
    list_display = ("id", "dataset", "input_short", "expected_short", "critical", "tag_list", "organization")
    list_filter = ("critical", "dataset", "organization")
    list_select_related = ("dataset", "organization")
    detail_fields = ("source_run_id", "created_at")

    def get_fieldsets(self, request, obj=None):
        if obj is None:
            return [(None, {"fields": CaseForm.Meta.fields})]
        return [(None, {"fields": ("organization", *CaseForm.Meta.fields, *self.detail_fields)})]

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return ()
        return (*super().get_readonly_fields(request, obj), "dataset", *self.detail_fields)

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "dataset":
            queryset = Dataset.objects.select_related("organization")
            if not request.user.is_superuser:
                queryset = queryset.filter(organization__in=orgs_with_role(request, self.change_role))
            kwargs["queryset"] = queryset
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    @admin.display(description="input")
    def input_short(self, obj) -> str:
        return _short(obj.input)

    @admin.display(description="expected")
    def expected_short(self, obj) -> str:
        return _short(obj.expected)

    @admin.display(description="tags")
    def tag_list(self, obj) -> str:
        return ", ".join(obj.tags) or "-"

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        if change:
            changes = {name: data[name] for name in ("input", "expected", "critical", "tags")
                       if name in form.changed_data}
            if changes:
                adopt(obj, datasets.update_case(actor=actor_for(request), case=obj, changes=changes))
            return
        saved = datasets.add_case(actor=actor_for(request), dataset=data["dataset"], input=data["input"],
                                  expected=data.get("expected"), critical=data.get("critical", False),
                                  tags=data.get("tags") or [])
        adopt(obj, saved)

    def delete_model(self, request, obj):
        # As DELETE /datasets/{d}/cases/{id}: results of past evaluations go with it; audited.
        datasets.delete_case(actor=actor_for(request), case=obj)


# --- evaluations --------------------------------------------------------------------------------------
class StartRevisionField(forms.ModelChoiceField):
    def label_from_instance(self, obj) -> str:
        return f"{obj.organization.slug} / {obj.agent.slug} · {obj.pk} · {Truncator(obj.message or '-').chars(50)}"


class StartEvaluationForm(forms.Form):
    revision = StartRevisionField(queryset=Revision.objects.none(), help_text="The revision to evaluate.")
    dataset = DatasetChoiceField(queryset=Dataset.objects.none(), help_text="A dataset of the same organization.")

    def __init__(self, *args, request, **kwargs):
        super().__init__(*args, **kwargs)
        agents = editable_agents(request)
        self.fields["revision"].queryset = (Revision.objects.filter(agent__in=agents)
                                            .select_related("agent", "organization").defer("spec")
                                            .order_by("-created_at", "-id"))
        datasets_qs = Dataset.objects.select_related("organization").order_by("organization__slug", "slug")
        if not request.user.is_superuser:
            datasets_qs = datasets_qs.filter(organization__in=orgs_with_role(request, VIEWER))
        self.fields["dataset"].queryset = datasets_qs

    def clean(self):
        cleaned = super().clean()
        revision, dataset = cleaned.get("revision"), cleaned.get("dataset")
        if revision is not None and dataset is not None and revision.organization_id != dataset.organization_id:
            self.add_error("dataset", "Choose a dataset of the revision's organization.")
        return cleaned


@admin.register(EvaluationRun)
class EvaluationRunAdmin(ReadOnlyRecords, RawIdLookupMixin, OrgScopedAdmin):
    """Evaluations, read-only; editors of an agent start and cancel its evaluations."""

    list_display = ("id", "agent", "revision_column", "dataset", "status", "trigger", "progress", "score_column",
                    "pass_rate_column", "cost_usd", "created_by_label", "created_at")
    list_filter = ("status", "trigger", "agent", "dataset", "organization")
    search_fields = ("=id",)
    list_select_related = ("agent", "dataset", "organization")
    date_hierarchy = "created_at"
    actions = ("cancel_selected",)
    summary_fields = ("id", "organization", "agent", "revision_column", "dataset", "status", "trigger", "progress",
                      "score_column", "pass_rate_column", "cost_usd", "error", "created_by_label", "created_at",
                      "started_at", "finished_at")

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(done_count=Count("results"))

    def get_fieldsets(self, request, obj=None):
        return [
            (None, {"fields": self.summary_fields}),
            ("Scores", {"fields": ("aggregates_table",)}),
            ("Against the deployed revision", {"fields": ("comparison",)}),
            ("Cases: expected against actual", {"fields": ("results_table",)}),
            ("Frozen configuration", {"fields": ("metrics_pretty", "pass_threshold"), "classes": ("collapse",)}),
        ]

    def get_readonly_fields(self, request, obj=None):
        return (*self.summary_fields, "aggregates_table", "comparison", "results_table", "metrics_pretty",
                "pass_threshold")

    def has_evaluate_permission(self, request) -> bool:
        """Starting and cancelling: offered to whoever is an editor somewhere; each agent is checked when used."""
        return may_edit_agent(request, None)

    # -- start and cancel -----------------------------------------------------------------------
    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [path("start/", wrap(self.start_view), name="evaluations_evaluationrun_start"), *super().get_urls()]

    def changelist_view(self, request, extra_context=None):
        return super().changelist_view(request, {**(extra_context or {}),
                                                 "may_start": self.has_evaluate_permission(request)})

    def start_view(self, request):
        if not self.has_evaluate_permission(request):
            raise PermissionDenied
        initial = {key: request.GET[key] for key in ("revision", "dataset") if request.GET.get(key)}
        form = StartEvaluationForm(request.POST or None, request=request, initial=initial)
        if request.method == "POST" and form.is_valid():
            revision, dataset = form.cleaned_data["revision"], form.cleaned_data["dataset"]
            if not may(request, revision.agent, EDITOR):
                raise PermissionDenied
            try:
                evaluation = runs.start(actor=actor_for(request), agent=revision.agent, revision_id=revision.pk,
                                        dataset=dataset, trigger="admin")
            except FruxonError as exc:
                self.message_user(request, exc.message, messages.ERROR)
            else:
                self.message_user(request, f"Evaluation {evaluation.id} queued: {revision.pk} on {dataset.slug} "
                                           f"({evaluation.total} case(s)).", messages.SUCCESS)
                return HttpResponseRedirect(reverse("admin:evaluations_evaluationrun_change", args=[evaluation.pk]))
        return TemplateResponse(request, "admin/evaluations/evaluationrun/start.html", {
            **self.admin_site.each_context(request), "opts": self.opts, "title": "Start an evaluation", "form": form,
        })

    @admin.action(description="Cancel the selected evaluations", permissions=["evaluate"])
    def cancel_selected(self, request, queryset):
        rows = list(queryset.select_related("agent", "organization"))
        if not all(may(request, row.agent, EDITOR) for row in rows):
            raise PermissionDenied
        cancelled = 0
        for row in rows:
            try:
                runs.cancel(actor=actor_for(request), evaluation=row)
            except FruxonError as exc:
                self.message_user(request, f"{row.id}: {exc.message}", messages.ERROR)
            else:
                cancelled += 1
        if cancelled:
            self.message_user(request, f"Cancelled {cancelled} evaluation(s).", messages.SUCCESS)

    # -- columns and sections -------------------------------------------------------------------
    @admin.display(description="revision", ordering="revision_id")
    def revision_column(self, obj) -> str:
        return revision_link(obj.revision_id)

    @admin.display(description="progress")
    def progress(self, obj) -> str:
        done = getattr(obj, "done_count", None)
        if done is None:
            done = obj.results.count()
        return f"{done}/{obj.total}"

    @admin.display(description="overall score", ordering="overall_score")
    def score_column(self, obj) -> str:
        return "-" if obj.overall_score is None else f"{obj.overall_score:.4f}"

    @admin.display(description="pass rate", ordering="pass_rate")
    def pass_rate_column(self, obj) -> str:
        return _percent(obj.pass_rate)

    @admin.display(description="metrics")
    def metrics_pretty(self, obj) -> str:
        return pretty_json(obj.metrics)

    @admin.display(description="aggregates")
    def aggregates_table(self, obj) -> str:
        metrics = (obj.aggregates or {}).get("metrics", {})
        return render_to_string("admin/evaluations/evaluationrun/aggregates.html", {
            "evaluation": obj, "score": self.score_column(obj), "pass_rate": _percent(obj.pass_rate),
            "critical_failures": (obj.aggregates or {}).get("criticalFailures"),
            "metrics": [{"name": name, "mean": m.get("meanScore"), "pass_rate": _percent(m.get("passRate")),
                         "count": m.get("count")} for name, m in sorted(metrics.items())],
        })

    @admin.display(description="comparison")
    def comparison(self, obj) -> str:
        context = {"evaluation": obj}
        baseline, _ = comparing.deployed_baseline(agent=obj.agent, dataset=obj.dataset, start_if_missing=False)
        if obj.agent.deployed_revision_id is None:
            context["note"] = "The agent has nothing deployed."
        elif obj.revision_id == obj.agent.deployed_revision_id:
            context["note"] = "This is an evaluation of the deployed revision."
        elif baseline is None:
            context["note"] = (f"The deployed revision {obj.agent.deployed_revision_id} has no completed evaluation "
                               f"on {obj.dataset.slug} to compare with.")
        else:
            result = comparing.compare(obj, baseline, tolerance=obj.agent.gate_tolerance)
            context |= {"result": result, "baseline_link": admin_link(baseline, baseline.pk),
                        "regressions": [{**r, "expected": _short(r["expected"]), "output": _short(r["output"])}
                                        for r in result.get("regressions", [])]}
        return render_to_string("admin/evaluations/evaluationrun/comparison.html", context)

    @admin.display(description="results")
    def results_table(self, obj) -> str:
        results = list(CaseResult.objects.filter(evaluation=obj).select_related("case").order_by("case_id")
                       [:RESULTS_ON_EVALUATION_PAGE + 1])
        rows = [{
            "result": r, "case": r.case, "case_url": reverse("admin:evaluations_case_change", args=[r.case_id]),
            "input": _text(r.case.input), "expected": _text(r.case.expected), "actual": _text(r.output),
            "run_link": "-" if not r.run_id else format_html(
                '<a href="{}">{}</a>', reverse("admin:monitoring_run_change", args=[r.run_id]), r.run_id),
            "scores": r.scores,
        } for r in results[:RESULTS_ON_EVALUATION_PAGE]]
        return render_to_string("admin/evaluations/evaluationrun/results.html", {
            "rows": rows, "more": len(results) > RESULTS_ON_EVALUATION_PAGE,
            "failed": sum(1 for r in rows if not r["result"].passed), "pending": max(obj.total - len(results), 0)
            if len(results) <= RESULTS_ON_EVALUATION_PAGE else None,
        })
