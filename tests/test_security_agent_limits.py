"""Issue 12, item 6: per-agent limits (grants, a key's agent list) hold through sub-agents,
export, import and audit events.

The world: org ``acme`` with agents ``support`` and ``leaky``. Eddie is an org editor with
only a viewer grant on ``leaky``; keys are limited to ``support``.
"""
from __future__ import annotations

import copy

import pytest

from agents import grants
from agents.models import Agent, Revision
from agents.services import create_revision
from deployments import services as deployments
from fruxon.errors import Forbidden
from monitoring.models import Budget, Span
from orgs.actor import Actor
from orgs.models import AuditEvent

from . import factories as f
from .builders import SYSTEM, agent_with_revision, local_spec
from .conftest import Api

LEAKY_SPEC = {"inputs": {"text": {"type": "string", "required": True}},
              "steps": [{"name": "leak", "prompt": "{{input.text}}",
                         "model": {"provider": "fruxon-local", "name": "local",
                                   "script": [{"reply": "leaky says {{input.text}}"}]}}]}


def router_spec(sub: str = "leaky") -> dict:
    script = [{"toolCalls": [{"name": f"agent__{sub}", "arguments": {"input": {"text": "hello"}}}]},
              {"reply": "Router: done"}]
    return {"inputs": {"question": {"type": "string", "required": False}},
            "steps": [{"name": "route", "prompt": "route this", "subAgents": [{"agent": sub}],
                       "model": {"provider": "fruxon-local", "name": "local", "script": script}}]}


@pytest.fixture
def world(org):
    support, _ = agent_with_revision(org, "support")
    leaky, _ = agent_with_revision(org, "leaky", LEAKY_SPEC)
    eddie = f.member(org, "editor", "eddie")
    grants.set_grant(actor=SYSTEM, agent=leaky, username="eddie", role="viewer")
    owner = f.member(org, "owner", "olivia")
    return {"org": org, "support": support, "leaky": leaky, "eddie": eddie, "owner": owner}


def post_revision(client, agent: str, spec: dict):
    return client.post(f"/v1/acme/agents/{agent}/revisions", {"spec": spec, "message": "router"}, format="json")


def assert_refused_naming(response, sub: str):
    assert response.status_code == 403, response.content[:400]
    error = response.json()["error"]
    assert error["code"] == "forbidden" and error["details"]["subAgent"] == sub and f"'{sub}'" in error["message"]


def revision_rows():
    return Revision.objects.count(), AuditEvent.objects.filter(action="revision.created").count()


# --- sub-agents need the right to execute them --------------------------------------------------
def test_item6_subagent_needs_execute_right_person(world, org):
    eddie = Api.as_user(world["eddie"])
    before = revision_rows()
    # an editor of support, only a viewer on leaky: may not make support call leaky
    assert_refused_naming(post_revision(eddie, "support", router_spec("leaky")), "leaky")
    # an agent that does not exist yet counts at the org role: a viewer of the org may not name it
    vera = f.member(org, "viewer", "vera")
    grants.set_grant(actor=SYSTEM, agent=world["support"], username="vera", role="editor")
    assert_refused_naming(post_revision(Api.as_user(vera), "support", router_spec("future")), "future")
    # the admin goes through the same service: refused there too, nothing written
    with pytest.raises(Forbidden):
        create_revision(actor=Actor(user=world["eddie"]), agent=world["support"], spec=router_spec("leaky"))
    assert revision_rows() == before

    # with the right to execute leaky (an editor grant), the same revision is written
    grants.set_grant(actor=SYSTEM, agent=world["leaky"], username="eddie", role="editor")
    response = post_revision(eddie, "support", router_spec("leaky"))
    assert response.status_code == 201, response.content[:400]
    # an org editor without a grant on an agent executes it at the org role
    response = post_revision(Api.as_user(f.member(org, "editor", "erin")), "support", router_spec("leaky"))
    assert response.status_code == 201, response.content[:400]


def test_item6_subagent_needs_execute_right_key(world, org):
    before = revision_rows()
    _, limited = f.api_key(org, scopes=["revisions:write", "agents:execute"], agents=["support"])
    assert_refused_naming(post_revision(Api.as_key(limited), "support", router_spec("leaky")), "leaky")
    # a pinned revision of the sub-agent is the same call
    pinned = router_spec("leaky")
    pinned["steps"][0]["subAgents"][0]["revisionId"] = world["leaky"].deployed_revision_id
    assert_refused_naming(post_revision(Api.as_key(limited), "support", pinned), "leaky")
    # an unlimited key that may not execute anything may not wire an agent in either
    _, no_execute = f.api_key(org, scopes=["revisions:write"])
    response = post_revision(Api.as_key(no_execute), "support", router_spec("leaky"))
    assert_refused_naming(response, "leaky")
    assert response.json()["error"]["details"]["requiredScope"] == "agents:execute"
    assert revision_rows() == before

    _, both = f.api_key(org, scopes=["revisions:write", "agents:execute"], agents=["support", "leaky"])
    assert post_revision(Api.as_key(both), "support", router_spec("leaky")).status_code == 201
    _, unlimited = f.api_key(org, scopes=["revisions:write", "agents:execute"])
    assert post_revision(Api.as_key(unlimited), "support", router_spec("leaky")).status_code == 201
    # a spec without sub-agents needs no execute right
    assert post_revision(Api.as_key(no_execute), "support", local_spec("plain")).status_code == 201


def test_item6_router_keeps_working_for_callers(world, org):
    # built and deployed by someone who may call leaky (the owner) ...
    owner = Api.as_user(world["owner"])
    response = post_revision(owner, "support", router_spec("leaky"))
    assert response.status_code == 201, response.content[:400]
    deployments.deploy(actor=SYSTEM, agent=world["support"], revision_id=response.json()["id"], reason="router")
    # ... it runs for any caller of the router: a key limited to the router, an editor who only views leaky
    _, runner = f.api_key(org, scopes=["agents:execute"], agents=["support"])
    for client in (Api.as_key(runner), Api.as_user(world["eddie"])):
        answer = client.post("/v1/acme/agents/support:execute", {"input": {}}, format="json")
        assert answer.status_code == 200, answer.content[:400]
        assert answer.json()["output"] == "Router: done"
        sub = Span.objects.get(run_id=answer.json()["runId"], kind="subAgent")
        assert sub.name == "leaky" and sub.output == "leaky says hello"
    # the caller still cannot run leaky directly
    direct = Api.as_key(runner).post("/v1/acme/agents/leaky:execute", {"input": {"text": "x"}}, format="json")
    assert direct.status_code == 403


# --- export ----------------------------------------------------------------------------------------
def test_item6_export_respects_key_agents(world, org):
    create_revision(actor=SYSTEM, agent=world["leaky"], spec=copy.deepcopy(LEAKY_SPEC) | {"output": "x"},
                    message="leaky history")
    _, readonly = f.api_key(org, preset="readonly", agents=["support", "gone"])
    client = Api.as_key(readonly)
    document = client.get("/v1/acme/export?history=true")
    assert document.status_code == 200, document.content[:400]
    body = document.json()
    assert [a["slug"] for a in body["agents"]] == ["support"]
    assert "leaky" not in document.content.decode()
    # naming another agent is refused, whether alone or with one of the key's
    for query in ("?agents=leaky", "?agents=support,leaky", "?agents=leaky&history=true"):
        response = client.get(f"/v1/acme/export{query}")
        assert response.status_code == 403, (query, response.content[:300])
        assert response.json()["error"]["code"] == "forbidden"
        assert response.json()["error"]["details"]["agents"] == ["leaky"]
        assert "leaky says" not in response.content.decode()
    assert [a["slug"] for a in client.get("/v1/acme/export?agents=support").json()["agents"]] == ["support"]
    # unlimited keys and owners still export everything
    _, full = f.api_key(org, preset="readonly")
    assert [a["slug"] for a in Api.as_key(full).get("/v1/acme/export").json()["agents"]] == ["leaky", "support"]
    assert [a["slug"] for a in Api.as_user(world["owner"]).get("/v1/acme/export").json()["agents"]] == [
        "leaky", "support"]


# --- import ----------------------------------------------------------------------------------------
def test_item6_import_respects_key_agents(world, org):
    owner = Api.as_user(world["owner"])
    document = owner.get("/v1/acme/export?history=true").json()
    changed = copy.deepcopy(document)
    for agent in changed["agents"]:
        agent["description"] = "changed through import"
        agent["budget"] = {"period": "month", "amountUsd": "1.0000", "enforce": True, "alertThresholds": [],
                           "alertEmails": []}
    only_leaky = {**changed, "agents": [a for a in changed["agents"] if a["slug"] == "leaky"]}
    only_support = {**changed, "agents": [a for a in changed["agents"] if a["slug"] == "support"]}

    def state():
        return (list(Agent.objects.order_by("slug").values_list("slug", "description")), Revision.objects.count(),
                Budget.objects.count(), AuditEvent.objects.count())

    _, limited = f.api_key(org, scopes=["org:write", "agents:execute"], agents=["support"])
    before = state()
    client = Api.as_key(limited)
    for body, query in ((only_leaky, ""), (changed, ""), (only_leaky, "?dryRun=true"),
                        ({"document": changed, "dryRun": True}, "")):
        response = client.post(f"/v1/acme/import{query}", body, format="json")
        assert response.status_code == 403, (query, response.content[:400])
        assert response.json()["error"]["code"] == "forbidden"
        assert response.json()["error"]["details"]["agents"] == ["leaky"]
    # a new agent outside the list is refused too
    new_agent = {**only_leaky, "agents": [{**only_leaky["agents"][0], "slug": "brand-new"}]}
    assert client.post("/v1/acme/import", new_agent, format="json").status_code == 403
    assert state() == before

    # a revision for the key's own agent that calls leaky: refused at dry run and at apply
    router_doc = copy.deepcopy(only_support)
    router_doc["agents"][0]["revisions"].append({"id": "rev_srcrouter", "spec": router_spec("leaky"),
                                                 "message": "router", "parentId": None,
                                                 "createdAt": "2026-12-01T00:00:00Z",
                                                 "contentHash": _hash(router_spec("leaky"))})
    for query in ("?dryRun=true", ""):
        response = client.post(f"/v1/acme/import{query}", router_doc, format="json")
        assert response.status_code == 403, (query, response.content[:400])
        assert response.json()["error"]["details"]["subAgent"] == "leaky"
    assert state() == before

    # within the list, the import goes through
    response = client.post("/v1/acme/import", only_support, format="json")
    assert response.status_code == 200, response.content[:400]
    assert Agent.objects.get(slug="support").description == "changed through import"
    assert Agent.objects.get(slug="leaky").description != "changed through import"


def _hash(spec: dict) -> str:
    from agents import engine

    return engine.content_hash(spec)


# --- audit events ----------------------------------------------------------------------------------
def test_item6_audit_events_respect_key_agents(world, org):
    owner = Api.as_user(world["owner"])
    assert owner.patch("/v1/acme/agents/leaky", {"description": "secret plans"}, format="json").status_code == 200
    assert owner.patch("/v1/acme/agents/support", {"description": "public"}, format="json").status_code == 200
    owner.put("/v1/acme/secrets/LEAKY_KEY", {"value": "v", "allowedAgents": ["leaky"]}, format="json")
    leaky_rev = create_revision(actor=SYSTEM, agent=world["leaky"], spec=LEAKY_SPEC | {"output": "y"})
    support_rev = create_revision(actor=SYSTEM, agent=world["support"], spec=local_spec("v2"))

    _, readonly = f.api_key(org, preset="readonly", agents=["support"])
    client = Api.as_key(readonly)
    events = client.get("/v1/acme/audit-events?limit=200")
    assert events.status_code == 200, events.content[:300]
    rows = events.json()["results"]
    text = events.content.decode()
    assert rows, "the key sees the events about its own agent"
    assert "leaky" not in text and "LEAKY_KEY" not in text and leaky_rev.id not in text
    assert {"agent.updated", "agent.created", "revision.created"} <= {r["action"] for r in rows}
    assert support_rev.id in text
    # org-level events (members, grants on other agents, secrets, keys) are hidden from it
    assert not {r["action"] for r in rows} & {"member.added", "secret.created", "api_key.created"}
    for query in ("?action=secret", "?action=agent.updated"):
        for row in client.get(f"/v1/acme/audit-events{query}").json()["results"]:
            assert "leaky" not in str(row)

    # an unlimited key and the owner see them all
    _, full = f.api_key(org, preset="readonly")
    for everyone in (Api.as_key(full), owner):
        all_text = everyone.get("/v1/acme/audit-events?limit=200").content.decode()
        assert "leaky" in all_text and "LEAKY_KEY" in all_text
