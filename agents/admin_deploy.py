"""Shipping from the admin: deploy, roll back, schedule, shadow; the deploy history with its health.

Pages hung on an agent (``AgentDeployViews``, wired by ``AgentAdmin.get_urls``):

=====================================  =======  =======================================================
page                                   GET      POST
=====================================  =======  =======================================================
``<agent>/deploy/?revision=rev_...``   viewer   editor: ``deployments.services.deploy``; ``_force``: owner
``<agent>/rollback/``                  viewer   editor: ``deployments.services.rollback``
``<agent>/schedule/``                  viewer   editor: ``deployments.scheduling.schedule``
``<agent>/shadow/``                    viewer   editor: ``deployments.shadow.configure``
``<agent>/shadow/off/``                -        editor: ``deployments.shadow.disable``
=====================================  =======  =======================================================

"viewer" / "editor" / "owner" are the user's role *on the agent* (``agents.admin.agent_role``):
the org role, replaced by a per-agent grant unless the user owns the org, exactly as
the API computes it. Only owners force (as ``DeployView`` requires ``OWNER``). A viewer
sees every page read-only, with no form and no button, and gets 403 on POST. An
agent of another org (or a missing one) answers Django's "doesn't exist" redirect.

The deploy page is the seed's "Revisions -> Deploy -> Confirm": the readiness checklist
(``deployments.readiness.check``; failures highlighted, blocking ones marked), the
diff against the deployed revision (changes table and unified prompt diff), a
reason, and "Deploy" -- replaced, while a blocking check fails, by "Force deploy"
(owners only; a reason is required) or by a note saying who can force.

Admins registered here, all read-only (writes go through the pages above):

* ``ScheduledDeployment``: status and failure reason; "cancel" (action and button,
  per-row editor check) calls ``scheduling.cancel``.
* ``ShadowConfig``: what runs in shadow, linking to the agent's shadow page.
* ``ShadowResult``: live against shadow output, equal, similarity, cost and latency deltas.
* ``Deployment``: the history (agent, from, to, kind, actor, reason, forced, at) and, on a
  deployment's page, its readiness checklist and ``deployments.health.deployment_health``.
  ``deployments/admin.py`` owns the registration (it adds org export/import); this module
  re-registers a subclass of whatever is registered there, adding the columns and the
  health section, so both keep working whichever is edited.

Service refusals (``FruxonError``: not ready, already deployed, nothing to roll back
to, run time in the past, ...) are shown as admin error messages; nothing is written.
"""
from __future__ import annotations

import json

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseNotAllowed, HttpResponseRedirect
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.text import Truncator

from deployments import readiness, scheduling, services, shadow
from deployments.health import deployment_health
from deployments.models import Deployment, ScheduledDeployment, ShadowConfig, ShadowResult
from fruxon.admin_base import OrgScopedAdmin, ReadOnlyRecords, actor_for
from fruxon.errors import FruxonError
from orgs.roles import EDITOR, OWNER, role_at_least

from .admin import admin_link, agent_role, diff_context, revision_link
from .models import Agent, Revision

REVISIONS_IN_CHOICES = 200
DEPLOYMENTS_ON_AGENT_PAGE = 10
SHADOW_RESULTS_ON_PAGE = 20


# --- roles on an agent --------------------------------------------------------------------------
def role_on(request, agent: Agent) -> str | None:
    """The user's role on ``agent`` (grants included); superusers are owners everywhere."""
    return OWNER if request.user.is_superuser else agent_role(request, agent)


def may(request, agent: Agent, role: str) -> bool:
    return role_at_least(role_on(request, agent), role)


def require(request, agent: Agent, role: str) -> None:
    if not may(request, agent, role):
        raise PermissionDenied


def _agent_url(agent: Agent, view: str = "change") -> str:
    return reverse(f"admin:agents_agent_{view}", args=[agent.pk])


def agent_tools(request, agent: Agent) -> list[dict]:
    """The buttons on an agent's page: the actions for editors, the checklist link for viewers."""
    if not may(request, agent, EDITOR):
        return [{"name": "readiness", "label": "Readiness checklist", "url": _agent_url(agent, "deploy")}]
    tools = [{"name": "deploy", "label": "Deploy…", "url": _agent_url(agent, "deploy")}]
    if agent.deployed_revision_id:
        tools.append({"name": "rollback", "label": "Roll back…", "url": _agent_url(agent, "rollback")})
    tools += [{"name": "schedule", "label": "Schedule…", "url": _agent_url(agent, "schedule")},
              {"name": "shadow", "label": "Shadow…", "url": _agent_url(agent, "shadow")}]
    return tools


def revision_tools(request, revision: Revision) -> list[dict]:
    """The buttons on a revision's page."""
    agent = revision.agent
    checklist = _agent_url(agent, "deploy") + f"?revision={revision.pk}"
    if not may(request, agent, EDITOR):
        return [{"name": "readiness", "label": "Readiness checklist", "url": checklist}]
    tools = []
    if agent.deployed_revision_id != revision.pk:
        tools.append({"name": "deploy", "label": "Deploy…", "url": checklist})
    tools.append({"name": "evaluate", "label": "Evaluate…",
                  "url": reverse("admin:evaluations_evaluationrun_start") + f"?revision={revision.pk}"})
    return tools


def _shadow_summary(agent: Agent, config: ShadowConfig | None) -> dict | None:
    results = ShadowResult.objects.filter(agent=agent)
    if config is not None:
        results = results.filter(candidate_revision_id=config.revision_id)
    summary = shadow.summary(results)
    return summary if summary["count"] or config is not None else None


def deployment_overview(agent: Agent) -> str:
    """The agent page's "Deployment" section: pointer, rollback target, history, schedules, shadow."""
    config = ShadowConfig.objects.filter(agent=agent).first()
    deployments = list(Deployment.objects.filter(agent=agent).order_by("-at", "-id")[:DEPLOYMENTS_ON_AGENT_PAGE])
    pending = list(ScheduledDeployment.objects.filter(agent=agent, status="pending").order_by("run_at", "id"))
    return render_to_string("admin/agents/agent/deployment_overview.html", {
        "agent": agent,
        "deployed_link": revision_link(agent.deployed_revision_id),
        "rollback_target": revision_link(services.default_rollback_target(agent)),
        "deployments": [{"row": d, "url": reverse("admin:deployments_deployment_change", args=[d.pk]),
                         "from_link": revision_link(d.from_revision_id), "to_link": revision_link(d.to_revision_id)}
                        for d in deployments],
        "history_url": reverse("admin:deployments_deployment_changelist") + f"?agent__id__exact={agent.pk}",
        "pending": [{"row": s, "url": reverse("admin:deployments_scheduleddeployment_change", args=[s.pk]),
                     "revision_link": revision_link(s.revision_id)} for s in pending],
        "schedules_url": reverse("admin:deployments_scheduleddeployment_changelist") + f"?agent__id__exact={agent.pk}",
        "shadow": config,
        "shadow_link": revision_link(config.revision_id) if config else None,
        "shadow_summary": _shadow_summary(agent, config),
        "shadow_results_url": reverse("admin:deployments_shadowresult_changelist") + f"?agent__id__exact={agent.pk}",
    })


# --- forms -------------------------------------------------------------------------------------
class RevisionChoiceField(forms.ModelChoiceField):
    """An agent's revisions, newest first, labelled ``rev_... · message``."""

    def __init__(self, agent: Agent, *, exclude: str | None = None, **kwargs):
        queryset = Revision.objects.filter(agent=agent).defer("spec").order_by("-created_at", "-id")
        if exclude:
            queryset = queryset.exclude(pk=exclude)
        self.deployed_id = agent.deployed_revision_id
        super().__init__(queryset=queryset, **kwargs)

    def label_from_instance(self, obj) -> str:
        label = f"{obj.pk} · {Truncator(obj.message or '-').chars(60)}"
        return label + (" (deployed)" if obj.pk == self.deployed_id else "")


def _reason_field(required: bool = False) -> forms.CharField:
    return forms.CharField(required=required, max_length=1000, strip=True,
                           widget=forms.Textarea(attrs={"rows": 3, "cols": 80}),
                           help_text="Why: recorded on the deployment and in the audit trail.")


class DeployForm(forms.Form):
    reason = _reason_field()


class RollbackForm(forms.Form):
    revision = forms.ChoiceField(label="roll back to")
    reason = _reason_field()

    def __init__(self, *args, targets: list[tuple[str, str]], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["revision"].choices = targets


class ScheduleForm(forms.Form):
    revision = forms.Field()
    run_at = forms.DateTimeField(
        label="run at", widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        help_text="In UTC. The deploy is applied by the beat tick at that time, readiness re-checked then.")
    reason = _reason_field()

    def __init__(self, *args, agent: Agent, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["revision"] = RevisionChoiceField(agent, exclude=agent.deployed_revision_id)


class ShadowForm(forms.Form):
    revision = forms.Field()
    sample_rate = forms.FloatField(label="sample rate", min_value=0.0, max_value=1.0, initial=0.1,
                                   help_text="The fraction of live runs (0..1) the candidate also runs on.")

    def __init__(self, *args, agent: Agent, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["revision"] = RevisionChoiceField(agent, exclude=agent.deployed_revision_id,
                                                      label="candidate revision")


def _show_errors(model_admin, request, exc: FruxonError) -> None:
    model_admin.message_user(request, exc.message, messages.ERROR)


# --- the agent's pages ---------------------------------------------------------------------------
class AgentDeployViews:
    """Deploy, rollback, schedule and shadow pages of ``AgentAdmin`` (see the module docstring)."""

    def __init__(self, model_admin):
        self.admin = model_admin

    def get_urls(self):
        wrap = self.admin.admin_site.admin_view
        return [
            path("<path:object_id>/deploy/", wrap(self.deploy_view), name="agents_agent_deploy"),
            path("<path:object_id>/rollback/", wrap(self.rollback_view), name="agents_agent_rollback"),
            path("<path:object_id>/schedule/", wrap(self.schedule_view), name="agents_agent_schedule"),
            path("<path:object_id>/shadow/off/", wrap(self.shadow_off_view), name="agents_agent_shadow_off"),
            path("<path:object_id>/shadow/", wrap(self.shadow_view), name="agents_agent_shadow"),
        ]

    # -- shared ----------------------------------------------------------------------------------
    def _agent(self, request, object_id) -> Agent | None:
        """The agent if the user may see it; None for another org's, or a missing, agent."""
        agent = self.admin.get_object(request, unquote(object_id))
        if agent is None or not self.admin.has_view_permission(request, agent):
            return None
        return agent

    def _missing(self, request, object_id):
        return self.admin._get_obj_does_not_exist_redirect(request, Agent._meta, object_id)

    def _render(self, request, agent: Agent, template: str, title: str, **context) -> TemplateResponse:
        return TemplateResponse(request, template, {
            **self.admin.admin_site.each_context(request),
            "opts": Agent._meta, "original": agent, "agent": agent, "title": title,
            "agent_url": _agent_url(agent), "role": role_on(request, agent),
            "may_deploy": may(request, agent, EDITOR), "may_force": may(request, agent, OWNER),
            "deployed_link": revision_link(agent.deployed_revision_id),
            **context,
        })

    def _done(self, request, agent: Agent, text: str) -> HttpResponseRedirect:
        self.admin.message_user(request, text, messages.SUCCESS)
        return HttpResponseRedirect(_agent_url(agent))

    # -- deploy ----------------------------------------------------------------------------------
    def deploy_view(self, request, object_id):
        agent = self._agent(request, object_id)
        if agent is None:
            return self._missing(request, object_id)
        force = "_force" in request.POST
        if request.method == "POST":
            require(request, agent, OWNER if force else EDITOR)
        choices = list(Revision.objects.filter(agent=agent).defer("spec").order_by("-created_at", "-id")
                       [:REVISIONS_IN_CHOICES])
        wanted = request.POST.get("revision") or request.GET.get("revision")
        if wanted:
            revision = Revision.objects.filter(agent=agent, pk=wanted).first()
            if revision is None:
                self.admin.message_user(request, f"Revision '{wanted}' is not a revision of {agent.slug}.",
                                        messages.ERROR)
        else:  # the newest revision that is not deployed
            revision = next((r for r in choices if r.pk != agent.deployed_revision_id), choices[0] if choices else None)
        form = DeployForm(request.POST or None)
        if request.method == "POST" and revision is not None and form.is_valid():
            reason = form.cleaned_data["reason"]
            if force and not reason:
                form.add_error("reason", "A forced deploy needs a reason.")
            else:
                try:
                    deployment = services.deploy(actor=actor_for(request), agent=agent, revision_id=revision.pk,
                                                 reason=reason, force=force)
                except FruxonError as exc:
                    _show_errors(self.admin, request, exc)
                    agent.refresh_from_db()
                else:
                    forced = " (forced past failing checks)" if deployment.forced else ""
                    return self._done(request, agent, f"Deployed {revision.pk} to {agent.slug}{forced}.")
        context = {"choices": [{"id": r.pk, "message": r.message, "deployed": r.pk == agent.deployed_revision_id,
                                "selected": revision is not None and r.pk == revision.pk} for r in choices],
                   "revision": revision, "form": form}
        if revision is not None:
            items = readiness.check(agent, revision)
            context |= {
                "revision_link": revision_link(revision.pk),
                "checks": [{**item.to_dict(), "blocking": item.check in readiness.BLOCKING} for item in items],
                "failures": readiness.blocking_failures(items),
                "ready": readiness.is_ready(items),
                "already_deployed": revision.pk == agent.deployed_revision_id,
                "diff": diff_context(revision, agent.deployed_revision_id),
            }
        title = f"Deploy {revision.pk} to {agent.slug}" if revision is not None else f"Deploy to {agent.slug}"
        return self._render(request, agent, "admin/agents/agent/deploy_confirm.html", title, **context)

    # -- rollback --------------------------------------------------------------------------------
    def rollback_view(self, request, object_id):
        agent = self._agent(request, object_id)
        if agent is None:
            return self._missing(request, object_id)
        if request.method == "POST":
            require(request, agent, EDITOR)
        default = services.default_rollback_target(agent)
        earlier = (Deployment.objects.filter(agent=agent).exclude(to_revision_id=agent.deployed_revision_id)
                   .order_by("-at", "-id").values_list("to_revision_id", flat=True))
        target_ids = list(dict.fromkeys([t for t in [default, *earlier] if t]))
        revisions = {r.pk: r for r in Revision.objects.filter(pk__in=target_ids).defer("spec")}
        targets = [(pk, f"{pk} · {Truncator(revisions[pk].message or '-').chars(60)}"
                        + (" (the previous deploy)" if pk == default else "")) for pk in target_ids if pk in revisions]
        form = RollbackForm(request.POST or None, targets=targets, initial={"revision": default})
        if request.method == "POST" and form.is_valid():
            try:
                deployment = services.rollback(actor=actor_for(request), agent=agent,
                                               revision_id=form.cleaned_data["revision"],
                                               reason=form.cleaned_data["reason"])
            except FruxonError as exc:
                _show_errors(self.admin, request, exc)
                agent.refresh_from_db()
            else:
                return self._done(request, agent, f"Rolled {agent.slug} back to {deployment.to_revision_id}.")
        target = revisions.get(default)
        return self._render(request, agent, "admin/agents/agent/rollback_confirm.html", f"Roll back {agent.slug}",
                            form=form, target=target, target_link=revision_link(default), has_targets=bool(targets))

    # -- schedule --------------------------------------------------------------------------------
    def schedule_view(self, request, object_id):
        agent = self._agent(request, object_id)
        if agent is None:
            return self._missing(request, object_id)
        if request.method == "POST":
            require(request, agent, EDITOR)
        form = ScheduleForm(request.POST or None, agent=agent, initial={"revision": request.GET.get("revision")})
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                row = scheduling.schedule(actor=actor_for(request), agent=agent, revision_id=data["revision"].pk,
                                          run_at=data["run_at"], reason=data["reason"])
            except FruxonError as exc:
                _show_errors(self.admin, request, exc)
            else:
                self.admin.message_user(request, f"Scheduled {row.revision_id} for {row.run_at:%Y-%m-%d %H:%M} UTC.",
                                        messages.SUCCESS)
                return HttpResponseRedirect(_agent_url(agent, "schedule"))
        rows = ScheduledDeployment.objects.filter(agent=agent).order_by("-run_at", "-id")[:50]
        return self._render(request, agent, "admin/agents/agent/schedule.html", f"Schedule a deploy of {agent.slug}",
                            form=form, rows=[{"row": r, "revision_link": revision_link(r.revision_id),
                                              "url": reverse("admin:deployments_scheduleddeployment_change",
                                                             args=[r.pk]),
                                              "cancel_url": reverse("admin:deployments_scheduleddeployment_cancel",
                                                                    args=[r.pk])} for r in rows])

    # -- shadow ----------------------------------------------------------------------------------
    def shadow_view(self, request, object_id):
        agent = self._agent(request, object_id)
        if agent is None:
            return self._missing(request, object_id)
        if request.method == "POST":
            require(request, agent, EDITOR)
        config = ShadowConfig.objects.filter(agent=agent).first()
        initial = {"revision": config.revision_id, "sample_rate": config.sample_rate} if config else {}
        form = ShadowForm(request.POST or None, agent=agent, initial=initial)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                config = shadow.configure(actor=actor_for(request), agent=agent, revision_id=data["revision"].pk,
                                          sample_rate=data["sample_rate"])
            except FruxonError as exc:
                _show_errors(self.admin, request, exc)
            else:
                return self._done(request, agent, f"Shadow mode on: {config.revision_id} runs on "
                                                  f"{config.sample_rate:.0%} of live runs.")
        results = (ShadowResult.objects.filter(agent=agent).select_related("live_run", "shadow_run")
                   .order_by("-created_at", "-id")[:SHADOW_RESULTS_ON_PAGE])
        return self._render(request, agent, "admin/agents/agent/shadow.html", f"Shadow mode of {agent.slug}",
                            form=form, config=config, config_link=revision_link(config.revision_id) if config else None,
                            shadow_summary=_shadow_summary(agent, config),
                            results=[_shadow_row(r) for r in results],
                            results_url=reverse("admin:deployments_shadowresult_changelist")
                            + f"?agent__id__exact={agent.pk}")

    def shadow_off_view(self, request, object_id):
        agent = self._agent(request, object_id)
        if agent is None:
            return self._missing(request, object_id)
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        require(request, agent, EDITOR)
        try:
            shadow.disable(actor=actor_for(request), agent=agent)
        except FruxonError as exc:
            _show_errors(self.admin, request, exc)
            return HttpResponseRedirect(_agent_url(agent, "shadow"))
        return self._done(request, agent, "Shadow mode is off.")


# --- shared renderers ----------------------------------------------------------------------------
def _text(value) -> str:
    """An output as text: strings as they are, anything else as indented JSON; "-" for none."""
    if value is None:
        return "-"
    return value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False, default=str)


def _shadow_row(result: ShadowResult) -> dict:
    shadow_run = result.shadow_run
    return {"result": result, "url": reverse("admin:deployments_shadowresult_change", args=[result.pk]),
            "live": _text(result.live_run.output), "live_status": result.live_run.status,
            "shadow": _text(shadow_run.output if shadow_run else None),
            "shadow_status": shadow_run.status if shadow_run else "-",
            "live_link": admin_link(result.live_run, result.live_run_id),
            "shadow_link": admin_link(shadow_run, shadow_run.pk) if shadow_run else "-",
            "candidate_link": revision_link(result.candidate_revision_id)}


def checks_table(checks: list[dict]) -> str:
    return render_to_string("admin/agents/deployment/checks.html", {
        "checks": [{**c, "blocking": c.get("check") in readiness.BLOCKING} for c in checks or []]})


# --- read-only admins of deployments' rows ---------------------------------------------------------
@admin.register(ScheduledDeployment)
class ScheduledDeploymentAdmin(ReadOnlyRecords, OrgScopedAdmin):
    """Scheduled rollouts: created on an agent's "Schedule…" page; cancelled here by editors of the agent."""

    list_display = ("run_at", "agent", "revision_column", "status", "failure_code", "failure_reason",
                    "created_by_label", "deployment_column", "organization")
    list_filter = ("status", "agent", "organization")
    list_select_related = ("agent", "organization")
    date_hierarchy = "run_at"
    fields = ("organization", "agent", "revision_column", "run_at", "reason", "status", "failure_code",
              "failure_reason", "deployment_column", "created_by_label", "created_at", "finished_at")
    readonly_fields = fields
    actions = ("cancel_selected",)
    change_form_template = "admin/agents/scheduleddeployment/change_form.html"

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [path("<path:object_id>/cancel/", wrap(self.cancel_view), name="deployments_scheduleddeployment_cancel"),
                *super().get_urls()]

    def has_deploy_permission(self, request) -> bool:
        """The "cancel" action is offered to whoever may deploy somewhere; each row is checked when run."""
        from .admin import may_edit_agent

        return may_edit_agent(request, None)

    @admin.display(description="revision", ordering="revision_id")
    def revision_column(self, obj) -> str:
        return revision_link(obj.revision_id)

    @admin.display(description="deployment")
    def deployment_column(self, obj) -> str:
        if not obj.deployment_id:
            return "-"
        return format_html('<a href="{}">#{}</a>', reverse("admin:deployments_deployment_change",
                                                           args=[obj.deployment_id]), obj.deployment_id)

    def _cancel(self, request, rows) -> int:
        for row in rows:  # all or nothing on permissions, before anything changes
            require(request, row.agent, EDITOR)
        cancelled = 0
        for row in rows:
            try:
                scheduling.cancel(actor=actor_for(request), agent=row.agent, schedule_id=row.pk)
            except FruxonError as exc:
                self.message_user(request, f"#{row.pk}: {exc.message}", messages.ERROR)
            else:
                cancelled += 1
        return cancelled

    @admin.action(description="Cancel the selected scheduled deployments", permissions=["deploy"])
    def cancel_selected(self, request, queryset):
        cancelled = self._cancel(request, list(queryset.select_related("agent", "organization")))
        if cancelled:
            self.message_user(request, f"Cancelled {cancelled} scheduled deployment(s).", messages.SUCCESS)

    def cancel_view(self, request, object_id):
        row = self.get_object(request, unquote(object_id))
        if row is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if self._cancel(request, [row]):
            self.message_user(request, f"Cancelled the deploy of {row.revision_id} at {row.run_at:%Y-%m-%d %H:%M}.",
                              messages.SUCCESS)
        target = request.POST.get("next")
        if not target or not url_has_allowed_host_and_scheme(target, {request.get_host()}, request.is_secure()):
            target = reverse("admin:deployments_scheduleddeployment_change", args=[row.pk])
        return HttpResponseRedirect(target)

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if obj is not None and obj.status == "pending" and may(request, obj.agent, EDITOR):
            context["cancel_url"] = reverse("admin:deployments_scheduleddeployment_cancel", args=[obj.pk])
        return super().render_change_form(request, context, add, change, form_url, obj)


@admin.register(ShadowConfig)
class ShadowConfigAdmin(ReadOnlyRecords, OrgScopedAdmin):
    """Which agents run a candidate in shadow; configured on the agent's "Shadow…" page."""

    list_display = ("agent", "revision_column", "sample_rate", "updated_by_label", "updated_at", "manage",
                    "organization")
    list_select_related = ("agent", "organization")
    fields = ("organization", "agent", "revision_column", "sample_rate", "updated_by_label", "updated_at", "manage")
    readonly_fields = fields

    @admin.display(description="candidate revision", ordering="revision_id")
    def revision_column(self, obj) -> str:
        return revision_link(obj.revision_id)

    @admin.display(description="")
    def manage(self, obj) -> str:
        return format_html('<a href="{}">shadow page</a>', _agent_url(obj.agent, "shadow"))


@admin.register(ShadowResult)
class ShadowResultAdmin(ReadOnlyRecords, OrgScopedAdmin):
    """Live against shadow output per sampled run, read-only."""

    list_display = ("created_at", "agent", "candidate_column", "live_output", "shadow_output", "outputs_equal",
                    "similarity", "cost_delta_usd", "latency_delta_ms")
    list_filter = ("outputs_equal", "agent", "organization")
    list_select_related = ("agent", "organization", "live_run", "shadow_run")
    date_hierarchy = "created_at"
    fields = ("organization", "agent", "candidate_column", "created_at", "outputs_equal", "similarity",
              "cost_delta_usd", "latency_delta_ms", "outputs")
    readonly_fields = fields

    @admin.display(description="candidate", ordering="candidate_revision_id")
    def candidate_column(self, obj) -> str:
        return revision_link(obj.candidate_revision_id)

    @admin.display(description="live output")
    def live_output(self, obj) -> str:
        return Truncator(_text(obj.live_run.output)).chars(80)

    @admin.display(description="shadow output")
    def shadow_output(self, obj) -> str:
        return Truncator(_text(obj.shadow_run.output if obj.shadow_run_id else None)).chars(80)

    @admin.display(description="live vs shadow")
    def outputs(self, obj) -> str:
        return render_to_string("admin/agents/shadowresult/outputs.html", _shadow_row(obj))


# --- the deploy history ----------------------------------------------------------------------------
class _DeploymentHistoryBase(ReadOnlyRecords, OrgScopedAdmin):
    """Used only when ``deployments/admin.py`` (export / import) is absent."""

    list_filter = ("organization", "kind")


def _history_admin_base() -> type[admin.ModelAdmin]:
    try:
        from deployments import admin as _deployments_admin  # noqa: F401  (registers the history, with export/import)
    except ImportError:
        pass
    if admin.site.is_registered(Deployment):
        return type(admin.site._registry[Deployment])
    return _DeploymentHistoryBase


class DeploymentHealthMixin(ReadOnlyRecords):
    """The history's columns, and a deployment's page with its checklist and health verdict."""

    list_display = ("at", "agent", "kind", "from_column", "to_column", "actor_label", "reason_column", "forced",
                    "organization")
    list_filter = ("organization", "kind", "forced", "agent")
    list_select_related = ("agent", "organization")
    date_hierarchy = "at"
    detail = ("organization", "agent", "kind", "from_column", "to_column", "actor_label", "reason", "forced", "at")

    def get_fieldsets(self, request, obj=None):
        return [(None, {"fields": self.detail}),
                ("Readiness at deploy time", {"fields": ("checks_table",)}),
                ("Health since this deploy", {"fields": ("health",)})]

    def get_readonly_fields(self, request, obj=None):
        return (*self.detail, "checks_table", "health")

    @admin.display(description="from", ordering="from_revision_id")
    def from_column(self, obj) -> str:
        return revision_link(obj.from_revision_id)

    @admin.display(description="to", ordering="to_revision_id")
    def to_column(self, obj) -> str:
        return revision_link(obj.to_revision_id)

    @admin.display(description="reason")
    def reason_column(self, obj) -> str:
        return Truncator(obj.reason).chars(80)

    @admin.display(description="checklist")
    def checks_table(self, obj) -> str:
        return checks_table(obj.checks)

    @admin.display(description="health")
    def health(self, obj) -> str:
        report = deployment_health(obj)
        return render_to_string("admin/agents/deployment/health.html", {
            "report": report, "rows": [
                {"label": label, "current": report["current"][key], "baseline": report["baseline"][key]}
                for key, label in (("runs", "runs"), ("errors", "errors"), ("errorRate", "error rate"),
                                   ("p95LatencyMs", "p95 latency (ms)"), ("costPerRunUsd", "cost per run (USD)"))
            ],
            "baseline_link": revision_link(report["baselineRevisionId"]),
            "revision_link": revision_link(report["revisionId"]),
        })


def _register_history() -> type[admin.ModelAdmin]:
    base = _history_admin_base()
    history = type("DeploymentHistoryAdmin", (DeploymentHealthMixin, base), {
        "__module__": __name__,
        "__doc__": "The deploy history (read-only) with each deployment's checklist and health verdict.",
    })
    if admin.site.is_registered(Deployment):
        admin.site.unregister(Deployment)
    admin.site.register(Deployment, history)
    return history


DeploymentHistoryAdmin = _register_history()

