"""The Django admin, scoped by organization membership (DESIGN rules 1 and 2).

People work in the admin. What they may see and change there is decided by
their role in each organization (``orgs.roles``: viewer < editor < owner), not
by Django's model permissions (``auth.Permission``), which members never need.
Superusers see and change everything.

``OrgScopedAdmin`` is the base for every tenant-owned model (one with an
``organization`` FK). A subclass declares two roles::

    @admin.register(Agent)
    class AgentAdmin(OrgScopedAdmin):
        view_role = VIEWER     # the default: every member may look
        change_role = EDITOR   # the default is OWNER; governs add, change, delete

        def save_model(self, request, obj, form, change):
            saved = agents_service.create_agent(actor=actor_for(request), ...)
            adopt(obj, saved)

        def delete_model(self, request, obj):
            agents_service.delete_agent(actor=actor_for(request), ...)

What the base guarantees:

* ``get_queryset`` holds only rows of orgs where the user has ``view_role``;
  another org's object URL therefore answers Django's "doesn't exist" redirect,
  never its data.
* view needs ``view_role`` in the row's org; add, change and delete need
  ``change_role`` (without an object: in at least one org). A viewer gets every
  page read-only, without a Save button, and a 403 on POST.
* every FK to ``Organization`` offers only orgs where the user has
  ``change_role``; FKs to other tenant-owned models only their rows, and FKs to
  users only people of those orgs. ``OrgScopedModelForm`` (the default form)
  refuses a reference to a row of another org than the row's own.
* the ``organization`` field is read-only once a row exists: rows never move
  between tenants.
* list filters on relations (``organization`` by default) offer only values
  present in the scoped queryset, so other tenants' names never appear.
* a ``fruxon.errors.FruxonError`` raised by a service (last owner, duplicate
  slug, ...) rolls the request back and is shown as an admin error message.
* bulk deletes call ``delete_model`` per row, all or nothing, so overriding
  ``delete_model`` with a service call covers the "delete selected" action too.
* list_editable saves and custom actions are checked per row
  (``require_role``), not only "somewhere".

Subclasses must override ``save_model`` / ``delete_model`` to call their app's
services (DESIGN rule 3), which write the audit events.
"""
from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import get_fields_from_path
from django.contrib.auth import get_user_model
from django.core.exceptions import FieldDoesNotExist, PermissionDenied, ValidationError
from django.db import models, router, transaction
from django.http import HttpResponseRedirect
from django.urls import reverse

from fruxon.errors import FruxonError
from orgs.actor import Actor
from orgs.models import Membership, Organization
from orgs.roles import OWNER, VIEWER, role_at_least

_ROLES_ATTR = "_fruxon_org_roles"


# --- who may do what ------------------------------------------------------------------------
def org_roles(request) -> dict[int, str]:
    """``{organization_id: role}`` of the requesting user, read once per request."""
    roles = getattr(request, _ROLES_ATTR, None)
    if roles is None:
        roles = dict(Membership.objects.filter(user_id=request.user.pk).values_list("organization_id", "role"))
        setattr(request, _ROLES_ATTR, roles)
    return roles


def forget_roles(request) -> None:
    """Drop the per-request role cache; call after a service changed memberships."""
    if hasattr(request, _ROLES_ATTR):
        delattr(request, _ROLES_ATTR)


def orgs_with_role(request, role: str) -> set[int]:
    """Ids of the orgs where the requesting user has at least ``role``."""
    return {org_id for org_id, held in org_roles(request).items() if role_at_least(held, role)}


def actor_for(request) -> Actor:
    """The Actor that services record for an admin request."""
    return Actor(user=request.user)


def is_tenant_model(model) -> bool:
    """True when ``model`` rows belong to one org through an ``organization`` FK."""
    try:
        field = model._meta.get_field("organization")
    except FieldDoesNotExist:
        return False
    return field.many_to_one and field.related_model is Organization


def adopt(target: models.Model, saved: models.Model) -> None:
    """Make the admin form's unsaved ``target`` be the row a service ``saved``.

    The admin keeps using the instance it passed to ``save_model`` (for its
    messages, log entry and redirect), so it must carry the saved pk and values.
    """
    for field in saved._meta.concrete_fields:
        setattr(target, field.attname, getattr(saved, field.attname))
    target._state.adding = False
    target._state.db = saved._state.db


# --- forms ------------------------------------------------------------------------------------
class OrgScopedModelForm(forms.ModelForm):
    """A ModelForm that refuses references to rows of another org than this row's.

    The admin already limits FK choices to the user's orgs; this closes the
    gap of a user with two orgs pointing an org-A row at an org-B row.
    Custom forms of ``OrgScopedAdmin`` subclasses should derive from it.
    """

    def clean(self):
        cleaned = super().clean()
        if not is_tenant_model(self._meta.model):
            return cleaned
        org = cleaned.get("organization")
        org_id = org.pk if isinstance(org, Organization) else self.instance.organization_id
        if org_id is None:
            return cleaned
        for name, value in list(cleaned.items()):
            if name == "organization":
                continue
            targets = value if isinstance(value, models.QuerySet) else [value]
            for target in targets:
                if isinstance(target, models.Model) and is_tenant_model(type(target)) and target.organization_id != org_id:
                    self.add_error(name, "Choose a row of the same organization.")
                    break
        return cleaned


# --- the base admin --------------------------------------------------------------------------
class ReadOnlyRecords:
    """For rows that only services write (deployments, alerts, audit events, results): shown, never
    added, changed or deleted through the admin. Put it before ``OrgScopedAdmin`` in the bases."""

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class OrgScopedAdmin(admin.ModelAdmin):
    """Admin for a tenant-owned model; see the module docstring for the contract.

    ``view_role``    least org role that sees the rows (default viewer)
    ``change_role``  least org role that adds, changes and deletes them (default owner)
    ``org_field``    the FK naming the row's org; ``None`` when the row *is* an org
    """

    view_role: str = VIEWER
    change_role: str = OWNER
    org_field: str | None = "organization"
    form = OrgScopedModelForm
    list_filter = ("organization",)

    # -- roles ---------------------------------------------------------------------------
    def org_id_of(self, obj) -> int:
        """The id of the org ``obj`` belongs to."""
        return obj.pk if self.org_field is None else getattr(obj, f"{self.org_field}_id")

    def has_role(self, request, obj, role: str) -> bool:
        """``role`` in ``obj``'s org, or (``obj`` None) in at least one org. Superusers always."""
        if request.user.is_superuser:
            return True
        if obj is None:
            return bool(orgs_with_role(request, role))
        return role_at_least(org_roles(request).get(self.org_id_of(obj)), role)

    def require_role(self, request, queryset, role: str | None = None) -> None:
        """Raise PermissionDenied unless the user has ``role`` (default ``change_role``) on every row.

        Custom actions call this first: Django checks action permissions
        without an object, i.e. "in at least one org".
        """
        role = role or self.change_role
        if not all(self.has_role(request, obj, role) for obj in queryset):
            raise PermissionDenied

    def has_module_permission(self, request) -> bool:
        return self.has_role(request, None, self.view_role)

    def has_view_permission(self, request, obj=None) -> bool:
        return self.has_role(request, obj, self.view_role)

    def has_add_permission(self, request) -> bool:
        return self.has_role(request, None, self.change_role)

    def has_change_permission(self, request, obj=None) -> bool:
        return self.has_role(request, obj, self.change_role)

    def has_delete_permission(self, request, obj=None) -> bool:
        return self.has_role(request, obj, self.change_role)

    # -- what rows and choices are visible ---------------------------------------------
    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        if request.user.is_superuser:
            return queryset
        lookup = "pk__in" if self.org_field is None else f"{self.org_field}__in"
        return queryset.filter(**{lookup: orgs_with_role(request, self.view_role)})

    def writable_org_ids(self, request) -> set[int] | None:
        """Orgs the user may write rows into; ``None`` means all (superuser)."""
        return None if request.user.is_superuser else orgs_with_role(request, self.change_role)

    def scoped_choices(self, request, model) -> models.QuerySet | None:
        """The rows of ``model`` a form field may offer, or ``None`` for no limit."""
        org_ids = self.writable_org_ids(request)
        if org_ids is None:
            return None
        if model is Organization:
            return Organization.objects.filter(pk__in=org_ids)
        if is_tenant_model(model):
            return model._default_manager.filter(organization__in=org_ids)
        if model is get_user_model():
            # Listing every account would leak other tenants' people.
            return model._default_manager.filter(memberships__organization__in=org_ids).distinct()
        return None

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if "queryset" not in kwargs:
            choices = self.scoped_choices(request, db_field.related_model)
            if choices is not None:
                kwargs["queryset"] = choices
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def formfield_for_manytomany(self, db_field, request, **kwargs):
        if "queryset" not in kwargs:
            choices = self.scoped_choices(request, db_field.related_model)
            if choices is not None:
                kwargs["queryset"] = choices
        return super().formfield_for_manytomany(db_field, request, **kwargs)

    def get_readonly_fields(self, request, obj=None):
        fields = list(super().get_readonly_fields(request, obj))
        if obj is not None and self.org_field and self.org_field not in fields:
            fields.append(self.org_field)
        return fields

    def get_list_filter(self, request):
        # A plain relation filter lists every row of the related table (every
        # org, every user); RelatedOnly lists only values in the scoped queryset.
        scoped = []
        for entry in super().get_list_filter(request):
            if isinstance(entry, str) and get_fields_from_path(self.model, entry)[-1].is_relation:
                entry = (entry, admin.RelatedOnlyFieldListFilter)
            scoped.append(entry)
        return scoped

    def get_changelist_formset(self, request, **kwargs):
        formset = super().get_changelist_formset(request, **kwargs)
        model_admin = self

        class RoleCheckedFormSet(formset):
            """list_editable: Django checks change permission once, not per row."""

            def clean(self):
                super().clean()
                for form in self.forms:
                    if form.has_changed() and not model_admin.has_change_permission(request, form.instance):
                        raise ValidationError(f"You may not change {form.instance}.")

        return RoleCheckedFormSet

    # -- writes go through services; their refusals become messages --------------------
    def delete_queryset(self, request, queryset):
        """Delete each row through ``delete_model`` (a service), all or nothing."""
        with transaction.atomic(using=router.db_for_write(self.model)):
            for obj in queryset:
                self.delete_model(request, obj)

    def refused(self, request, exc: FruxonError, url: str) -> HttpResponseRedirect:
        """Show a service's refusal as an admin error message and go back to ``url``."""
        self.message_user(request, exc.message, messages.ERROR)
        return HttpResponseRedirect(url)

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except FruxonError as exc:
            return self.refused(request, exc, request.get_full_path())

    def changelist_view(self, request, extra_context=None):
        try:
            return super().changelist_view(request, extra_context)
        except FruxonError as exc:
            return self.refused(request, exc, request.get_full_path())

    def delete_view(self, request, object_id, extra_context=None):
        try:
            return super().delete_view(request, object_id, extra_context)
        except FruxonError as exc:
            opts = self.model._meta
            url = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[object_id],
                          current_app=self.admin_site.name)
            return self.refused(request, exc, url)
