"""The Django admin is where people work: scoped by org membership, decided by role.

Org "acme" (conftest: owner olivia, editor eddie, viewer vera) and org
"globex-beta" (owner bob-beta) each hold a secret, an integration and an API
key. Every changelist must show acme's rows to acme's members and never a trace
of globex-beta; every write goes through a service and leaves an AuditEvent.
"""
from __future__ import annotations

import json
import re

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.urls import reverse

from orgs import crypto
from orgs.credentials import hash_credential
from orgs.models import ApiKey, AuditEvent, Integration, Membership, Organization, Secret, SecretVersion
from orgs.roles import EDITOR, OWNER, VIEWER

from . import factories as f

pytestmark = pytest.mark.django_db

VALUE = "sk-admin-TOPSECRET-9731"
ROTATED = "sk-admin-ROTATED-2468"
BETA = "globex-beta"


# --- fixtures and helpers ---------------------------------------------------------------------
@pytest.fixture
def acme_data(org):
    """acme's own rows, created through the services like everything else."""
    key, _ = f.api_key(org, preset="runner", name="alpha-key-name")
    return {
        "secret": f.secret(org, "ALPHA_SECRET", "alpha-value-never-shown"),
        "integration": f.integration(org, "alpha-int"),
        "key": key,
    }


@pytest.fixture
def beta(db):
    """Another tenant, with one row of every kind."""
    org = f.OrganizationFactory(slug=BETA, name="Globex Beta")
    owner = f.member(org, OWNER, "bob-beta-owner")
    key, _ = f.api_key(org, preset="runner", name="beta-key-name")
    return {
        "org": org,
        "owner": owner,
        "membership": Membership.objects.get(user=owner),
        "secret": f.secret(org, "BETA_SECRET", "beta-value-never-shown"),
        "integration": f.integration(org, "beta-int"),
        "key": key,
        "audit": AuditEvent.objects.filter(organization=org).first(),
    }


def login(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def url(model: str, view: str, *args) -> str:
    return reverse(f"admin:orgs_{model}_{view}", args=args)


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


# --- getting in --------------------------------------------------------------------------------
def test_member_without_staff_flag_logs_in_through_the_login_form(owner):
    assert not owner.is_staff
    client = Client()
    response = client.post("/admin/login/?next=/admin/", {"username": "olivia", "password": f.PASSWORD, "next": "/admin/"})
    assert response.status_code == 302 and response["Location"] == "/admin/"
    index = client.get("/admin/")
    assert index.status_code == 200
    assert b"Fruxon" in index.content and b"Organizations" in index.content


def test_person_without_membership_cannot_log_in(db):
    f.UserFactory(username="otto")
    client = Client()
    response = client.post("/admin/login/", {"username": "otto", "password": f.PASSWORD, "next": "/admin/"})
    assert response.status_code == 200 and b"belongs to an organization" in response.content
    assert client.get("/admin/").status_code == 302


# --- isolation -----------------------------------------------------------------------------------
CHANGELISTS = [
    ("organization", "acme", BETA),
    ("membership", "olivia", "bob-beta-owner"),
    ("apikey", "alpha-key-name", "beta-key-name"),
    ("secret", "ALPHA_SECRET", "BETA_SECRET"),
    ("integration", "alpha-int", "beta-int"),
    ("auditevent", "ALPHA_SECRET", "BETA_SECRET"),
]


@pytest.mark.parametrize(("model", "ours", "theirs"), CHANGELISTS)
def test_changelist_shows_own_org_and_never_another(model, ours, theirs, owner, acme_data, beta):
    response = login(owner).get(url(model, "changelist"))
    assert response.status_code == 200
    assert ours.encode() in response.content
    assert theirs.encode() not in response.content
    assert BETA.encode() not in response.content


BETA_OBJECTS = [
    ("organization", lambda b: b["org"], BETA),
    ("membership", lambda b: b["membership"], "bob-beta-owner"),
    ("apikey", lambda b: b["key"], "beta-key-name"),
    ("secret", lambda b: b["secret"], "BETA_SECRET"),
    ("integration", lambda b: b["integration"], "beta-int"),
    ("auditevent", lambda b: b["audit"], BETA),
]


@pytest.mark.parametrize(("model", "pick", "marker"), BETA_OBJECTS)
@pytest.mark.parametrize("view", ["change", "history", "delete"])
def test_another_orgs_object_url_reveals_nothing(model, pick, marker, view, owner, beta):
    """Another org's object answers exactly like an id that does not exist, and shows no data."""
    client = login(owner)
    target, missing = url(model, view, pick(beta).pk), url(model, view, 999999)
    for method in ("get", "post"):
        response = getattr(client, method)(target, {"post": "yes", "name": "hijacked"})
        assert response.status_code == getattr(client, method)(missing, {"post": "yes"}).status_code
        assert response.status_code in (302, 403)  # "doesn't exist" redirect; 403 where nobody may post
        assert marker.encode() not in response.content
    landing = client.get(target, follow=True)
    assert marker.encode() not in landing.content
    assert Organization.objects.get(slug=BETA).name == "Globex Beta"
    assert type(pick(beta)).objects.filter(pk=pick(beta).pk).exists()


def test_list_filter_offers_only_the_users_orgs(owner, org, beta):
    gamma = f.OrganizationFactory(slug="initech-gamma")
    Membership.objects.create(organization=gamma, user=owner, role=OWNER)
    f.secret(org, "ALPHA_SECRET", "a")
    f.secret(gamma, "GAMMA_SECRET", "g")
    content = login(owner).get(url("secret", "changelist")).content
    assert b"organization__id__exact=%d" % org.pk in content
    assert b"organization__id__exact=%d" % gamma.pk in content
    assert b"organization__id__exact=%d" % beta["org"].pk not in content
    assert BETA.encode() not in content


def test_role_is_checked_per_org_not_somewhere(org, acme_data, beta):
    # Viewer in acme, owner in globex-beta: keys and members are owner-only, so only beta's show.
    user = f.member(org, VIEWER, "mixed")
    Membership.objects.create(organization=beta["org"], user=user, role=OWNER)
    client = login(user)
    keys = client.get(url("apikey", "changelist")).content
    assert b"beta-key-name" in keys and b"alpha-key-name" not in keys
    assert client.get(url("apikey", "change", acme_data["key"].pk)).status_code == 302
    # The org is visible to the viewer, but read-only; beta's is editable.
    assert b'name="_save"' not in client.get(url("organization", "change", org.pk)).content
    assert b'name="_save"' in client.get(url("organization", "change", beta["org"].pk)).content


def test_superuser_sees_every_org(org, acme_data, beta):
    root = get_user_model().objects.create_superuser("root", "root@example.com", f.PASSWORD)
    content = login(root).get(url("secret", "changelist")).content
    assert b"ALPHA_SECRET" in content and b"BETA_SECRET" in content


# --- roles ------------------------------------------------------------------------------------------
def test_viewer_reads_the_org_but_cannot_change_it(viewer, org, acme_data):
    client = login(viewer)
    assert client.get(url("organization", "changelist")).status_code == 200
    page = client.get(url("organization", "change", org.pk))
    assert page.status_code == 200 and b"acme" in page.content
    assert b'name="_save"' not in page.content and b'name="_continue"' not in page.content
    response = client.post(url("organization", "change", org.pk), {"name": "Hacked", "retention_days": 7})
    assert response.status_code == 403
    assert Organization.objects.get(pk=org.pk).name == org.name
    # Owner- and editor-level models are closed to a viewer.
    for model in ("secret", "integration", "apikey", "membership", "auditevent"):
        assert client.get(url(model, "changelist")).status_code == 403, model
    assert client.get(url("organization", "delete", org.pk)).status_code == 403


def test_editor_sees_secrets_and_integrations_read_only(editor, acme_data):
    client = login(editor)
    secret, integration = acme_data["secret"], acme_data["integration"]
    assert b"ALPHA_SECRET" in client.get(url("secret", "changelist")).content
    page = client.get(url("secret", "change", secret.pk))
    assert page.status_code == 200
    assert b'name="_save"' not in page.content and b'name="value"' not in page.content
    assert client.post(url("secret", "change", secret.pk), {"description": "x", "value": "y"}).status_code == 403
    assert client.get(url("secret", "add")).status_code == 403
    assert client.post(url("secret", "delete", secret.pk), {"post": "yes"}).status_code == 403
    assert b'name="_save"' not in client.get(url("integration", "change", integration.pk)).content
    assert client.post(url("integration", "change", integration.pk), {"name": "x"}).status_code == 403
    for model in ("apikey", "membership", "auditevent"):
        assert client.get(url(model, "changelist")).status_code == 403, model
    assert Secret.objects.get(pk=secret.pk).current_version == 1
    assert not AuditEvent.objects.filter(actor_user=editor).exists()


# --- secrets -------------------------------------------------------------------------------------------
def test_owner_sets_a_secret_value_that_no_page_ever_renders(owner, org):
    client = login(owner)
    response = client.post(url("secret", "add"), {
        "organization": org.pk, "name": "OPENAI_KEY", "description": "model key",
        "allowed_agents": "support, billing", "value": VALUE, "_save": "Save",
    })
    assert response.status_code == 302, response.content
    secret = Secret.objects.get(organization=org, name="OPENAI_KEY")
    assert secret.allowed_agents == ["billing", "support"] and secret.current_version == 1
    # Rotate through the change form; then change only the description (no new version).
    change = url("secret", "change", secret.pk)
    form = {"description": "model key", "allowed_agents": "support, billing", "value": ROTATED, "_save": "Save"}
    assert client.post(change, form).status_code == 302
    assert client.post(change, {**form, "description": "the model key", "value": ""}).status_code == 302
    secret.refresh_from_db()
    assert secret.current_version == 2 and secret.description == "the model key"

    with connection.cursor() as cursor:
        cursor.execute("SELECT ciphertext FROM orgs_secretversion WHERE secret_id = %s ORDER BY version", [secret.pk])
        stored = [row[0] for row in cursor.fetchall()]
    assert [crypto.decrypt(c) for c in stored] == [VALUE, ROTATED]
    assert all(VALUE not in c and ROTATED not in c for c in stored)

    event = AuditEvent.objects.filter(organization=org, action="secret.updated").order_by("-at", "-id").first()
    pages = [
        url("secret", "changelist"), change, url("secret", "history", secret.pk), url("secret", "delete", secret.pk),
        url("auditevent", "changelist"), url("auditevent", "change", event.pk), "/admin/",
    ]
    for page in pages:
        response = client.get(page)
        assert response.status_code == 200, page
        for leak in (VALUE, ROTATED, *stored):
            assert leak.encode() not in response.content, page
    assert b"v2" in client.get(change).content  # the version history shows numbers only

    actions = list(AuditEvent.objects.filter(organization=org, target_id="OPENAI_KEY").values_list("action", "actor_user"))
    assert actions.count(("secret.created", owner.pk)) == 1 and actions.count(("secret.updated", owner.pk)) == 2
    assert not any(VALUE in json.dumps(e.data) for e in AuditEvent.objects.all())


def test_a_new_secret_needs_a_value_and_a_free_name(owner, org, acme_data):
    client = login(owner)
    form = {"organization": org.pk, "name": "NO_VALUE", "description": "", "allowed_agents": "", "value": ""}
    response = client.post(url("secret", "add"), form)
    assert response.status_code == 200 and b"A new secret needs a value." in response.content
    response = client.post(url("secret", "add"), {**form, "name": "ALPHA_SECRET", "value": "overwrite"})
    assert response.status_code == 200 and b"already exists" in response.content
    assert Secret.objects.get(pk=acme_data["secret"].pk).current_version == 1
    assert not Secret.objects.filter(name="NO_VALUE").exists()


def test_owner_cannot_write_into_another_org(owner, org, beta):
    client = login(owner)
    add_page = client.get(url("secret", "add")).content
    assert b"acme" in add_page and BETA.encode() not in add_page
    response = client.post(url("secret", "add"), {
        "organization": beta["org"].pk, "name": "PLANTED", "description": "", "allowed_agents": "", "value": "x",
    })
    assert response.status_code == 200 and b"Select a valid choice" in response.content
    assert not Secret.objects.filter(name="PLANTED").exists()


def test_owner_deletes_a_secret_through_the_service(owner, org, acme_data):
    secret = acme_data["secret"]
    response = login(owner).post(url("secret", "delete", secret.pk), {"post": "yes"})
    assert response.status_code == 302
    assert not Secret.objects.filter(pk=secret.pk).exists()
    assert not SecretVersion.objects.filter(secret_id=secret.pk).exists()
    assert AuditEvent.objects.filter(organization=org, action="secret.deleted", actor_user=owner).exists()


# --- API keys -------------------------------------------------------------------------------------------
def test_api_key_plaintext_is_shown_once_and_the_hash_never(owner, org):
    client = login(owner)
    response = client.post(url("apikey", "add"), {
        "organization": org.pk, "name": "ci key", "preset": "runner", "scopes": ["runs:read"],
        "agents": "support", "expires_at_0": "", "expires_at_1": "", "_save": "Save",
    }, follow=True)
    assert response.status_code == 200
    shown = [m for m in messages_of(response) if "will not be shown again" in m]
    assert len(shown) == 1
    plaintext = re.search(r"fx_live_[A-Za-z0-9_-]+", shown[0]).group(0)
    key = ApiKey.objects.get(organization=org, name="ci key")
    assert key.key_hash == hash_credential(plaintext)
    assert key.scopes == ["agents:execute", "runs:read"] and key.agents == ["support"]
    assert AuditEvent.objects.filter(organization=org, action="key.created", actor_user=owner).exists()

    changelist = client.get(url("apikey", "changelist"))
    detail = client.get(url("apikey", "change", key.pk))
    for page in (changelist, detail, client.get(url("apikey", "history", key.pk))):
        assert page.status_code == 200
        assert plaintext.encode() not in page.content and key.key_hash.encode() not in page.content
    assert key.prefix.encode() in changelist.content
    # After creation only the key's rate limits are editable (issue 14 item 1).
    assert b'name="requests_per_minute"' in detail.content and b'name="name"' not in detail.content


def test_api_key_needs_scopes_or_a_preset(owner, org):
    response = login(owner).post(url("apikey", "add"), {
        "organization": org.pk, "name": "empty", "preset": "", "agents": "", "expires_at_0": "", "expires_at_1": "",
    })
    assert response.status_code == 200 and b"Give scopes, a preset, or both." in response.content
    assert not ApiKey.objects.filter(name="empty").exists()


def test_revoke_action_goes_through_the_service(owner, org, acme_data):
    key = acme_data["key"]
    response = login(owner).post(url("apikey", "changelist"), {"action": "revoke", "_selected_action": [key.pk]})
    assert response.status_code == 302
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert AuditEvent.objects.filter(organization=org, action="key.revoked", actor_user=owner, target_id=str(key.pk)).exists()
    assert login(owner).post(url("apikey", "delete", key.pk), {"post": "yes"}).status_code == 403


# --- members ---------------------------------------------------------------------------------------------
def test_last_owner_cannot_be_demoted_or_removed(owner, org):
    client = login(owner)
    membership = Membership.objects.get(organization=org, user=owner)
    change = url("membership", "change", membership.pk)
    response = client.post(change, {"role": EDITOR, "_save": "Save"}, follow=True)
    assert any("last owner" in m for m in messages_of(response))
    response = client.post(url("membership", "delete", membership.pk), {"post": "yes"}, follow=True)
    assert any("last owner" in m for m in messages_of(response))
    response = client.post(url("membership", "changelist"),
                           {"action": "delete_selected", "_selected_action": [membership.pk], "post": "yes"}, follow=True)
    assert any("last owner" in m for m in messages_of(response))
    membership.refresh_from_db()
    assert membership.role == OWNER
    assert not AuditEvent.objects.filter(organization=org, action__startswith="member.").exists()


def test_owner_adds_changes_and_removes_a_member(owner, org):
    f.UserFactory(username="newbie", email="newbie@example.com")
    client = login(owner)
    response = client.post(url("membership", "add"), {"organization": org.pk, "user": "NEWBIE@example.com", "role": EDITOR})
    assert response.status_code == 302, response.content
    membership = Membership.objects.get(organization=org, user__username="newbie")
    assert membership.role == EDITOR
    assert client.post(url("membership", "change", membership.pk), {"role": VIEWER}).status_code == 302
    membership.refresh_from_db()
    assert membership.role == VIEWER
    unknown = client.post(url("membership", "add"), {"organization": org.pk, "user": "nobody", "role": VIEWER})
    assert unknown.status_code == 200 and b"No active user" in unknown.content
    assert client.post(url("membership", "delete", membership.pk), {"post": "yes"}).status_code == 302
    assert not Membership.objects.filter(pk=membership.pk).exists()
    actions = list(AuditEvent.objects.filter(organization=org, actor_user=owner).values_list("action", flat=True))
    assert sorted(actions) == ["member.added", "member.removed", "member.role_changed"]


def test_editor_cannot_manage_members(editor, owner, org):
    client = login(editor)
    membership = Membership.objects.get(organization=org, user=owner)
    assert client.get(url("membership", "add")).status_code == 403
    assert client.get(url("membership", "change", membership.pk)).status_code == 403  # the whole model is owner-only
    assert Membership.objects.get(pk=membership.pk).role == OWNER


# --- organizations, integrations, audit --------------------------------------------------------------------
def test_any_member_creates_an_org_and_owns_it(viewer, org):
    client = login(viewer)
    response = client.post(url("organization", "add"), {"slug": "new-org", "name": "New Org", "retention_days": 14})
    assert response.status_code == 302, response.content
    created = Organization.objects.get(slug="new-org")
    assert Membership.objects.get(organization=created, user=viewer).role == OWNER
    assert AuditEvent.objects.filter(organization=created, action="org.created", actor_user=viewer).exists()
    taken = client.post(url("organization", "add"), {"slug": "acme", "name": "Dup", "retention_days": 14})
    assert taken.status_code == 200 and Organization.objects.filter(slug="acme").count() == 1
    assert client.post(url("organization", "delete", created.pk), {"post": "yes"}).status_code == 403


def test_owner_changes_org_settings_through_the_service(owner, org):
    client = login(owner)
    response = client.post(url("organization", "change", org.pk), {"name": "Acme Corp", "retention_days": 90})
    assert response.status_code == 302
    org.refresh_from_db()
    assert (org.name, org.retention_days) == ("Acme Corp", 90)
    event = AuditEvent.objects.get(organization=org, action="org.settings_changed")
    assert event.actor_user == owner and event.data["after"] == {"name": "Acme Corp", "retention_days": 90}
    invalid = client.post(url("organization", "change", org.pk), {"name": "Acme Corp", "retention_days": 0})
    assert invalid.status_code == 200
    assert AuditEvent.objects.filter(action="org.settings_changed").count() == 1


def test_owner_manages_integrations_through_the_service(owner, org, acme_data):
    client = login(owner)
    form = {"organization": org.pk, "slug": "crm", "name": "CRM", "kind": "http",
            "config": json.dumps({"baseUrl": "https://crm.example.com/api"}), "credentials_secret": "ALPHA_SECRET",
            "status": "connected"}
    assert client.post(url("integration", "add"), form).status_code == 302
    crm = Integration.objects.get(organization=org, slug="crm")
    assert crm.config["baseUrl"] == "https://crm.example.com/api" and crm.credentials_secret == "ALPHA_SECRET"
    bad = client.post(url("integration", "add"), {**form, "slug": "crm2", "credentials_secret": "MISSING"})
    assert bad.status_code == 200 and b"does not exist in this organization" in bad.content
    leaky = client.post(url("integration", "add"), {
        **form, "slug": "crm3", "config": json.dumps({"baseUrl": "https://x.example", "headers": {"Authorization": "x"}}),
    })
    assert leaky.status_code == 200 and b"look like credentials" in leaky.content
    change = {k: v for k, v in form.items() if k not in ("organization", "slug")} | {"status": "disconnected"}
    assert client.post(url("integration", "change", crm.pk), change).status_code == 302
    assert Integration.objects.get(pk=crm.pk).status == "disconnected"
    assert client.post(url("integration", "delete", crm.pk), {"post": "yes"}).status_code == 302
    actions = list(AuditEvent.objects.filter(organization=org, target_id="crm", actor_user=owner).values_list("action", flat=True))
    assert sorted(actions) == ["integration.created", "integration.deleted", "integration.updated"]


def test_audit_events_are_read_only_even_for_owners(owner, org, acme_data):
    client = login(owner)
    event = AuditEvent.objects.filter(organization=org).first()
    page = client.get(url("auditevent", "change", event.pk))
    assert page.status_code == 200 and event.action.encode() in page.content
    assert b'name="_save"' not in page.content
    assert client.get(url("auditevent", "add")).status_code == 403
    assert client.post(url("auditevent", "change", event.pk), {"action": "forged"}).status_code == 403
    assert client.post(url("auditevent", "delete", event.pk), {"post": "yes"}).status_code == 403
    assert AuditEvent.objects.get(pk=event.pk).action == event.action


# --- the base class later apps subclass ------------------------------------------------------------------
def _admin_request(method: str, user, data=None):
    """A bare admin request (RequestFactory) with a session and messages, CSRF off as in the test Client."""
    from django.contrib.messages.storage.fallback import FallbackStorage
    from django.contrib.sessions.backends.db import SessionStore
    from django.test import RequestFactory

    request = getattr(RequestFactory(), method)("/admin/x/", data or {})
    request.user, request.session, request._dont_enforce_csrf_checks = user, SessionStore(), True
    request._messages = FallbackStorage(request)
    return request


def test_base_limits_fk_choices_and_refuses_cross_org_references(owner, org, beta):
    from django.contrib.admin import AdminSite

    from fruxon.admin_base import OrgScopedAdmin

    gamma = f.OrganizationFactory(slug="initech-gamma")
    Membership.objects.create(organization=gamma, user=owner, role=OWNER)
    ours, other = f.secret(org, "OURS", "1"), f.secret(gamma, "OTHER", "2")
    model_admin = OrgScopedAdmin(SecretVersion, AdminSite(name="base-test"))
    request = _admin_request("get", owner)
    form_class = model_admin.get_form(request, fields=["organization", "secret", "version", "ciphertext", "created_by"])
    fields = form_class.base_fields
    assert set(fields["organization"].queryset) == {org, gamma}
    assert set(fields["secret"].queryset) == {ours, other}
    assert beta["owner"] not in set(fields["created_by"].queryset) and owner in set(fields["created_by"].queryset)
    crossed = form_class(data={"organization": org.pk, "secret": other.pk, "version": 9, "ciphertext": "x"})
    assert not crossed.is_valid() and "same organization" in str(crossed.errors["secret"])
    planted = form_class(data={"organization": org.pk, "secret": beta["secret"].pk, "version": 9, "ciphertext": "x"})
    assert not planted.is_valid() and "secret" in planted.errors
    assert form_class(data={"organization": org.pk, "secret": ours.pk, "version": 9, "ciphertext": "x"}).is_valid()


def test_base_checks_list_editable_rows_one_by_one(org, beta):
    from django.contrib.admin import AdminSite

    from fruxon.admin_base import OrgScopedAdmin

    class EditableIntegrations(OrgScopedAdmin):
        list_display = ("slug", "status")
        list_editable = ("status",)

    # Viewer in acme, owner in globex-beta: may edit beta's row, never acme's.
    user = f.member(org, VIEWER, "mixed")
    Membership.objects.create(organization=beta["org"], user=user, role=OWNER)
    ours = f.integration(org, "acme-int")
    model_admin = EditableIntegrations(Integration, AdminSite(name="base-test"))

    def post(integration, status):
        data = {"form-TOTAL_FORMS": "1", "form-INITIAL_FORMS": "1", "form-0-id": str(integration.pk),
                "form-0-status": status, "_save": "Save"}
        return model_admin.changelist_view(_admin_request("post", user, data))

    post(ours, "disconnected")
    assert Integration.objects.get(pk=ours.pk).status == "connected"
    post(beta["integration"], "disconnected")
    assert Integration.objects.get(pk=beta["integration"].pk).status == "disconnected"
