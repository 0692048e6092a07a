"""Members and org settings: roles, the last-owner rule, audit events."""
from __future__ import annotations

from orgs.models import AuditEvent, Membership


def test_owner_manages_members_with_audit(org, owner_client, editor):
    from . import factories as f

    f.UserFactory(username="newbie", email="newbie@example.com")
    response = owner_client.post("/v1/acme/members", {"user": "NEWBIE@example.com", "role": "viewer"}, format="json")
    assert response.status_code == 201 and response.json()["user"] == "newbie"
    member_id = response.json()["id"]
    assert owner_client.patch(f"/v1/acme/members/{member_id}", {"role": "editor"}, format="json").json()["role"] == "editor"
    assert owner_client.delete(f"/v1/acme/members/{member_id}").status_code == 204
    actions = list(AuditEvent.objects.filter(organization=org).values_list("action", flat=True))
    assert {"member.added", "member.role_changed", "member.removed"} <= set(actions)
    events = owner_client.get("/v1/acme/audit-events?action=member").json()["results"]
    assert [e["action"] for e in events] == ["member.removed", "member.role_changed", "member.added"]
    assert all(e["actor"] == "user:olivia" for e in events)


def test_last_owner_cannot_be_removed_or_demoted(org, owner, owner_client):
    mine = Membership.objects.get(user=owner)
    for call in (lambda: owner_client.delete(f"/v1/acme/members/{mine.pk}"),
                 lambda: owner_client.patch(f"/v1/acme/members/{mine.pk}", {"role": "viewer"}, format="json")):
        response = call()
        assert response.status_code == 409 and response.json()["error"]["code"] == "last_owner"
    mine.refresh_from_db()
    assert mine.role == "owner"


def test_second_owner_allows_demotion(org, owner, owner_client, editor):
    other = Membership.objects.get(user=editor)
    owner_client.patch(f"/v1/acme/members/{other.pk}", {"role": "owner"}, format="json")
    mine = Membership.objects.get(user=owner)
    assert owner_client.patch(f"/v1/acme/members/{mine.pk}", {"role": "viewer"}, format="json").status_code == 200


def test_settings(org, owner_client, viewer, api):
    assert api.as_user(viewer).get("/v1/acme/settings").json()["retentionDays"] == 30
    response = owner_client.put("/v1/acme/settings", {"retentionDays": 7}, format="json")
    assert response.status_code == 200 and response.json()["retentionDays"] == 7
    assert api.as_user(viewer).put("/v1/acme/settings", {"retentionDays": 1}, format="json").status_code == 403
    org.refresh_from_db()
    assert org.retention_days == 7


def test_create_org_makes_caller_owner(db, api):
    from . import factories as f

    user = f.UserFactory(username="founder")
    client = api.as_user(user)
    response = client.post("/v1/orgs", {"slug": "newco", "name": "NewCo"}, format="json")
    assert response.status_code == 201 and response.json()["role"] == "owner"
    assert client.get("/v1/newco/members").json()["results"][0]["role"] == "owner"


def test_audit_since_filter(org, owner_client):
    owner_client.put("/v1/acme/secrets/A", {"value": "1"}, format="json")
    assert owner_client.get("/v1/acme/audit-events?since=2999-01-01T00:00:00Z").json()["results"] == []
    assert owner_client.get("/v1/acme/audit-events?since=garbage").status_code == 400
