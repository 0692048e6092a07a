"""Admin pages for organizations, members, API keys, secrets, integrations and the audit trail.

Every write goes through ``orgs.services`` with ``actor=Actor(user=request.user)``,
so the admin obeys the same rules as the API (last owner, key minting, secret
encryption) and leaves the same AuditEvents. Roles mirror the API's access table:

============  ======  =====================================================
model         view    add / change / delete
============  ======  =====================================================
Organization  viewer  owner (create: anyone who may use the admin; no delete)
Membership    owner   owner
ApiKey        owner   owner (create and revoke only; never deleted)
Secret        editor  owner (the value is write-only)
Integration   editor  owner
AuditEvent    owner   nobody
============  ======  =====================================================

SecretVersion is deliberately not registered: its ciphertext has no business on
a page. A secret's page lists its version numbers and dates only.
"""
from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from agents.engine import destinations
from fruxon.admin_base import OrgScopedAdmin, ReadOnlyRecords, OrgScopedModelForm, actor_for, adopt, forget_roles
from fruxon import egress
from fruxon.errors import Conflict, FruxonError
from orgs.api.serializers import HttpConfig
from orgs.models import ApiKey, AuditEvent, Integration, Membership, Organization, Secret, slug_validator
from orgs.roles import ALL_SCOPES, EDITOR, OWNER, PRESETS
from orgs.services import api_keys, integrations, members, organizations, rate_limits, secrets


class CommaSeparatedField(forms.CharField):
    """A list of short strings typed as ``a, b, c``; cleans to a sorted, de-duplicated list."""

    def __init__(self, *, item_validators=(), **kwargs):
        self.item_validators = list(item_validators)
        super().__init__(**kwargs)

    def prepare_value(self, value):
        return ", ".join(value) if isinstance(value, list | tuple) else value

    def to_python(self, value):
        items = {item.strip() for item in (super().to_python(value) or "").split(",")}
        return sorted(item for item in items if item)

    def validate(self, value):
        super().validate(value)
        for item in value:
            for validator in self.item_validators:
                validator(item)

    def has_changed(self, initial, data):
        return sorted(initial or []) != self.to_python(data)


# --- organizations -----------------------------------------------------------------------------
@admin.register(Organization)
class OrganizationAdmin(OrgScopedAdmin):
    """Members see their orgs; owners change the name and retention.

    Anyone allowed into the admin may create an org and becomes its owner
    (``create_organization``), as over the API. No service deletes an org, so
    the admin offers no delete.
    """

    org_field = None
    list_filter = ()
    list_display = ("slug", "name", "retention_days", "created_at")
    search_fields = ("slug", "name")

    def get_fields(self, request, obj=None):
        # Rate limits (issue 14 item 1): set by owners here or over the API, through the same service.
        return ("slug", "name", "retention_days") + (() if obj is None else ("created_at", *rate_limits.FIELDS))

    def get_readonly_fields(self, request, obj=None):
        return () if obj is None else ("slug", "created_at")

    def has_add_permission(self, request) -> bool:
        return self.admin_site.has_permission(request)

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def save_model(self, request, obj, form, change):
        if change:
            if any(name in form.changed_data for name in rate_limits.FIELDS):
                limited = rate_limits.set_org_limits(actor=actor_for(request), organization=obj, limits={
                    name: form.cleaned_data[name] for name in rate_limits.FIELDS})
                adopt(obj, limited)
            changes = {name: form.cleaned_data[name] for name in ("name", "retention_days") if name in form.changed_data}
            if not changes:
                return
            saved = organizations.update_settings(actor=actor_for(request), organization=obj, changes=changes)
        else:
            saved = organizations.create_organization(
                actor=actor_for(request), slug=obj.slug, name=obj.name, retention_days=obj.retention_days,
            )
            forget_roles(request)  # the creator just became an owner
        adopt(obj, saved)


# --- members --------------------------------------------------------------------------------------
class MembershipAddForm(OrgScopedModelForm):
    """Adds a person by username or email, as the API does: no list of every account."""

    user = forms.CharField(label="User", max_length=254, help_text="Username or email of an active account.")

    class Meta:
        model = Membership
        fields = ("organization", "user", "role")

    def clean_user(self):
        try:
            return members.find_user(self.cleaned_data["user"])
        except FruxonError as exc:
            raise ValidationError(exc.message) from None


@admin.register(Membership)
class MembershipAdmin(OrgScopedAdmin):
    """Owners add, re-role and remove members; the last owner is kept by the service."""

    view_role = OWNER
    list_display = ("user", "organization", "role", "created_at")
    list_filter = ("organization", "role")
    search_fields = ("user__username", "user__email")
    list_select_related = ("user", "organization")

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = MembershipAddForm
        return super().get_form(request, obj, **kwargs)

    def get_fields(self, request, obj=None):
        return ("organization", "user", "role") + (() if obj is None else ("created_at",))

    def get_readonly_fields(self, request, obj=None):
        return () if obj is None else (*super().get_readonly_fields(request, obj), "user", "created_at")

    def save_model(self, request, obj, form, change):
        if change:
            if "role" not in form.changed_data:
                return
            saved = members.change_role(actor=actor_for(request), organization=obj.organization,
                                        membership_id=obj.pk, role=obj.role)
        else:
            saved = members.add_member(actor=actor_for(request), organization=obj.organization,
                                       user_identifier=obj.user.get_username(), role=obj.role)
        adopt(obj, saved)
        forget_roles(request)  # the acting owner may have changed their own role

    def delete_model(self, request, obj):
        members.remove_member(actor=actor_for(request), organization=obj.organization, membership_id=obj.pk)
        forget_roles(request)


# --- API keys ---------------------------------------------------------------------------------------
class ApiKeyAddForm(OrgScopedModelForm):
    preset = forms.ChoiceField(choices=[("", "---------")] + [(p, p) for p in sorted(PRESETS)], required=False,
                               help_text="A named bundle of scopes, added to the scopes ticked below.")
    scopes = forms.MultipleChoiceField(choices=[(s, s) for s in ALL_SCOPES], required=False,
                                       widget=forms.CheckboxSelectMultiple)
    agents = CommaSeparatedField(required=False, item_validators=[slug_validator],
                                 help_text="Agent slugs this key may touch, comma-separated; empty = all.")

    class Meta:
        model = ApiKey
        fields = ("organization", "name", "preset", "scopes", "agents", "expires_at", *rate_limits.FIELDS)

    def clean(self):
        cleaned = super().clean()
        if not cleaned.get("scopes") and not cleaned.get("preset"):
            self.add_error("scopes", "Give scopes, a preset, or both.")
        return cleaned


@admin.register(ApiKey)
class ApiKeyAdmin(OrgScopedAdmin):
    """Owners create and revoke keys. The plaintext is shown once, in a message; the hash never.

    After creation only a key's rate limits are editable (``rate_limits.set_key_limits``, as
    ``PATCH /api-keys/{id}``), and keys are revoked rather than deleted so audit events keep
    pointing at them.
    """

    view_role = OWNER
    list_display = ("name", "prefix", "organization", "scope_list", "active", "last_used_at", "expires_at", "created_at")
    list_filter = ("organization",)
    search_fields = ("name", "prefix")
    list_select_related = ("organization",)
    actions = ("revoke",)
    # key_hash is in no list, form or detail: a leaked hash is not a credential, but it is nobody's business.
    detail_fields = ("organization", "name", "prefix", "scopes", "agents", "created_by", "created_at",
                     "expires_at", "revoked_at", "last_used_at", "rotated_from")
    limit_fields = rate_limits.FIELDS

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = ApiKeyAddForm
        return super().get_form(request, obj, **kwargs)

    def get_fields(self, request, obj=None):
        return ApiKeyAddForm.Meta.fields if obj is None else self.detail_fields + self.limit_fields

    def get_readonly_fields(self, request, obj=None):
        return () if obj is None else self.detail_fields  # organization included; the rate limits stay editable

    def has_change_permission(self, request, obj=None) -> bool:
        # Without an object this gates the revoke action; on a key, its rate limits (owners).
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="scopes")
    def scope_list(self, obj) -> str:
        return ", ".join(obj.scopes)

    @admin.display(boolean=True, description="active")
    def active(self, obj) -> bool:
        return obj.is_active()

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        if change:
            limits = {name: data[name] for name in self.limit_fields if name in form.changed_data}
            if limits:
                adopt(obj, rate_limits.set_key_limits(actor=actor_for(request), organization=obj.organization,
                                                      key_id=obj.pk, limits=limits))
            return
        minted = api_keys.create_key(
            actor=actor_for(request), organization=data["organization"], name=data["name"],
            scopes=data["scopes"], preset=data["preset"] or None, agents=data["agents"], expires_at=data["expires_at"],
            rate_limits={name: data[name] for name in self.limit_fields if data.get(name) is not None},
        )
        adopt(obj, minted.key)
        # The only time the plaintext exists outside the caller's hands.
        messages.success(request, format_html(
            "The new API key is <code>{}</code>. Copy it now: it is not stored and will not be shown again.",
            minted.plaintext,
        ))

    @admin.action(description="Revoke selected API keys", permissions=["change"])
    def revoke(self, request, queryset):
        self.require_role(request, queryset)
        queryset = queryset.select_related("organization").filter(revoked_at__isnull=True)
        with transaction.atomic():
            revoked = [
                api_keys.revoke_key(actor=actor_for(request), organization=key.organization, key_id=key.pk)
                for key in queryset
            ]
        self.message_user(request, f"Revoked {len(revoked)} API key(s).", messages.SUCCESS)


# --- secrets ------------------------------------------------------------------------------------------
def _host_entry_validator(entry: str) -> None:
    try:
        destinations.normalize_host_entry(entry)
    except destinations.HostError as exc:
        raise ValidationError(f"{entry!r} {exc}") from None


class SecretForm(OrgScopedModelForm):
    """The value is write-only: never rendered back, not even after a validation error."""

    value = forms.CharField(
        widget=forms.PasswordInput(render_value=False), required=False, strip=False,
        help_text="Write-only. Leave empty to keep the current value; a new value becomes a new version.",
    )
    allowed_agents = CommaSeparatedField(required=False, label="Allowed agents",
                                         help_text="Agent slugs, comma-separated, or * for all.")
    allowed_hosts = CommaSeparatedField(
        required=False, label="Allowed hosts", item_validators=[_host_entry_validator],
        help_text="Hosts the value may be sent to, comma-separated: api.openai.com, llm.internal:8443 (no scheme, "
                  "path or wildcard). The hosts of the integrations that use this secret are allowed as well.")

    class Meta:
        model = Secret
        fields = ("organization", "name", "description", "allowed_agents", "allowed_hosts", "value")

    def clean_allowed_hosts(self):
        # Stored canonical (lowercase, IDNA) as the API stores it.
        return destinations.normalize_host_entries(self.cleaned_data.get("allowed_hosts") or [])

    def clean(self):
        cleaned = super().clean()
        if self.instance._state.adding and not cleaned.get("value"):
            self.add_error("value", "A new secret needs a value.")
        return cleaned


@admin.register(Secret)
class SecretAdmin(OrgScopedAdmin):
    """Editors see the names; owners create, rotate and delete through ``put_secret``.

    No page renders a value or a ciphertext: the list and the detail show
    metadata, and the version history shows numbers, dates and authors only.
    """

    view_role = EDITOR
    form = SecretForm
    list_display = ("name", "organization", "current_version", "allowed_agent_list", "allowed_host_list",
                    "updated_at", "updated_by")
    list_filter = ("organization",)
    search_fields = ("name", "description")
    list_select_related = ("organization", "updated_by")
    metadata_fields = ("current_version", "version_history", "created_at", "updated_at", "updated_by")

    def get_fields(self, request, obj=None):
        if obj is None:
            return SecretForm.Meta.fields
        writable = ("value",) if self.has_change_permission(request, obj) else ()
        return ("organization", "name", "description", "allowed_agents", "allowed_hosts") + writable \
            + self.metadata_fields

    def get_readonly_fields(self, request, obj=None):
        return () if obj is None else (*super().get_readonly_fields(request, obj), "name", *self.metadata_fields)

    @admin.display(description="allowed agents")
    def allowed_agent_list(self, obj) -> str:
        return ", ".join(obj.allowed_agents)

    @admin.display(description="allowed hosts")
    def allowed_host_list(self, obj) -> str:
        return ", ".join(obj.allowed_hosts or [])

    @admin.display(description="versions")
    def version_history(self, obj) -> str:
        # values_list never loads the ciphertext column.
        rows = obj.versions.values_list("version", "created_at", "created_by__username")
        return format_html_join(
            mark_safe("<br>"), "v{} &middot; {} &middot; {}",
            ((version, at.strftime("%Y-%m-%d %H:%M:%S UTC"), who or "system") for version, at, who in rows),
        ) or "-"

    def save_model(self, request, obj, form, change):
        data, changed = form.cleaned_data, form.changed_data
        fields = {name: data[name] for name in ("description", "allowed_agents", "allowed_hosts")
                  if not change or name in changed}
        if data.get("value"):
            fields["value"] = data["value"]
        if not fields:
            return
        if not change and Secret.objects.filter(organization=obj.organization, name=obj.name).exists():
            # put_secret upserts; an "add" must never overwrite an existing secret.
            raise Conflict(f"A secret '{obj.name}' already exists in {obj.organization}.")
        saved, _ = secrets.put_secret(actor=actor_for(request), organization=obj.organization, name=obj.name, **fields)
        adopt(obj, saved)

    def delete_model(self, request, obj):
        secrets.delete_secret(actor=actor_for(request), organization=obj.organization, name=obj.name)


# --- integrations ----------------------------------------------------------------------------------------
class IntegrationForm(OrgScopedModelForm):
    """Validates like the API: an http config of known keys, a credentials secret of the same org."""

    class Meta:
        model = Integration
        fields = ("organization", "slug", "name", "kind", "config", "credentials_secret", "side_effects", "status")

    def clean_config(self):
        config = HttpConfig(data=self.cleaned_data.get("config") or {})
        if not config.is_valid():
            raise ValidationError([f"{field}: {' '.join(map(str, errors))}" for field, errors in config.errors.items()])
        refusal = egress.url_refusal(config.validated_data.get("baseUrl"), "baseUrl")  # as the service refuses it
        if refusal is not None:
            raise ValidationError(refusal.message)
        return dict(config.validated_data)

    def clean(self):
        cleaned = super().clean()
        org = cleaned.get("organization") or getattr(self.instance, "organization", None)
        name = cleaned.get("credentials_secret")
        if org is not None and name and not Secret.objects.filter(organization=org, name=name).exists():
            self.add_error("credentials_secret", f"Secret '{name}' does not exist in this organization.")
        return cleaned


@admin.register(Integration)
class IntegrationAdmin(OrgScopedAdmin):
    """Editors see integrations; owners create, change and delete them through the service."""

    view_role = EDITOR
    form = IntegrationForm
    list_display = ("slug", "name", "organization", "kind", "status", "side_effects", "credentials_secret", "updated_at")
    list_filter = ("organization", "kind", "status")
    search_fields = ("slug", "name")
    list_select_related = ("organization",)

    def get_readonly_fields(self, request, obj=None):
        return () if obj is None else (*super().get_readonly_fields(request, obj), "slug", "created_at", "updated_at")

    def get_fields(self, request, obj=None):
        return IntegrationForm.Meta.fields + (() if obj is None else ("created_at", "updated_at"))

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        editable = {name: data[name] for name in integrations.EDITABLE if name in data}
        if change:
            changes = {name: value for name, value in editable.items() if name in form.changed_data}
            if not changes:
                return
            saved = integrations.update_integration(actor=actor_for(request), organization=obj.organization,
                                                    slug=obj.slug, changes=changes)
        else:
            saved = integrations.create_integration(actor=actor_for(request), organization=obj.organization,
                                                    slug=obj.slug, **editable)
        adopt(obj, saved)

    def delete_model(self, request, obj):
        integrations.delete_integration(actor=actor_for(request), organization=obj.organization, slug=obj.slug)


# --- audit trail -------------------------------------------------------------------------------------------
@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyRecords, OrgScopedAdmin):
    """The audit trail, read-only for owners. Nobody adds, changes or deletes an event here."""

    view_role = OWNER
    list_display = ("at", "organization", "actor_label", "action", "target_type", "target_id")
    list_filter = ("organization", "action", "target_type")
    search_fields = ("action", "target_id", "actor_label")
    date_hierarchy = "at"
    list_select_related = ("organization",)
    fields = ("at", "organization", "actor_label", "actor_user", "actor_key", "action", "target_type", "target_id", "data")
    readonly_fields = fields

