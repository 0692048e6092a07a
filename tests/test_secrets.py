"""Secrets are write-only: the value is in no response, no log, no admin page, not plaintext at rest."""
from __future__ import annotations

import logging

import pytest
from django.core.management import call_command
from django.db import connection
from django.test import Client, override_settings

from orgs import crypto
from orgs.models import AuditEvent, Secret, SecretVersion
from orgs.services.secrets import SecretNotAllowed, resolve_value

from . import factories as f

VALUE = "sk-live-TOPSECRET-4242"


@pytest.fixture
def set_secret(org, owner_client):
    response = owner_client.put("/v1/acme/secrets/OPENAI_KEY",
                                {"value": VALUE, "description": "model key", "allowedAgents": ["support"]}, format="json")
    assert response.status_code == 201, response.content
    return response


def test_value_never_leaves_the_api(set_secret, owner_client, editor, api, caplog):
    caplog.set_level(logging.DEBUG)
    bodies = [set_secret.content]
    bodies.append(owner_client.get("/v1/acme/secrets").content)
    bodies.append(owner_client.get("/v1/acme/secrets/OPENAI_KEY").content)
    bodies.append(api.as_user(editor).get("/v1/acme/secrets").content)
    bodies.append(owner_client.put("/v1/acme/secrets/OPENAI_KEY", {"value": VALUE + "-v2"}, format="json").content)
    bodies.append(owner_client.get("/v1/acme/audit-events").content)
    bodies.append(owner_client.post("/v1/acme/secrets/OPENAI_KEY:rollback", {"version": 1}, format="json").content)
    for body in bodies:
        assert VALUE.encode() not in body
    assert VALUE not in caplog.text
    detail = owner_client.get("/v1/acme/secrets/OPENAI_KEY").json()
    assert detail["version"] == 3 and "value" not in detail
    assert detail["allowedAgents"] == ["support"] and detail["updatedBy"] == "olivia"
    assert not any(VALUE in str(e.data) for e in AuditEvent.objects.all())


def test_value_is_encrypted_at_rest(set_secret):
    with connection.cursor() as cursor:
        cursor.execute("SELECT ciphertext FROM orgs_secretversion")
        raw = [row[0] for row in cursor.fetchall()]
    assert raw and all(VALUE not in column for column in raw)
    assert crypto.decrypt(raw[0]) == VALUE


def test_value_never_in_admin_pages(set_secret, owner):
    owner.is_staff = True
    owner.save()
    client = Client()
    client.force_login(owner)
    secret = Secret.objects.get(name="OPENAI_KEY")
    for url in ["/admin/orgs/secret/", f"/admin/orgs/secret/{secret.pk}/change/", f"/admin/orgs/secret/{secret.pk}/history/"]:
        response = client.get(url)
        assert response.status_code == 200, url
        assert VALUE.encode() not in response.content


def test_allowed_agents_gate_resolution(set_secret, org):
    assert resolve_value(organization_id=org.pk, name="OPENAI_KEY", agent_slug="support") == VALUE
    with pytest.raises(SecretNotAllowed) as refused:
        resolve_value(organization_id=org.pk, name="OPENAI_KEY", agent_slug="billing")
    assert VALUE not in str(refused.value)


def test_versions_kept_and_rollback(set_secret, owner_client, org):
    owner_client.put("/v1/acme/secrets/OPENAI_KEY", {"value": "second"}, format="json")
    assert resolve_value(organization_id=org.pk, name="OPENAI_KEY", agent_slug="support") == "second"
    response = owner_client.post("/v1/acme/secrets/OPENAI_KEY:rollback", {"version": 1}, format="json")
    assert response.status_code == 200 and response.json()["version"] == 3
    assert resolve_value(organization_id=org.pk, name="OPENAI_KEY", agent_slug="support") == VALUE
    assert SecretVersion.objects.filter(secret__name="OPENAI_KEY").count() == 3


def test_metadata_update_without_value_keeps_version(set_secret, owner_client):
    response = owner_client.put("/v1/acme/secrets/OPENAI_KEY", {"allowedAgents": ["*"]}, format="json")
    assert response.status_code == 200 and response.json()["version"] == 1
    assert response.json()["allowedAgents"] == ["*"]


def test_new_secret_needs_value_and_writes_nothing(org, owner_client):
    response = owner_client.put("/v1/acme/secrets/EMPTY", {"description": "no value"}, format="json")
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_request"
    assert not Secret.objects.filter(name="EMPTY").exists()
    assert not AuditEvent.objects.filter(target_id="EMPTY").exists()


def test_bad_names_are_400(org, owner_client):
    for name in ["1BAD", "a" * 65, "has-dash"]:
        response = owner_client.put(f"/v1/acme/secrets/{name}", {"value": "x"}, format="json")
        assert response.status_code == 400, name
    assert Secret.objects.count() == 0


def test_rotate_secrets_reencrypts_with_newest_key(set_secret, org):
    from cryptography.fernet import Fernet

    old_keys = list(crypto.fernet()._fernets)
    new_key = Fernet.generate_key().decode()
    from django.conf import settings

    before = SecretVersion.objects.get().ciphertext
    with override_settings(FRUXON_ENCRYPTION_KEYS=[new_key, *settings.FRUXON_ENCRYPTION_KEYS]):
        call_command("rotate_secrets")
        after = SecretVersion.objects.get().ciphertext
        assert after != before
        assert Fernet(new_key.encode()).decrypt(after.encode()).decode() == VALUE
        assert resolve_value(organization_id=org.pk, name="OPENAI_KEY", agent_slug="support") == VALUE
    assert old_keys  # the old key list still decrypted the old token


def test_editor_lists_but_cannot_write(org, set_secret, editor, api):
    client = api.as_user(editor)
    assert client.get("/v1/acme/secrets").status_code == 200
    response = client.put("/v1/acme/secrets/OPENAI_KEY", {"value": "hijack"}, format="json")
    assert response.status_code == 403
    assert resolve_value(organization_id=org.pk, name="OPENAI_KEY", agent_slug="support") == VALUE
