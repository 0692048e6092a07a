"""API keys: shown once, stored hashed, revocable, rotatable, scoped."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from orgs.credentials import hash_credential
from orgs.models import ApiKey

from . import factories as f


def _create(client, **body):
    body.setdefault("name", "ci")
    return client.post("/v1/acme/api-keys", body, format="json")


def test_plaintext_shown_once_and_stored_hashed(org, owner_client, api):
    response = _create(owner_client, preset="runner")
    assert response.status_code == 201
    created = response.json()
    plaintext = created["key"]
    assert plaintext.startswith("fx_live_") and created["prefix"] == plaintext[:12]
    assert created["scopes"] == ["agents:execute"]
    key = ApiKey.objects.get(pk=created["id"])
    assert key.key_hash == hash_credential(plaintext) and plaintext not in str(key.__dict__)
    listing = owner_client.get("/v1/acme/api-keys").content.decode()
    detail = owner_client.get(f"/v1/acme/api-keys/{key.pk}").content.decode()
    assert plaintext not in listing and plaintext not in detail and key.key_hash not in listing + detail


def test_stored_hash_does_not_authenticate(org, owner_client, api):
    plaintext = _create(owner_client, preset="admin").json()["key"]
    digest = hash_credential(plaintext)
    assert api.as_key(plaintext).get("/v1/acme/integrations").status_code == 200
    for fake in (digest, "fx_live_" + digest):
        response = api.as_key(fake).get("/v1/acme/integrations")
        assert response.status_code == 401 and response.json()["error"]["code"] == "unauthenticated"


def test_revoked_key_gets_401_immediately(org, owner_client, api):
    created = _create(owner_client, preset="admin").json()
    client = api.as_key(created["key"])
    assert client.get("/v1/acme/integrations").status_code == 200  # now cached
    assert owner_client.delete(f"/v1/acme/api-keys/{created['id']}").status_code == 204
    response = client.get("/v1/acme/integrations")
    assert response.status_code == 401 and response.json()["error"]["code"] == "unauthenticated"
    assert owner_client.delete(f"/v1/acme/api-keys/{created['id']}").status_code == 409


def test_rotation_overlap(org, owner_client, api):
    old = _create(owner_client, scopes=["integrations:read"], agents=["support"]).json()
    response = owner_client.post(f"/v1/acme/api-keys/{old['id']}:rotate", {"overlapSeconds": 600}, format="json")
    assert response.status_code == 201
    new = response.json()
    assert new["key"] != old["key"] and new["scopes"] == ["integrations:read"] and new["agents"] == ["support"]
    assert new["rotatedFromId"] == old["id"]
    assert api.as_key(old["key"]).get("/v1/acme/integrations").status_code == 200
    assert api.as_key(new["key"]).get("/v1/acme/integrations").status_code == 200
    ApiKey.objects.filter(pk=old["id"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    from django.core.cache import cache

    cache.clear()
    assert api.as_key(old["key"]).get("/v1/acme/integrations").status_code == 401
    assert api.as_key(new["key"]).get("/v1/acme/integrations").status_code == 200


def test_scope_vocabulary_and_presets(org, owner_client):
    body = owner_client.get("/v1/acme/api-keys/scopes").json()
    assert "agents:execute" in body["scopes"] and "revisions:deploy" in body["scopes"]
    assert body["presets"]["runner"] == ["agents:execute"]
    assert all(s.endswith(":read") for s in body["presets"]["readonly"])
    assert "runs:read" in body["presets"]["builder"] and "secrets:read" not in body["presets"]["builder"]


@pytest.mark.parametrize("body", [
    {"name": "x"},
    {"name": "x", "scopes": ["agents:fly"]},
    {"name": "x", "preset": "god"},
    {"name": "x", "scopes": "agents:read"},
    {"name": "x", "preset": "admin", "agents": ["Not A Slug"]},
])
def test_bad_key_requests_write_nothing(org, owner_client, body):
    response = _create(owner_client, **body)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_request"
    assert ApiKey.objects.count() == 0


def test_key_of_one_org_cannot_touch_another(org, api):
    other = f.OrganizationFactory(slug="other")
    _, plaintext = f.api_key(other, preset="admin")
    response = api.as_key(plaintext).get("/v1/acme/integrations")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def test_last_used_is_recorded(org, api):
    key, plaintext = f.api_key(org, preset="readonly")
    assert key.last_used_at is None
    api.as_key(plaintext).get("/v1/acme/integrations")
    key.refresh_from_db()
    assert key.last_used_at is not None


def test_personal_token_revocation(org, owner, api):
    response = api.anonymous().post("/v1/auth/token", {"username": "olivia", "password": f.PASSWORD}, format="json")
    assert response.status_code == 201
    token = response.json()["token"]
    client = api.anonymous()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert client.get("/v1/orgs").status_code == 200
    assert client.delete("/v1/auth/token").status_code == 204
    assert client.get("/v1/orgs").status_code == 401
    wrong = api.anonymous().post("/v1/auth/token", {"username": "olivia", "password": "nope"}, format="json")
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "unauthenticated"
