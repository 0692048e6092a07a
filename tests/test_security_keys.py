"""Issue 12, items 1, 5, 10 and 11: no escalation through keys, members or grants; password
guessing limits; invitations; personal token expiry and revocation on a password change.

Org "acme" (conftest: owner olivia, editor eddie, viewer vera) with agents "support" and "leaky".
"""
from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client, RequestFactory, override_settings
from django.utils import timezone

from agents import grants
from fruxon.errors import Forbidden
from orgs import login_throttle
from orgs.actor import Actor
from orgs.models import ApiKey, AuditEvent, Invitation, Membership, UserToken
from orgs.roles import ALL_SCOPES, ROLE_SCOPES
from orgs.services import members

from . import factories as f
from .builders import SYSTEM, agent_with_revision
from .sweep import tenant_routes

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def agents(org):
    return {slug: agent_with_revision(org, slug)[0] for slug in ("support", "leaky")}


def _error(response, status: int, code: str) -> dict:
    assert response.status_code == status, (response.status_code, response.content[:400])
    body = response.json()["error"]
    assert body["code"] == code
    return body


def _rights(org):
    """Everything a refused request must leave as it was."""
    return (sorted(ApiKey.objects.filter(organization=org).values_list("pk", "scopes", "agents", "expires_at")),
            sorted(Membership.objects.filter(organization=org).values_list("user__username", "role")),
            sorted(Invitation.objects.filter(organization=org).values_list("email", "role")),
            AuditEvent.objects.filter(organization=org).count())


# --- item 1: no escalation through keys, members or grants -------------------------------------
def test_item1_keys_write_cannot_mint_admin_key(org, agents, api):
    """The review's reproduction: keys:read+keys:write limited to support asked for the admin preset."""
    _, plain = f.api_key(org, scopes=["keys:read", "keys:write"], agents=["support"])
    before = _rights(org)
    body = _error(api.as_key(plain).post("/v1/acme/api-keys", {"name": "root", "preset": "admin"}, format="json"),
                  403, "forbidden")
    assert set(body["details"]["missingScopes"]) == set(ALL_SCOPES) - {"keys:read", "keys:write"}
    assert body["details"]["agents"] == {"held": ["support"], "wanted": "all"}
    assert "'members:write'" in body["message"] and "support" in body["message"]
    assert _rights(org) == before
    # Within its rights it still mints: its own scopes, on support.
    ok = api.as_key(plain).post("/v1/acme/api-keys", {"name": "copy", "scopes": ["keys:read"], "agents": ["support"]},
                                format="json")
    assert ok.status_code == 201 and ok.json()["agents"] == ["support"]


def test_item1_key_cannot_add_owner(org, agents, owner, editor, viewer, api):
    """members:write adds only roles whose every scope the key holds, and org roles need an unlimited key."""
    _, limited_admin = f.api_key(org, preset="admin", agents=["support"])
    _, all_but_one = f.api_key(org, scopes=[s for s in ALL_SCOPES if s != "secrets:write"])
    _, editorish = f.api_key(org, scopes=sorted(ROLE_SCOPES["editor"] | {"members:read", "members:write"}))
    newcomer = f.UserFactory(username="newcomer")
    before = _rights(org)
    for plain, role in ((limited_admin, "viewer"), (all_but_one, "owner"), (editorish, "owner")):
        response = api.as_key(plain).post("/v1/acme/members", {"user": "newcomer", "role": role}, format="json")
        _error(response, 403, "forbidden")
    vera = Membership.objects.get(organization=org, user=viewer)
    olivia = Membership.objects.get(organization=org, user=owner)
    # Raising a viewer to owner, demoting or removing an owner: each needs the owner's rights.
    _error(api.as_key(editorish).patch(f"/v1/acme/members/{vera.pk}", {"role": "owner"}, format="json"), 403, "forbidden")
    _error(api.as_key(editorish).patch(f"/v1/acme/members/{olivia.pk}", {"role": "viewer"}, format="json"), 403, "forbidden")
    _error(api.as_key(editorish).delete(f"/v1/acme/members/{olivia.pk}"), 403, "forbidden")
    assert _rights(org) == before
    assert not Membership.objects.filter(user=newcomer).exists()
    # Within its rights: the editor-level key adds an editor, and raises vera to editor.
    assert api.as_key(editorish).post("/v1/acme/members", {"user": "newcomer", "role": "editor"},
                                      format="json").status_code == 201
    assert api.as_key(editorish).patch(f"/v1/acme/members/{vera.pk}", {"role": "editor"},
                                       format="json").status_code == 200
    # An unlimited key with every scope may add an owner (it holds everything an owner does).
    _, root = f.api_key(org, preset="admin")
    assert api.as_key(root).patch(f"/v1/acme/members/{vera.pk}", {"role": "owner"}, format="json").status_code == 200


def test_item1_key_cannot_rotate_a_broader_key(org, agents, api):
    admin_key, _ = f.api_key(org, preset="admin")
    _, plain = f.api_key(org, scopes=["keys:write", "runs:read"], agents=["support"])
    before = _rights(org)
    body = _error(api.as_key(plain).post(f"/v1/acme/api-keys/{admin_key.pk}:rotate", {"overlapSeconds": 0},
                                         format="json"), 403, "forbidden")
    assert "missingScopes" in body["details"] and "agents" in body["details"]
    assert _rights(org) == before
    narrow, _ = f.api_key(org, scopes=["runs:read"], agents=["support"])
    assert api.as_key(plain).post(f"/v1/acme/api-keys/{narrow.pk}:rotate", {}, format="json").status_code == 201


def test_item1_key_cannot_revoke_a_broader_key(org, agents, api):
    """Revoking hands nothing out, but a narrow keys:write key must not cut off the org's broader keys."""
    admin_key, admin_plain = f.api_key(org, preset="admin")
    _, plain = f.api_key(org, scopes=["keys:write", "runs:read"], agents=["support"])
    before = _rights(org)
    body = _error(api.as_key(plain).delete(f"/v1/acme/api-keys/{admin_key.pk}"), 403, "forbidden")
    assert "missingScopes" in body["details"] and "agents" in body["details"]
    assert _rights(org) == before
    assert api.as_key(admin_plain).get("/v1/acme/api-keys").status_code == 200  # still works
    narrow, _ = f.api_key(org, scopes=["runs:read"], agents=["support"],
                          expires_at=timezone.now() + timedelta(days=400))  # a later expiry does not matter here
    assert api.as_key(plain).delete(f"/v1/acme/api-keys/{narrow.pk}").status_code == 204
    assert ApiKey.objects.get(pk=narrow.pk).revoked_at is not None


def test_item1_expiring_key_mints_only_keys_that_end_no_later(org, api):
    ends = timezone.now() + timedelta(hours=2)
    _, plain = f.api_key(org, scopes=["keys:write", "runs:read"], expires_at=ends)
    client = api.as_key(plain)
    for expires in (None, (ends + timedelta(minutes=1)).isoformat()):
        body = _error(client.post("/v1/acme/api-keys", {"name": "x", "scopes": ["runs:read"], "expiresAt": expires},
                                  format="json"), 403, "forbidden")
        assert body["details"]["expiresAt"]["held"] == ends.isoformat()
    assert client.post("/v1/acme/api-keys", {"name": "x", "scopes": ["runs:read"], "expiresAt": ends.isoformat()},
                       format="json").status_code == 201


def test_item1_grants_give_no_more_than_the_key_holds_on_the_agent(org, agents, owner, editor, viewer, api):
    support = agents["support"]
    _, members_only = f.api_key(org, scopes=["members:read", "members:write"], agents=["support"])
    _, editor_on_support = f.api_key(org, scopes=sorted(ROLE_SCOPES["editor"] | {"members:write"}), agents=["support"])
    before = _rights(org), grants.list_grants(agent=support)
    body = _error(api.as_key(members_only).put("/v1/acme/agents/support/grants/vera", {"role": "viewer"}, format="json"),
                  403, "forbidden")
    assert set(body["details"]["missingScopes"]) == set(ROLE_SCOPES["viewer"])
    _error(api.as_key(editor_on_support).put("/v1/acme/agents/support/grants/vera", {"role": "admin"}, format="json"),
           403, "forbidden")
    # The key's agent list still bounds it: leaky is not its agent.
    _error(api.as_key(editor_on_support).put("/v1/acme/agents/leaky/grants/vera", {"role": "viewer"}, format="json"),
           403, "forbidden")
    assert (_rights(org), grants.list_grants(agent=support)) == before
    response = api.as_key(editor_on_support).put("/v1/acme/agents/support/grants/vera", {"role": "editor"}, format="json")
    assert response.status_code == 201 and grants.grant_role(user=viewer, agent=support) == "editor"
    # An admin grant is beyond it, so it can neither replace nor remove one.
    grants.set_grant(actor=SYSTEM, agent=support, username="eddie", role="admin")
    _error(api.as_key(editor_on_support).put("/v1/acme/agents/support/grants/eddie", {"role": "viewer"}, format="json"),
           403, "forbidden")
    _error(api.as_key(editor_on_support).delete("/v1/acme/agents/support/grants/eddie"), 403, "forbidden")
    assert grants.grant_role(user=editor, agent=support) == "admin"


def test_item1_people_give_no_role_above_their_own(org, agents, owner, editor, viewer, api):
    """A person's org role bounds memberships and invitations; their role on an agent bounds grants."""
    support = agents["support"]
    before = _rights(org)
    for role in ("owner", "editor"):
        with pytest.raises(Forbidden):
            members.add_or_invite(actor=Actor(user=viewer), organization=org, user_identifier="x@example.com", role=role)
    with pytest.raises(Forbidden) as refused:
        members.add_member(actor=Actor(user=editor), organization=org, user_identifier="vera", role="owner")
    assert refused.value.details == {"role": "editor", "wanted": "owner"}
    with pytest.raises(Forbidden):
        grants.set_grant(actor=Actor(user=viewer), agent=support, username="eddie", role="editor")
    with pytest.raises(Forbidden):  # a stranger to the org gives nothing
        members.add_member(actor=Actor(user=f.UserFactory(username="stranger")), organization=org,
                           user_identifier="vera", role="viewer")
    assert _rights(org) == before
    # An agent admin (org viewer with the admin grant) grants up to admin on that agent, through the API.
    grants.set_grant(actor=SYSTEM, agent=support, username="vera", role="admin")
    assert api.as_user(viewer).put("/v1/acme/agents/support/grants/eddie", {"role": "admin"},
                                   format="json").status_code == 201


def test_item1_role_scopes_agree_with_the_access_maps():
    """ROLE_SCOPES says what each role amounts to: every scope the API asks of a role is in the
    role's set, every scope in a set is asked of that role (or a lower one) somewhere, and roles nest."""
    from orgs.roles import RANK

    asked: dict[str, int] = {}
    for route in tenant_routes():
        for method in route.methods:
            access = route.view_class.access[method]
            if access.scope is None:
                continue
            assert access.scope in ROLE_SCOPES[access.role], (route.name, method, access)
            asked[access.scope] = min(asked.get(access.scope, 99), RANK[access.role])
    for role, scopes in ROLE_SCOPES.items():
        for scope in scopes:
            assert asked.get(scope, 99) <= RANK[role], (role, scope)
    order = sorted(ROLE_SCOPES, key=RANK.__getitem__)
    assert all(ROLE_SCOPES[lo] <= ROLE_SCOPES[hi] for lo, hi in zip(order, order[1:]))
    assert ROLE_SCOPES["owner"] == set(ALL_SCOPES)


# --- item 5: password guessing ------------------------------------------------------------------
def _token(client=None, username="olivia", password=f.PASSWORD, **extra):
    return (client or Client()).post("/v1/auth/token", {"username": username, "password": password},
                                     content_type="application/json", **extra)


def test_item5_token_throttle_ignores_forwarded_for(owner):
    """The review's reproduction: 50 wrong passwords, each with a new X-Forwarded-For, then the right one."""
    answers = [_token(password=f"wrong-{i}", HTTP_X_FORWARDED_FOR=f"203.0.113.{i}").status_code for i in range(50)]
    assert answers[:10] == [401] * 10  # the account's limit (FRUXON_LOGIN_MAX_FAILURES_PER_ACCOUNT)
    assert set(answers[10:]) == {429}
    right = _token(HTTP_X_FORWARDED_FOR="198.51.100.1")
    _error(right, 429, "rate_limited")
    assert 0 < int(right["Retry-After"]) <= 900
    # The lock is the account's: from a fresh address too (past the per-address request rate).
    fresh = _token(REMOTE_ADDR="192.0.2.77")
    body = _error(fresh, 429, "rate_limited")
    assert 0 < int(fresh["Retry-After"]) <= 900 and body["details"]["retryAfter"] == int(fresh["Retry-After"])
    assert not UserToken.objects.filter(user=owner).exists()
    # Another account is not locked.
    f.member(owner.memberships.first().organization, "viewer", "walter")
    assert _token(username="walter", REMOTE_ADDR="192.0.2.77").status_code == 201


@override_settings(FRUXON_LOGIN_MAX_FAILURES_PER_ADDRESS=5)
def test_item5_token_throttle_per_address(owner, viewer):
    """Guessing across many accounts from one address locks the address, whatever it claims to forward."""
    for i in range(5):
        assert _token(username=f"guess{i}", password="x", HTTP_X_FORWARDED_FOR=f"203.0.113.{i}").status_code == 401
    _error(_token(), 429, "rate_limited")
    assert _token(username="vera", REMOTE_ADDR="192.0.2.8").status_code == 201  # another address is fine


@override_settings(FRUXON_LOGIN_MAX_FAILURES_PER_ACCOUNT=3, FRUXON_LOGIN_WINDOW_SECONDS=1)
def test_item5_lock_ends_when_the_window_passes(owner):
    import time

    for _ in range(3):
        assert _token(password="nope").status_code == 401
    _error(_token(), 429, "rate_limited")
    time.sleep(1.2)
    assert _token().status_code == 201
    # A success clears the account's count: three more failures are needed for the next lock.
    for _ in range(2):
        assert _token(password="nope").status_code == 401
    assert _token().status_code == 201


@override_settings(FRUXON_TRUSTED_PROXIES=["10.0.0.0/8", "2001:db8::/32"])
def test_item5_forwarded_for_is_believed_only_from_trusted_proxies():
    from orgs.login_throttle import client_address

    def address(remote, forwarded=None):
        meta = {"REMOTE_ADDR": remote}
        if forwarded is not None:
            meta["HTTP_X_FORWARDED_FOR"] = forwarded
        return client_address(RequestFactory().get("/", **meta))

    assert address("198.51.100.9", "1.2.3.4") == "198.51.100.9"  # not a proxy: the header is the client's own claim
    assert address("10.0.0.5", "1.2.3.4") == "1.2.3.4"
    assert address("10.0.0.5", "6.6.6.6, 1.2.3.4, 10.0.0.7") == "1.2.3.4"  # the client's own prefix is ignored
    assert address("10.0.0.5", "10.1.1.1, 10.0.0.7") == "10.1.1.1"  # every hop trusted: the first one
    assert address("10.0.0.5", "junk, 1.2.3.4") == "1.2.3.4"
    assert address("10.0.0.5", "1.2.3.4, junk") == "10.0.0.5"  # a malformed hop ends the trust
    assert address("10.0.0.5") == "10.0.0.5"
    assert address("2001:db8::1", "2001:0db8:ffff::2, 2a00::1") == "2a00::1"


def test_item5_admin_login_throttled(owner):
    def login(password, **extra):
        client = Client()
        response = client.post("/admin/login/?next=/admin/", {"username": "olivia", "password": password,
                                                               "next": "/admin/"}, **extra)
        return client, response

    for i in range(10):
        client, response = login(f"wrong-{i}", HTTP_X_FORWARDED_FOR=f"203.0.113.{i}")
        assert response.status_code == 200 and "_auth_user_id" not in client.session
    client, response = login(f.PASSWORD, HTTP_X_FORWARDED_FOR="198.51.100.1")
    assert response.status_code == 200, response.status_code  # the form again, not the redirect of a login
    assert "Too many failed logins" in response.content.decode()
    assert "_auth_user_id" not in client.session
    # The API shares the lock: it is the account's, not the form's.
    _error(_token(), 429, "rate_limited")


@override_settings(FRUXON_LOGIN_MAX_FAILURES_PER_ADDRESS=5)
def test_item5_admin_login_throttled_per_address(owner):
    for i in range(5):
        Client().post("/admin/login/", {"username": f"guess{i}", "password": "x"})
    client = Client()
    response = client.post("/admin/login/?next=/admin/", {"username": "olivia", "password": f.PASSWORD, "next": "/admin/"})
    assert "Too many failed logins" in response.content.decode() and "_auth_user_id" not in client.session
    other = Client(REMOTE_ADDR="192.0.2.9")
    assert other.post("/admin/login/?next=/admin/", {"username": "olivia", "password": f.PASSWORD,
                                                     "next": "/admin/"}).status_code == 302


_FAILER = """
import sys, django
django.setup()
from orgs import login_throttle
for _ in range(int(sys.argv[1])):
    login_throttle.failed(username="shared-account", address=None)
"""


def test_item5_counters_are_atomic_across_processes(db):
    """Two processes counting failures for one account in Redis (the production cache) at once:
    every failure is counted, so the lock holds for both."""
    redis_url = os.environ.get("FRUXON_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    redis_cache = {"default": {"BACKEND": "fruxon.cache.SharedRedisCache", "LOCATION": redis_url,
                               "KEY_PREFIX": "fruxon"}}
    env = {**os.environ, "REDIS_URL": redis_url, "DJANGO_SETTINGS_MODULE": "fruxon.settings", "FRUXON_TESTING": "1"}
    with override_settings(CACHES=redis_cache):
        from django.core.cache import caches

        caches["default"].clear()
        try:
            workers = [subprocess.Popen([sys.executable, "-c", _FAILER, "40"], cwd=ROOT, env=env) for _ in range(2)]
            assert [w.wait(timeout=120) for w in workers] == [0, 0]
            stem = login_throttle._subjects("shared-account", None)[0][0]
            assert caches["default"].get(f"{stem}:n") == 80
            with pytest.raises(login_throttle.LoginThrottled):
                login_throttle.check(username="Shared-Account ", address=None)
        finally:
            caches["default"].clear()


# --- item 10: invitations ----------------------------------------------------------------------
def test_item10_email_without_account_is_invited(org, owner_client):
    response = owner_client.post("/v1/acme/members", {"user": "Newbie@Example.com", "role": "editor"}, format="json")
    assert response.status_code == 202 and response.json() == {"invited": True}
    invitation = Invitation.objects.get(organization=org)
    assert invitation.role == "editor" and invitation.accepted_at is None and invitation.invited_by.username == "olivia"
    event = AuditEvent.objects.get(organization=org, action="member.invited")
    assert event.data == {"email": "Newbie@Example.com", "role": "editor", "before": None}
    # Re-inviting updates the role; still one invitation.
    again = owner_client.post("/v1/acme/members", {"user": "newbie@example.com", "role": "viewer"}, format="json")
    assert again.status_code == 202 and again.json() == {"invited": True}
    assert list(Invitation.objects.filter(organization=org).values_list("role", flat=True)) == ["viewer"]
    assert not Membership.objects.filter(organization=org, user__email__iexact="newbie@example.com").exists()
    # An unknown username (not an email) is still 400.
    _error(owner_client.post("/v1/acme/members", {"user": "nobody", "role": "viewer"}, format="json"), 400, "unknown_user")
    # The account appears: the invitation is accepted with its role.
    user = get_user_model().objects.create_user("newbie", "newbie@example.com", f.PASSWORD)
    membership = Membership.objects.get(organization=org, user=user)
    assert membership.role == "viewer"
    invitation.refresh_from_db()
    assert invitation.accepted_at is not None
    added = AuditEvent.objects.get(organization=org, action="member.added", target_id=str(membership.pk))
    assert added.actor_label == "system" and added.data["invitationId"] == invitation.pk
    # An existing account's email is a member at once (201), as before.
    f.UserFactory(username="known", email="known@example.com")
    assert owner_client.post("/v1/acme/members", {"user": "known@example.com", "role": "viewer"},
                             format="json").status_code == 201


def test_item10_invitation_accepted_when_email_is_set_later(org, owner_client):
    assert owner_client.post("/v1/acme/members", {"user": "later@example.com", "role": "editor"},
                             format="json").status_code == 202
    user = get_user_model().objects.create_user("later", "", f.PASSWORD)  # as the admin's add-user form does
    assert not Membership.objects.filter(user=user).exists()
    user.email = "later@example.com"
    user.save()
    assert Membership.objects.get(organization=org, user=user).role == "editor"


def test_item10_no_invitation_above_own_rights(org, owner, agents, api):
    _, editorish = f.api_key(org, scopes=sorted(ROLE_SCOPES["editor"] | {"members:write"}))
    _, limited = f.api_key(org, preset="admin", agents=["support"])
    before = _rights(org)
    _error(api.as_key(editorish).post("/v1/acme/members", {"user": "boss@example.com", "role": "owner"},
                                      format="json"), 403, "forbidden")
    _error(api.as_key(limited).post("/v1/acme/members", {"user": "boss@example.com", "role": "viewer"},
                                    format="json"), 403, "forbidden")
    assert _rights(org) == before
    # An editor invitation is within the editor-level key; raising it to owner later is not.
    assert api.as_key(editorish).post("/v1/acme/members", {"user": "boss@example.com", "role": "editor"},
                                      format="json").status_code == 202
    _error(api.as_key(editorish).post("/v1/acme/members", {"user": "boss@example.com", "role": "owner"},
                                      format="json"), 403, "forbidden")
    assert Invitation.objects.get(organization=org).role == "editor"


# --- item 11: personal tokens end ----------------------------------------------------------------
def _bearer(token: str) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {token}")


def test_item11_token_expires(owner):
    response = _token()
    assert response.status_code == 201
    plain = response.json()["token"]
    token = UserToken.objects.get(user=owner)
    assert abs(token.expires_at - (token.created_at + timedelta(hours=720))) < timedelta(seconds=1)
    assert _bearer(plain).get("/v1/orgs").status_code == 200
    UserToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    body = _error(_bearer(plain).get("/v1/orgs"), 401, "unauthenticated")
    assert "expired" in body["message"]
    # A token from before expiry existed (no expires_at) ends a TTL after it was made.
    UserToken.objects.filter(pk=token.pk).update(expires_at=None, created_at=timezone.now() - timedelta(hours=721))
    _error(_bearer(plain).get("/v1/orgs"), 401, "unauthenticated")
    UserToken.objects.filter(pk=token.pk).update(created_at=timezone.now() - timedelta(hours=1))
    assert _bearer(plain).get("/v1/orgs").status_code == 200
    with override_settings(FRUXON_USER_TOKEN_TTL_HOURS=2):
        assert _token().status_code == 201
        newest = UserToken.objects.filter(user=owner).latest("pk")
        assert abs(newest.expires_at - newest.created_at - timedelta(hours=2)) < timedelta(seconds=1)


def _live_tokens(user) -> list[str]:
    out = []
    for _ in range(2):
        response = _token(username=user.username)
        assert response.status_code == 201
        out.append(response.json()["token"])
    assert all(_bearer(t).get("/v1/orgs").status_code == 200 for t in out)
    return out


def _all_refused(tokens):
    return all(_bearer(t).get("/v1/orgs").status_code == 401 for t in tokens)


def test_item11_password_change_revokes_tokens(owner, viewer, monkeypatch):
    bystander = _live_tokens(viewer)
    # set_password + save
    tokens = _live_tokens(owner)
    owner.set_password("a-new-password-1")
    owner.save()
    assert _all_refused(tokens)
    # a save that leaves the password alone revokes nothing
    owner.set_password(f.PASSWORD)
    owner.save()
    tokens = _live_tokens(owner)
    owner.first_name = "Olivia"
    owner.save()
    assert all(_bearer(t).get("/v1/orgs").status_code == 200 for t in tokens)
    # the admin's own "change password" form
    admin = Client()
    admin.force_login(owner)
    response = admin.post("/admin/password_change/", {"old_password": f.PASSWORD, "new_password1": "x-Another-pass-77",
                                                      "new_password2": "x-Another-pass-77"})
    assert response.status_code == 302, response.content[:500]
    assert _all_refused(tokens)
    # the changepassword command (its prompt answered here; the command itself runs as shipped)
    owner.set_password(f.PASSWORD)
    owner.save()
    tokens = _live_tokens(owner)
    from django.contrib.auth.management.commands import changepassword

    monkeypatch.setattr(changepassword.Command, "_get_pass", lambda self, prompt="": "y-Third-pass-88")
    call_command("changepassword", "olivia", stdout=open(os.devnull, "w"))
    assert _all_refused(tokens)
    # a superuser changing someone's password in the admin
    owner.set_password(f.PASSWORD)
    owner.save()
    tokens = _live_tokens(owner)
    root = get_user_model().objects.create_superuser("root", "root@example.com", f.PASSWORD)
    admin = Client()
    admin.force_login(root)
    response = admin.post(f"/admin/auth/user/{owner.pk}/password/", {"password1": "z-Fourth-pass-99",
                                                                     "password2": "z-Fourth-pass-99",
                                                                     "usable_password": "true"})
    assert response.status_code == 302, response.content[:500]
    assert _all_refused(tokens)
    # nobody else's tokens were touched
    assert all(_bearer(t).get("/v1/orgs").status_code == 200 for t in bystander)
