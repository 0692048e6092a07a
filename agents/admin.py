"""Admin pages for agents and their immutable revisions.

Every write goes through ``agents.services`` with ``actor_for(request)``, so the
admin obeys the API's rules (unique slugs, spec validation, delete refusals)
and leaves the same AuditEvents. Roles mirror the API's access table:

========  ======  ===============================================================
model     view    add / change / delete
========  ======  ===============================================================
Agent     viewer  editor (``create_agent`` / ``update_agent`` / ``delete_agent``)
Revision  viewer  add: editor, through ``create_revision``; change, delete: nobody
========  ======  ===============================================================

A per-agent grant (``agents.grants``) raises or lowers a member's role on one
agent, exactly as ``agents.scoping.effective_role`` does for the API: org owners
keep full access; otherwise the grant, if any, replaces the org role. The grants
of the requesting user are read once per request; guardian never filters lists.

``Agent.deployed_revision`` is shown, never editable: deploys go through the
deployment service. A revision's page pretty-prints its spec (which holds only
``{{secret.NAME}}`` templates, never values) and diffs it against the deployed
revision with ``agents.diff.diff_specs``.

Deploying, rolling back, scheduling and shadow mode live in ``agents.admin_deploy``
(imported at the bottom of this module so its admins are registered): the agent
page carries their buttons (editors) and a "Deployment" section (everyone); a
revision page carries "Deploy…" and "Evaluate…" (editors) or "Readiness
checklist" (viewers).
"""
from __future__ import annotations

import json

from django import forms
from django.contrib import admin
from django.contrib.admin.options import IS_POPUP_VAR
from django.contrib.admin.utils import quote
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Q
from django.http import HttpResponseRedirect
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.html import format_html
from guardian.models import UserObjectPermission

from fruxon import egress
from fruxon.admin_base import OrgScopedAdmin, OrgScopedModelForm, actor_for, adopt, org_roles, orgs_with_role
from fruxon.api.parsers import BoundedJSONDecoder
from fruxon.errors import InvalidRequest
from monitoring.models import Conversation, Run
from orgs.roles import EDITOR, OWNER, RANK, role_at_least
from orgs.services import secrets as secret_services

from . import services
from .diff import diff_specs
from .grants import GRANT_ROLES
from .models import Agent, Revision

_GRANTS_ATTR = "_fruxon_agent_grants"
_ROLE_OF_CODENAME = {f"agent_{role}": role for role in GRANT_ROLES}
REVISIONS_ON_AGENT_PAGE = 50


# --- small rendering helpers, shared with monitoring.admin ------------------------------------
def pretty_json(value) -> str:
    """``value`` as indented JSON in a <pre>, HTML-escaped; "-" for nothing."""
    if value is None:
        return "-"
    text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    return format_html('<pre class="fruxon-json">{}</pre>', text)


def admin_link(obj, label=None) -> str:
    """A link to ``obj``'s admin page (its view page for read-only models).

    Ids appear raw (``/revision/rev_26ab.../change/``); ``RawIdLookupMixin`` resolves them
    although the admin unquotes ``_26`` in URLs.
    """
    if obj is None:
        return "-"
    opts = obj._meta
    target = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk])
    return format_html('<a href="{}">{}</a>', target, label if label is not None else str(obj))


def revision_link(revision_id: str | None) -> str:
    """A link to a revision page by id, without loading the revision (or its spec)."""
    if not revision_id:
        return "-"
    return format_html('<a href="{}">{}</a>', reverse("admin:agents_revision_change", args=[revision_id]), revision_id)


def deletion_summary(objs, counts: dict[str, int], perms_needed: set) -> tuple[list, dict, set, list]:
    """What ``get_deleted_objects`` returns, as counts instead of every cascaded row.

    Django's default lists each related row (every run and span of an agent),
    which is slow on real data and asks for delete permission on models the
    service deletes by itself (immutable revisions, runs).
    """
    return [str(obj) for obj in objs], {name: n for name, n in counts.items() if n}, perms_needed, []


def diff_context(revision: Revision, deployed_id: str | None) -> dict:
    """The context of ``admin/agents/revision/diff.html``: ``revision`` against the deployed ``deployed_id``."""
    context = {"deployed_id": deployed_id, "deployed_link": revision_link(deployed_id), "is_deployed": False}
    if deployed_id == revision.id:
        context["is_deployed"] = True
    elif deployed_id:
        deployed = Revision.objects.only("id", "spec").get(pk=deployed_id)
        diff = diff_specs(deployed.spec, revision.spec)
        context["changes"] = [
            {**change, "before": _compact(change["before"]), "after": _compact(change["after"])}
            for change in diff["changes"]
        ]
        context["prompt_diff"] = diff["promptDiff"]
    return context


class RawIdLookupMixin:
    """Object pages reachable by a raw string id as well as by the admin's quoted one.

    The admin unquotes ``_XX`` in the id part of its URLs (its own links quote ids:
    ``rev_5Fab...``), so a raw id such as ``rev_26ab...`` (our links, API users, docs)
    arrives as ``rev&ab...`` and would answer "doesn't exist". When the unquoted id
    finds nothing, the id as it was written in the URL is tried, in the same scoped
    queryset: tenancy is unchanged, and ids never contain the characters unquoting makes.
    """

    def get_object(self, request, object_id, from_field=None):
        obj = super().get_object(request, object_id, from_field)
        if obj is None and object_id:
            as_written = quote(object_id)
            if as_written != object_id:
                obj = super().get_object(request, as_written, from_field)
        return obj


# --- roles on one agent (org role, raised or lowered by a grant) --------------------------------
def agent_grants(request) -> dict[int, str]:
    """``{agent_id: grant role}`` of the requesting user, one query per request."""
    grants = getattr(request, _GRANTS_ATTR, None)
    if grants is None:
        grants = {}
        rows = UserObjectPermission.objects.filter(
            user_id=request.user.pk, content_type__app_label="agents", content_type__model="agent",
            permission__codename__in=list(_ROLE_OF_CODENAME),
        ).values_list("object_pk", "permission__codename")
        for object_pk, codename in rows:
            role, agent_id = _ROLE_OF_CODENAME[codename], int(object_pk)
            if agent_id not in grants or RANK[role] > RANK[grants[agent_id]]:
                grants[agent_id] = role
        setattr(request, _GRANTS_ATTR, grants)
    return grants


def agent_role(request, agent: Agent) -> str | None:
    """The user's role on ``agent`` (``agents.scoping.effective_role``); None for non-members."""
    org_role = org_roles(request).get(agent.organization_id)
    if org_role is None:
        return None
    if org_role == OWNER:
        return OWNER
    return agent_grants(request).get(agent.pk) or org_role


def may_edit_agent(request, agent: Agent | None) -> bool:
    """Editor or more on ``agent``; without one, on at least one agent or org."""
    if request.user.is_superuser:
        return True
    if agent is not None:
        return role_at_least(agent_role(request, agent), EDITOR)
    raised = any(role_at_least(role, EDITOR) for role in agent_grants(request).values())
    return raised or bool(orgs_with_role(request, EDITOR))


def editable_agents(request):
    """The agents the user may cut revisions of: editor or more on each, grants included."""
    agents = Agent.objects.select_related("organization")
    if request.user.is_superuser:
        return agents
    grants = agent_grants(request)
    lowered = [pk for pk, role in grants.items() if not role_at_least(role, EDITOR)]
    raised = [pk for pk, role in grants.items() if role_at_least(role, EDITOR)]
    return agents.filter(
        (Q(organization__in=orgs_with_role(request, EDITOR)) & ~Q(pk__in=lowered))
        | Q(organization__in=orgs_with_role(request, OWNER))
        | Q(pk__in=raised, organization__in=set(org_roles(request)))
    )


# --- agents -------------------------------------------------------------------------------------
@admin.register(Agent)
class AgentAdmin(OrgScopedAdmin):
    """Members read agents; editors create, rename and delete them through the services."""

    change_role = EDITOR
    list_display = ("slug", "name", "deployed", "organization", "updated_at")
    list_filter = ("organization",)
    search_fields = ("slug", "name")
    list_select_related = ("organization",)
    add_fields = ("organization", "slug", "name", "description")
    detail_fields = ("created_by", "created_at", "updated_at")

    def get_fieldsets(self, request, obj=None):
        if obj is None:
            return [(None, {"fields": self.add_fields})]
        return [
            (None, {"fields": ("organization", "slug", "name", "description", "deployed", *self.detail_fields)}),
            ("Deployment", {"fields": ("deployment_overview",)}),
            ("Revisions", {"fields": ("revision_history",)}),
        ]

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return ()
        return (*super().get_readonly_fields(request, obj), "slug", "deployed", "deployment_overview",
                "revision_history", *self.detail_fields)

    def get_urls(self):
        # Deploy, rollback, schedule and shadow pages hang on the agent (agents.admin_deploy).
        from .admin_deploy import AgentDeployViews

        return [*AgentDeployViews(self).get_urls(), *super().get_urls()]

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if obj is not None:
            from .admin_deploy import agent_tools

            context["fruxon_tools"] = agent_tools(request, obj)
        return super().render_change_form(request, context, add, change, form_url, obj)

    def has_change_permission(self, request, obj=None) -> bool:
        return may_edit_agent(request, obj)

    def has_delete_permission(self, request, obj=None) -> bool:
        return may_edit_agent(request, obj)

    def get_object(self, request, object_id, from_field=None):
        agent = super().get_object(request, object_id, from_field)
        if agent is not None:
            # Display methods get no request; the revision list offers "add" only to those who may.
            agent.may_add_revision = may_edit_agent(request, agent)
        return agent

    @admin.display(description="deployed revision", ordering="deployed_revision")
    def deployed(self, obj) -> str:
        return revision_link(obj.deployed_revision_id)

    @admin.display(description="deployment")
    def deployment_overview(self, obj) -> str:
        from .admin_deploy import deployment_overview

        return deployment_overview(obj)

    @admin.display(description="revisions (newest first)")
    def revision_history(self, obj) -> str:
        revisions = list(obj.revisions.defer("spec").order_by("-created_at", "-id")[: REVISIONS_ON_AGENT_PAGE + 1])
        rows = [
            {"id": rev.id, "url": reverse("admin:agents_revision_change", args=[rev.id]), "message": rev.message,
             "author": rev.created_by_label, "hash": rev.content_hash[:12], "created_at": rev.created_at,
             "deployed": rev.id == obj.deployed_revision_id}
            for rev in revisions[:REVISIONS_ON_AGENT_PAGE]
        ]
        return render_to_string("admin/agents/agent/revision_history.html", {
            "rows": rows,
            "more": len(revisions) > REVISIONS_ON_AGENT_PAGE,
            "all_url": reverse("admin:agents_revision_changelist") + f"?agent__id__exact={obj.pk}",
            "add_url": reverse("admin:agents_revision_add") + f"?agent={obj.pk}",
            "may_add": getattr(obj, "may_add_revision", False),
            "runs_url": reverse("admin:monitoring_run_changelist") + f"?agent__id__exact={obj.pk}",
        })

    def save_model(self, request, obj, form, change):
        if change:
            changes = {name: form.cleaned_data[name] for name in ("name", "description") if name in form.changed_data}
            if not changes:
                return
            saved = services.update_agent(actor=actor_for(request), agent=obj, changes=changes)
        else:
            saved = services.create_agent(actor=actor_for(request), organization=obj.organization, slug=obj.slug,
                                          name=obj.name, description=obj.description)
        adopt(obj, saved)

    def delete_model(self, request, obj):
        services.delete_agent(actor=actor_for(request), agent=obj)

    def get_deleted_objects(self, objs, request):
        agents = list(objs)
        ids = [agent.pk for agent in agents]
        perms_needed = set() if all(self.has_delete_permission(request, a) for a in agents) else {"agent"}
        return deletion_summary(agents, {
            "agents": len(agents),
            "revisions": Revision.objects.filter(agent__in=ids).count(),
            "runs": Run.objects.filter(agent__in=ids).count(),
            "conversations": Conversation.objects.filter(agent__in=ids).count(),
        }, perms_needed)


# --- revisions ----------------------------------------------------------------------------------
class AgentChoiceField(forms.ModelChoiceField):
    """Agents labelled ``org / slug``: two orgs may use the same slug."""

    def label_from_instance(self, obj) -> str:
        return f"{obj.organization.slug} / {obj.slug}"


class RevisionAddForm(OrgScopedModelForm):
    """Cut a revision: pick an agent, paste the spec JSON, say why.

    The spec is validated by the same engine check ``create_revision`` runs;
    each problem shows on the spec field as ``<JSON path>: <message>``.
    """

    spec = forms.JSONField(
        decoder=BoundedJSONDecoder,  # JSON nested too deep is invalid input, not a RecursionError
        widget=forms.Textarea(attrs={"rows": 24, "cols": 100, "class": "vLargeTextField", "spellcheck": "false"}),
        help_text="The workflow spec as JSON. Write secrets as {{secret.NAME}}; values are never stored in a spec.",
    )

    class Meta:
        model = Revision
        fields = ("agent", "message", "spec")
        field_classes = {"agent": AgentChoiceField}

    def clean_spec(self):
        spec = self.cleaned_data["spec"]
        try:
            services.validate_spec_or_400(spec)
            egress.check_spec(spec)  # as create_revision refuses it
            agent = self.cleaned_data.get("agent")
            if agent is not None:  # as create_revision refuses it: 400 secret_destination
                secret_services.check_destinations(organization_id=agent.organization_id, spec=spec)
        except InvalidRequest as exc:
            problems = exc.details.get("problems") or []
            raise ValidationError([f"{p['path']}: {p['message']}" for p in problems] or [exc.message]) from None
        return spec


@admin.register(Revision)
class RevisionAdmin(RawIdLookupMixin, OrgScopedAdmin):
    """Members read revisions; editors add them; nobody changes or deletes one (DESIGN rule 4)."""

    change_role = EDITOR
    list_display = ("id", "agent", "organization", "message", "created_by_label", "hash_prefix", "is_deployed",
                    "created_at")
    list_filter = ("organization", "agent")
    search_fields = ("=id", "message")
    list_select_related = ("agent", "organization")
    date_hierarchy = "created_at"
    detail_fields = ("id", "organization", "agent", "message", "content_hash", "parent", "created_by_label",
                     "created_at", "origin", "is_deployed")

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        match = getattr(request, "resolver_match", None)
        if match is not None and match.url_name == "agents_revision_changelist":
            queryset = queryset.defer("spec")  # a list never shows specs; they can be large
        return queryset

    def get_fieldsets(self, request, obj=None):
        if obj is None:
            return [(None, {"fields": RevisionAddForm.Meta.fields})]
        return [
            (None, {"fields": self.detail_fields}),
            ("Spec", {"fields": ("spec_pretty",)}),
            ("Diff against the deployed revision", {"fields": ("diff_against_deployed",)}),
        ]

    def get_readonly_fields(self, request, obj=None):
        return () if obj is None else (*self.detail_fields, "spec_pretty", "diff_against_deployed")

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = RevisionAddForm
        return super().get_form(request, obj, **kwargs)

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "agent":
            kwargs["queryset"] = editable_agents(request)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def has_add_permission(self, request) -> bool:
        return may_edit_agent(request, None)

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def add_view(self, request, form_url="", extra_context=None):
        # There is nothing to "continue editing" on an immutable row.
        return super().add_view(request, form_url, {**(extra_context or {}), "show_save_and_continue": False})

    @admin.display(description="hash", ordering="content_hash")
    def hash_prefix(self, obj) -> str:
        return obj.content_hash[:12]

    @admin.display(description="deployed", boolean=True)
    def is_deployed(self, obj) -> bool:
        return obj.agent.deployed_revision_id == obj.id

    @admin.display(description="spec")
    def spec_pretty(self, obj) -> str:
        return pretty_json(obj.spec)

    @admin.display(description="diff")
    def diff_against_deployed(self, obj) -> str:
        return render_to_string("admin/agents/revision/diff.html", diff_context(obj, obj.agent.deployed_revision_id))

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if obj is not None:
            from .admin_deploy import revision_tools

            context["fruxon_tools"] = revision_tools(request, obj)
        return super().render_change_form(request, context, add, change, form_url, obj)

    def save_model(self, request, obj, form, change):
        if change:
            raise PermissionDenied  # has_change_permission already refuses; revisions are immutable
        data = form.cleaned_data
        saved = services.create_revision(actor=actor_for(request), agent=data["agent"], spec=data["spec"],
                                         message=data.get("message") or "")
        adopt(obj, saved)

    def response_post_save_add(self, request, obj):
        # Land on the new revision: its spec and its diff against what is deployed.
        if IS_POPUP_VAR in request.POST:
            return super().response_post_save_add(request, obj)
        return HttpResponseRedirect(reverse("admin:agents_revision_change", args=[obj.pk]))


def _compact(value) -> str:
    """A diff cell: JSON on one line, "-" for an absent side."""
    return "-" if value is None else json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


# Deploy / rollback / schedule / shadow pages and the deployment admins register themselves.
from . import admin_deploy  # noqa: E402,F401
