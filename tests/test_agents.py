"""Agents and revisions over HTTP: CRUD, immutability, invalid specs, diff, grants, delete rules."""
from __future__ import annotations

import json

import pytest
from django.db import IntegrityError, transaction

from agents import grants
from agents.models import Agent, ImmutableRevision, Revision, RevisionReference
from agents.engine import content_hash
from orgs.models import AuditEvent

from . import factories as f
from .builders import SYSTEM, agent_with_revision, local_spec


@pytest.fixture
def editor_client(editor, api):
    return api.as_user(editor)


def test_create_agent_and_revisions(org, editor_client):
    response = editor_client.post("/v1/acme/agents", {"slug": "support", "name": "Support"}, format="json")
    assert response.status_code == 201
    assert response.json() | {} == response.json() and response.json()["deployedRevisionId"] is None
    spec = local_spec()
    first = editor_client.post("/v1/acme/agents/support/revisions", {"spec": spec, "message": "v1"}, format="json")
    assert first.status_code == 201, first.content
    body = first.json()
    assert body["id"].startswith("rev_") and body["contentHash"] == content_hash(spec)
    assert body["parentId"] is None and body["createdBy"] == "user:eddie" and body["spec"] == spec
    second = editor_client.post("/v1/acme/agents/support/revisions", {"spec": local_spec("v2")}, format="json").json()
    assert second["parentId"] == body["id"]
    listing = editor_client.get("/v1/acme/agents/support/revisions").json()["results"]
    assert [r["id"] for r in listing] == [second["id"], body["id"]]
    assert AuditEvent.objects.filter(action="revision.created").count() == 2


def test_invalid_spec_names_each_json_path_and_writes_nothing(org, editor_client):
    agent_with_revision(org, "support", deploy=False)
    before = Revision.objects.count()
    bad = {"steps": [{"name": "answer", "model": {"provider": "nope"}, "prompt": "{{input.missing}}"}], "extra": 1}
    response = editor_client.post("/v1/acme/agents/support/revisions", {"spec": bad}, format="json")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_spec"
    paths = {p["path"] for p in error["details"]["problems"]}
    assert "$.steps[0].model.provider" in paths and "$.extra" in paths
    assert any("input.missing" in p["message"] or p["path"].startswith("$.steps[0].prompt") for p in error["details"]["problems"])
    assert Revision.objects.count() == before and RevisionReference.objects.count() == 0


def test_revisions_are_immutable(org, editor_client):
    _, revision = agent_with_revision(org, "support")
    for method in ("put", "patch", "delete"):
        response = getattr(editor_client, method)(f"/v1/acme/agents/support/revisions/{revision.id}", {"spec": {}}, format="json")
        assert response.status_code == 405 and response.json()["error"]["code"] == "method_not_allowed"
    revision.message = "rewritten"
    with pytest.raises(ImmutableRevision):
        revision.save()
    with pytest.raises(ImmutableRevision):
        revision.delete()
    assert Revision.objects.get(pk=revision.pk).message == "first"
    # the database refuses too: QuerySet.update() and raw SQL never reach Revision.save()
    for change in ({"spec": {"steps": []}}, {"content_hash": "0" * 64}, {"message": "rewritten"}):
        with pytest.raises(IntegrityError), transaction.atomic():
            Revision.objects.filter(pk=revision.pk).update(**change)
    stored = Revision.objects.get(pk=revision.pk)
    assert stored.spec == revision.spec and stored.content_hash == revision.content_hash
    Revision.objects.filter(pk=revision.pk).update(parent=None)  # SET_NULL while deleting an agent still works


def test_delete_refused_while_deployed_or_referenced(org, editor_client):
    agent_with_revision(org, "helper", deploy=False)
    spec = local_spec()
    spec["steps"][0]["subAgents"] = [{"agent": "helper"}]
    agent_with_revision(org, "router", spec=spec, deploy=True)
    response = editor_client.delete("/v1/acme/agents/router")
    assert response.status_code == 409 and "deployed" in response.json()["error"]["message"]
    response = editor_client.delete("/v1/acme/agents/helper")
    assert response.status_code == 409 and response.json()["error"]["details"]["referencedBy"] == ["router"]
    Agent.objects.filter(slug="router").update(deployed_revision=None)
    assert editor_client.delete("/v1/acme/agents/router").status_code == 204
    assert editor_client.delete("/v1/acme/agents/helper").status_code == 204
    assert not Agent.objects.exists() and not Revision.objects.exists()


def test_duplicate_and_bad_agent_slugs(org, editor_client):
    agent_with_revision(org, "support", deploy=False)
    for body in ({"slug": "support"}, {"slug": "Bad Slug"}, {"slug": "x" * 51}, {"slug": "ok", "nope": 1}):
        response = editor_client.post("/v1/acme/agents", body, format="json")
        assert response.status_code == 400, body
    assert Agent.objects.count() == 1


def test_diff_structured_and_unified(org, editor_client):
    agent, v1 = agent_with_revision(org, "support")
    spec = local_spec("better", prompt="Answer politely: {{input.question}}")
    spec["steps"].append({"name": "polish", "model": {"provider": "openai", "name": "gpt-4o-mini",
                                                      "apiKey": "{{secret.KEY}}"},
                          "prompt": "{{steps.answer.output}}",
                          "tools": [{"name": "lookup", "integration": "shop", "parameters": {"type": "object"}}]})
    spec["steps"][0]["model"]["temperature"] = 0.3
    v2 = editor_client.post("/v1/acme/agents/support/revisions", {"spec": spec}, format="json").json()
    body = editor_client.get(f"/v1/acme/agents/support/revisions/{v2['id']}:diff?against=deployed").json()
    assert body["againstRevisionId"] == v1.id
    summary = body["summary"]
    assert summary["steps"]["added"] == ["polish"] and summary["steps"]["changed"] == ["answer"]
    assert summary["tools"]["added"] == ["polish.lookup"] and summary["secrets"]["added"] == ["KEY"]
    assert summary["integrations"]["added"] == ["shop"] and summary["modelsChanged"][0]["step"] == "answer"
    assert summary["tools"]["changed"] == [] and summary["subAgents"]["changed"] == []
    # a tool whose description or parameters change is listed as changed, not added or removed
    spec3 = json.loads(json.dumps(spec))
    spec3["steps"][1]["tools"][0]["description"] = "look an order up"
    v3 = editor_client.post("/v1/acme/agents/support/revisions", {"spec": spec3}, format="json").json()
    tools = editor_client.get(f"/v1/acme/agents/support/revisions/{v3['id']}:diff?against={v2['id']}").json()
    assert tools["summary"]["tools"] == {"added": [], "removed": [], "changed": ["polish.lookup"]}
    paths = {c["path"]: c for c in body["changes"]}
    assert paths["steps.answer.model.temperature"] == {"path": "steps.answer.model.temperature", "change": "added",
                                                       "before": None, "after": 0.3}
    assert paths["steps.answer.prompt"]["before"] == "{{input.question}}"
    assert "-{{input.question}}" in body["promptDiff"] and "+Answer politely" in body["promptDiff"]
    explicit = editor_client.get(f"/v1/acme/agents/support/revisions/{v2['id']}:diff?against={v1.id}").json()
    assert explicit["changes"] == body["changes"]
    other_org = f.OrganizationFactory(slug="other")
    _, foreign = agent_with_revision(other_org, "support")
    response = editor_client.get(f"/v1/acme/agents/support/revisions/{v2['id']}:diff?against={foreign.id}")
    assert response.status_code == 404


def test_grants_raise_and_lower_roles(org, owner_client, editor, viewer, api):
    agent, _ = agent_with_revision(org, "support")
    agent_with_revision(org, "billing")
    spec = {"spec": local_spec("x")}
    # a viewer with an editor grant can cut revisions on that agent only
    assert owner_client.put("/v1/acme/agents/support/grants/vera", {"role": "editor"}, format="json").status_code == 201
    vera = api.as_user(viewer)
    assert vera.post("/v1/acme/agents/support/revisions", spec, format="json").status_code == 201
    assert vera.post("/v1/acme/agents/billing/revisions", spec, format="json").status_code == 403
    # an editor lowered to viewer on one agent loses write there
    owner_client.put("/v1/acme/agents/support/grants/eddie", {"role": "viewer"}, format="json")
    eddie = api.as_user(editor)
    assert eddie.post("/v1/acme/agents/support/revisions", spec, format="json").status_code == 403
    assert eddie.get("/v1/acme/agents/support/revisions").status_code == 200
    assert eddie.post("/v1/acme/agents/billing/revisions", spec, format="json").status_code == 201
    # an agent admin manages that agent's grants, not others'
    owner_client.put("/v1/acme/agents/support/grants/vera", {"role": "admin"}, format="json")
    assert vera.get("/v1/acme/agents/support/grants").json()["results"] == [
        {"user": "eddie", "role": "viewer"}, {"user": "vera", "role": "admin"}]
    assert vera.delete("/v1/acme/agents/support/grants/eddie").status_code == 204
    assert vera.get("/v1/acme/agents/billing/grants").status_code == 403
    assert grants.grant_role(user=editor, agent=agent) is None
    # grants only for members
    outsider = f.UserFactory(username="outsider")
    response = owner_client.put("/v1/acme/agents/support/grants/outsider", {"role": "viewer"}, format="json")
    assert response.status_code == 400 and response.json()["error"]["code"] == "not_a_member"
    assert grants.grant_role(user=outsider, agent=agent) is None
    assert AuditEvent.objects.filter(action__startswith="grant.").count() == 4


def test_key_limited_to_agents(org, api):
    agent_with_revision(org, "support")
    agent_with_revision(org, "billing")
    _, plaintext = f.api_key(org, preset="admin", agents=["support"])
    client = api.as_key(plaintext)
    assert [a["slug"] for a in client.get("/v1/acme/agents").json()["results"]] == ["support"]
    assert client.post("/v1/acme/agents/support:execute", {"input": {"question": "q"}}, format="json").status_code == 200
    response = client.post("/v1/acme/agents/billing:execute", {"input": {"question": "q"}}, format="json")
    assert response.status_code == 403 and response.json()["error"]["code"] == "forbidden"


def test_price_overrides(org, owner_client, viewer, api):
    agent, _ = agent_with_revision(org, "support")
    org_price = {"provider": "fruxon-local", "model": "*", "inputPerMillion": "10", "outputPerMillion": "20"}
    response = owner_client.put("/v1/acme/prices", {"prices": [org_price]}, format="json")
    assert response.status_code == 200
    rows = {(p["provider"], p["model"]): p for p in response.json()["prices"]}
    assert rows[("fruxon-local", "*")]["source"] == "org" and rows[("openai", "gpt-4o")]["source"] == "builtin"
    agent_price = {**org_price, "inputPerMillion": "100", "outputPerMillion": "200"}
    owner_client.put("/v1/acme/agents/support/prices", {"prices": [agent_price]}, format="json")
    table = api.as_user(viewer).get("/v1/acme/agents/support/prices").json()["prices"]
    local = next(p for p in table if p["provider"] == "fruxon-local")
    assert local["source"] == "agent" and local["inputPerMillion"] == "100"
    run = api.as_user(viewer)  # viewers read but cannot run or write
    assert run.put("/v1/acme/prices", {"prices": []}, format="json").status_code == 403
    from .builders import run_once
    executed = run_once(agent, "q")
    expected = (executed.input_tokens * 100 + executed.output_tokens * 200) / 1_000_000
    assert float(executed.cost_usd) == pytest.approx(expected)
    dup = owner_client.put("/v1/acme/prices", {"prices": [org_price, org_price]}, format="json")
    assert dup.status_code == 400


def test_diff_against_deployed_with_nothing_deployed_is_409(org, editor_client):
    _, v1 = agent_with_revision(org, "support", deploy=False)
    response = editor_client.get(f"/v1/acme/agents/support/revisions/{v1.id}:diff?against=deployed")
    assert response.status_code == 409 and response.json()["error"]["code"] == "not_deployed"
    assert editor_client.get(f"/v1/acme/agents/support/revisions/{v1.id}:diff?against={v1.id}").json()["changes"] == []
