"""Bad input: each gets 400 in the error shape and writes nothing."""
from __future__ import annotations

import pytest
from django.db import connection

from orgs.models import ApiKey, AuditEvent, Integration, Membership, Organization, Secret

MODELS = (Organization, Membership, ApiKey, Secret, Integration, AuditEvent)


def _counts():
    return {m.__name__: m.objects.count() for m in MODELS}


GOOD_INTEGRATION = {"slug": "shop", "config": {"baseUrl": "https://shop.example/api"}}

CASES = [
    # (method, path, body (str = raw), why)
    ("post", "/v1/orgs", "{not json", "malformed JSON"),
    ("post", "/v1/orgs", "[1, 2]", "not an object"),
    ("post", "/v1/orgs", {"slug": "ok", "name": "Ok", "color": "red"}, "unknown field"),
    ("post", "/v1/orgs", {"slug": "ok", "name": "Ok", "retentionDays": "forever"}, "wrong type"),
    ("post", "/v1/orgs", {"slug": "ok", "name": "Ok", "retentionDays": 0}, "out of range"),
    ("post", "/v1/orgs", {"slug": "x" * 51, "name": "Long"}, "over-long slug"),
    ("post", "/v1/orgs", {"slug": "Bad Slug!", "name": "Bad"}, "invalid slug"),
    ("post", "/v1/orgs", {"slug": "acme", "name": "Duplicate"}, "duplicate slug"),
    ("post", "/v1/orgs", {"name": "No slug"}, "missing field"),
    ("post", "/v1/acme/members", {"user": "nobody-here", "role": "editor"}, "unknown user"),
    ("post", "/v1/acme/members", {"user": "olivia", "role": "editor"}, "already a member"),
    ("post", "/v1/acme/members", {"user": "olivia", "role": "emperor"}, "bad role"),
    ("post", "/v1/acme/integrations", {**GOOD_INTEGRATION, "slug": "y" * 51}, "over-long slug"),
    ("post", "/v1/acme/integrations", {**GOOD_INTEGRATION, "slug": "dup"}, "duplicate slug"),
    ("post", "/v1/acme/integrations", {**GOOD_INTEGRATION, "config": {"baseUrl": "ftp://x"}}, "bad URL scheme"),
    ("post", "/v1/acme/integrations", {**GOOD_INTEGRATION, "credentialsSecret": "MISSING"}, "unknown secret"),
    ("post", "/v1/acme/integrations", {**GOOD_INTEGRATION, "config": {"baseUrl": "https://x", "headers": {"X-Api-Key": "k"}}}, "credential in headers"),
    ("post", "/v1/acme/integrations", {**GOOD_INTEGRATION, "sideEffects": "maybe"}, "wrong type"),
    ("post", "/v1/acme/integrations", {**GOOD_INTEGRATION, "status": "sleeping"}, "bad status"),
    ("put", "/v1/acme/secrets/TOKEN", {"value": 123}, "wrong type"),
    ("put", "/v1/acme/secrets/TOKEN", {"value": "v", "allowedAgents": "all"}, "wrong type"),
    ("put", "/v1/acme/secrets/TOKEN", {"value": "x" * (64 * 1024 + 1)}, "over-long value"),
    ("put", "/v1/acme/settings", {"retentionDays": -3}, "out of range"),
    ("post", "/v1/acme/api-keys", {"name": "k", "scopes": ["nope:read"]}, "unknown scope"),
]


@pytest.fixture
def setup(org, owner, owner_client):
    from . import factories as f

    f.integration(org, "dup")
    return owner_client


@pytest.mark.parametrize("method,path,body,why", CASES, ids=[f"{c[1]}:{c[3]}" for c in CASES])
def test_bad_input_is_400_and_writes_nothing(setup, method, path, body, why):
    before = _counts()
    call = getattr(setup, method)
    if isinstance(body, str):
        response = call(path, body, content_type="application/json")
    else:
        response = call(path, body, format="json")
    assert response.status_code == 400, (why, response.status_code, response.content[:300])
    error = response.json()["error"]
    assert error["code"] in {"invalid_request", "slug_taken", "unknown_user", "already_member", "unknown_secret", "unknown_scope"}
    assert error["message"] and isinstance(error["details"], dict)
    assert _counts() == before, why


def test_unsupported_content_type_is_json_error(setup):
    response = setup.generic("POST", "/v1/orgs", "slug=x", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415 and response.json()["error"]["code"] == "unsupported_media_type"


def test_validation_errors_name_the_field(setup):
    response = setup.post("/v1/orgs", {"slug": "ok", "name": "Ok", "retentionDays": "forever"}, format="json")
    assert "retentionDays" in response.json()["error"]["details"]["fields"]
    nested = setup.post("/v1/acme/integrations", {**GOOD_INTEGRATION, "config": {"baseUrl": "nope"}}, format="json")
    assert "config.baseUrl" in nested.json()["error"]["details"]["fields"]


def test_no_partial_writes_on_postgres_unique_race(setup):
    """A duplicate caught by the database (not the serializer) leaves no org, membership or audit row."""
    before = _counts()
    response = setup.post("/v1/orgs", {"slug": "acme", "name": "again"}, format="json")
    assert response.status_code == 400 and response.json()["error"]["code"] == "slug_taken"
    assert _counts() == before
    assert connection.is_usable()
