"""Issue 12 item 7: limits on spec size, model calls and spans per run, and a run's spans served in pages.

A spec over a limit is 400 ``invalid_spec`` naming the limit and its value, and
nothing is written. A run that reaches the model-call or span limit stops there:
it is recorded with status ``error`` and the code naming the limit, with the
spans it made up to the limit and no more. GET /runs/{id} shows at most
FRUXON_RUN_DETAIL_SPANS spans (``spansTruncated``); GET /runs/{id}/spans pages
through all of them, for exactly the callers who may read the run.
"""
from __future__ import annotations

import base64
from urllib.parse import parse_qs, urlparse

import pytest
from django.test import override_settings

from agents import engine
from agents.engine.spec import content_hash
from agents.models import Agent, Revision
from monitoring.models import Run, Span
from orgs.models import AuditEvent

from . import factories as f
from .builders import agent_with_revision, local_spec

LOCAL = {"provider": "fruxon-local", "name": "local", "script": [{"reply": "ok"}]}


def chain_spec(steps: int) -> dict:
    """``steps`` one-call steps, each after the previous one: 2 spans (step + llm) and 1 model call per step."""
    return {"inputs": {"question": {"type": "string", "required": True}},
            "steps": [{"name": f"s{i}", "model": LOCAL,
                       "prompt": "{{input.question}}" if i == 0 else f"{{{{steps.s{i - 1}.output}}}}"}
                      for i in range(steps)]}


def _written() -> dict:
    return {"revisions": Revision.objects.count(), "audit": AuditEvent.objects.count(), "runs": Run.objects.count(),
            "spans": Span.objects.count()}


@pytest.fixture
def support(org):
    agent, _ = agent_with_revision(org, "support")
    return agent


@pytest.fixture
def editor_client(editor, api):
    return api.as_user(editor)


@pytest.fixture
def viewer_client(viewer, api):
    return api.as_user(viewer)


def _invalid_spec(response, *needles: str) -> dict:
    assert response.status_code == 400, response.content[:500]
    error = response.json()["error"]
    assert error["code"] == "invalid_spec"
    text = error["message"] + " " + " ".join(p["message"] for p in error["details"]["problems"])
    for needle in needles:
        assert needle in text, (needle, error)
    return error


# --- spec limits ------------------------------------------------------------------------------------------
def test_item7_too_many_steps_refused(support, editor_client):
    url = "/v1/acme/agents/support/revisions"
    before = _written()

    # The revision: 10,000 steps, refused, naming the limit and its value.
    error = _invalid_spec(editor_client.post(url, {"spec": chain_spec(10_000)}, format="json"),
                          "10000 steps", "limit of 50", "FRUXON_MAX_STEPS")
    assert error["details"]["problems"][0]["path"] == "$.steps"
    _invalid_spec(editor_client.post(url, {"spec": chain_spec(51)}, format="json"), "51 steps", "limit of 50")
    assert _written() == before
    assert editor_client.post(url, {"spec": chain_spec(50)}, format="json").status_code == 201

    # The limits are the operator's settings.
    with override_settings(FRUXON_MAX_STEPS=3):
        before = _written()
        _invalid_spec(editor_client.post(url, {"spec": chain_spec(4)}, format="json"), "limit of 3 steps")
        assert _written() == before
        assert editor_client.post(url, {"spec": chain_spec(3)}, format="json").status_code == 201

    tool = {"name": "t", "integration": "shop"}
    many_tools = chain_spec(1)
    many_tools["steps"][0]["tools"] = [{**tool, "name": f"t{i}"} for i in range(3)]
    many_subagents = chain_spec(1)
    many_subagents["steps"][0]["subAgents"] = [{"agent": f"a{i}"} for i in range(3)]
    big = chain_spec(1)
    big["description"] = "x" * 5000
    with override_settings(FRUXON_MAX_TOOLS_PER_STEP=2, FRUXON_MAX_SUBAGENTS_PER_STEP=2,
                           FRUXON_MAX_SPEC_BYTES=4000):
        before = _written()
        _invalid_spec(editor_client.post(url, {"spec": many_tools}, format="json"),
                      "3 entries", "limit of 2 tools per step", "FRUXON_MAX_TOOLS_PER_STEP")
        _invalid_spec(editor_client.post(url, {"spec": many_subagents}, format="json"),
                      "limit of 2 subAgents per step", "FRUXON_MAX_SUBAGENTS_PER_STEP")
        _invalid_spec(editor_client.post(url, {"spec": big}, format="json"),
                      "over the limit of 4000 bytes", "FRUXON_MAX_SPEC_BYTES")
        assert _written() == before


def test_item7_spec_limits_apply_to_import(org, owner, api, support):
    """Import creates revisions too: the same limits, reported before anything is written."""
    client = api.as_user(owner)
    document = client.get("/v1/acme/export").json()
    before = _written()
    with override_settings(FRUXON_MAX_STEPS=2):
        for agent in document["agents"]:
            agent["revisions"] = [{**revision, "spec": chain_spec(3)} for revision in agent["revisions"]][:1]
        response = client.post("/v1/acme/import", document, format="json")
    assert response.status_code == 400, response.content[:500]
    assert "FRUXON_MAX_STEPS" in response.content.decode()
    assert _written() == before


# --- run limits -------------------------------------------------------------------------------------------
def _execute(client, slug: str, revision_id: str):
    return client.post(f"/v1/acme/agents/{slug}:execute", {"input": {"question": "hi"}, "revisionId": revision_id},
                       format="json")


def _stopped_run(response, code: str) -> Run:
    assert response.status_code == 422, response.content[:500]
    body = response.json()["error"]
    assert body["code"] == code
    run = Run.objects.get(pk=response["X-Fruxon-Run-Id"])
    assert run.status == "error" and run.error["code"] == code
    return run


def test_item7_model_calls_per_run_capped(org, support, editor_client):
    revision = editor_client.post("/v1/acme/agents/support/revisions", {"spec": chain_spec(5)}, format="json").json()
    with override_settings(FRUXON_MAX_MODEL_CALLS_PER_RUN=3):
        run = _stopped_run(_execute(editor_client, "support", revision["id"]), "max_model_calls_per_run")
    assert "limit of 3 model calls" in run.error["message"]
    spans = list(Span.objects.filter(run=run).order_by("position"))
    assert [s.kind for s in spans if s.kind == "llm"] == ["llm"] * 3  # the 4th call was never made
    assert [s.name for s in spans if s.kind == "step"] == ["s0", "s1", "s2", "s3"]
    assert spans[-1].kind == "step" and spans[-1].error["code"] == "max_model_calls_per_run"
    # At the limit, the run is fine.
    with override_settings(FRUXON_MAX_MODEL_CALLS_PER_RUN=5):
        assert _execute(editor_client, "support", revision["id"]).status_code == 200


def test_item7_model_calls_capped_across_subagents(org, support, editor_client):
    """Sub-runs share the run's count: a sub-agent cannot multiply the limit."""
    agent_with_revision(org, "helper", chain_spec(3))
    router = chain_spec(1)
    router["steps"][0]["subAgents"] = [{"agent": "helper"}]
    router["steps"][0]["model"] = {**LOCAL, "script": [
        {"toolCalls": [{"name": "agent__helper", "arguments": {"input": {"question": "q"}}}]}, {"reply": "done"}]}
    revision = editor_client.post("/v1/acme/agents/support/revisions", {"spec": router}, format="json").json()
    with override_settings(FRUXON_MAX_MODEL_CALLS_PER_RUN=3):  # router 1 + helper 3 + router 1 = 5 needed
        run = _stopped_run(_execute(editor_client, "support", revision["id"]), "max_model_calls_per_run")
    assert Span.objects.filter(run=run, kind="llm").count() == 3
    with override_settings(FRUXON_MAX_MODEL_CALLS_PER_RUN=5):
        assert _execute(editor_client, "support", revision["id"]).status_code == 200


def test_item7_spans_per_run_capped(org, support, editor_client):
    revision = editor_client.post("/v1/acme/agents/support/revisions", {"spec": chain_spec(5)}, format="json").json()
    with override_settings(FRUXON_MAX_SPANS_PER_RUN=7):  # 10 needed
        run = _stopped_run(_execute(editor_client, "support", revision["id"]), "max_spans_per_run")
    assert "limit of 7 spans" in run.error["message"]
    assert Span.objects.filter(run=run).count() == 7
    with override_settings(FRUXON_MAX_SPANS_PER_RUN=10):
        assert _execute(editor_client, "support", revision["id"]).status_code == 200


def test_item7_oversized_stored_revision_stops_at_the_default_limits(org, support, editor_client):
    """The issue's 10,000-step revision, stored before the limits existed, still runs, but only up to the
    default limits: 200 model calls (about 400 spans), not 20,000 spans."""
    spec = chain_spec(10_000)
    legacy = Revision.objects.create(organization=org, agent=support, spec=spec, content_hash=content_hash(spec))
    run = _stopped_run(_execute(editor_client, "support", legacy.id), "max_model_calls_per_run")
    assert Span.objects.filter(run=run, kind="llm").count() == 200
    assert Span.objects.filter(run=run).count() == 401  # 200 complete steps, and the one refused its call


def test_item7_engine_takes_limits_from_the_runtime():
    """The engine imports nothing of Django: the host hands it the limits (here: none, so the defaults)."""
    from agents.engine.limits import DEFAULT_LIMITS, Limits
    from agents.engine.testing import StaticRuntime

    spec = chain_spec(3)
    runtime = StaticRuntime()
    result = engine.run(spec, {"question": "q"}, context=engine.RunContext(agent="a"), runtime=runtime)
    assert result.status == "ok" and DEFAULT_LIMITS.max_spans == 2000 and DEFAULT_LIMITS.max_model_calls == 200
    runtime.limits = Limits(max_spans=3)
    result = engine.run(spec, {"question": "q"}, context=engine.RunContext(agent="a"), runtime=runtime)
    assert (result.status, result.error["code"], len(result.spans)) == ("error", "max_spans_per_run", 3)


# --- serving a run's spans ----------------------------------------------------------------------------
def _tree_ids(nodes) -> list[str]:
    out, stack = [], list(reversed(nodes))
    while stack:
        node = stack.pop()
        out.append(node["id"])
        stack.extend(reversed(node["children"]))
    return out


def test_item7_run_detail_truncated_and_spans_paginated(org, support, editor_client, viewer_client):
    revision = editor_client.post("/v1/acme/agents/support/revisions", {"spec": chain_spec(6)}, format="json").json()
    run_id = _execute(editor_client, "support", revision["id"]).json()["runId"]
    stored = list(Span.objects.filter(run_id=run_id).order_by("position").values_list("id", "parent_id"))
    assert len(stored) == 12

    with override_settings(FRUXON_RUN_DETAIL_SPANS=5):
        detail = viewer_client.get(f"/v1/acme/runs/{run_id}")
    assert detail.status_code == 200
    body = detail.json()
    assert body["spansTruncated"] is True
    shown = _tree_ids(body["spans"])
    assert sorted(shown) == sorted(i for i, _ in stored[:5])  # the first five in start order...
    assert all(parent in shown for i, parent in stored[:5] if parent)  # ...with every parent shown

    with override_settings(FRUXON_RUN_DETAIL_SPANS=12):
        body = viewer_client.get(f"/v1/acme/runs/{run_id}").json()
    assert body["spansTruncated"] is False and len(_tree_ids(body["spans"])) == 12

    # Every span, in pages (viewer role), in start order, each once.
    seen, url, pages = [], f"/v1/acme/runs/{run_id}/spans?limit=5", 0
    while url:
        page = viewer_client.get(url)
        assert page.status_code == 200, page.content[:300]
        data = page.json()
        seen += [(item["id"], item["parentId"] or None) for item in data["results"]]
        assert all("children" not in item and {"kind", "usage", "status"} <= set(item) for item in data["results"])
        url, pages = data["next"], pages + 1
    assert pages == 3
    assert seen == [(i, p or None) for i, p in stored]
    # Its cursor is checked like every list's.
    next_url = viewer_client.get(f"/v1/acme/runs/{run_id}/spans?limit=5").json()["next"]
    cursor = parse_qs(urlparse(next_url).query)["cursor"][0]
    assert viewer_client.get(f"/v1/acme/runs/{run_id}/spans?cursor={cursor}").status_code == 200
    edited = base64.b64encode(b"o=0&p=abc").decode()
    response = viewer_client.get(f"/v1/acme/runs/{run_id}/spans?cursor={edited}")
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_request"
    # Unknown run: 404.
    assert viewer_client.get("/v1/acme/runs/run_nope/spans").status_code == 404


def test_item7_spans_route_respects_key_agent_list(org, support, editor_client, api):
    other, _ = agent_with_revision(org, "leaky")
    runs = {}
    for slug in ("support", "leaky"):
        runs[slug] = editor_client.post(f"/v1/acme/agents/{slug}:execute", {"input": {"question": "q"}},
                                        format="json").json()["runId"]
    _, limited = f.api_key(org, scopes=["runs:read"], agents=["support"])
    _, unscoped = f.api_key(org, scopes=["agents:read"])
    key = api.as_key(limited)
    assert key.get(f"/v1/acme/runs/{runs['support']}/spans").status_code == 200
    for path in (f"/v1/acme/runs/{runs['leaky']}/spans", f"/v1/acme/runs/{runs['leaky']}"):
        response = key.get(path)
        assert response.status_code == 404, (path, response.content[:200])
        assert response.json()["error"]["code"] == "not_found"
    response = api.as_key(unscoped).get(f"/v1/acme/runs/{runs['support']}/spans")
    assert response.status_code == 403 and response.json()["error"]["details"]["requiredScope"] == "runs:read"

    # Another org's member sees nothing of it.
    stranger_org = f.OrganizationFactory(slug="other")
    stranger = f.member(stranger_org, "owner", "stranger")
    response = api.as_user(stranger).get(f"/v1/acme/runs/{runs['support']}/spans")
    assert response.status_code == 404
    response = api.as_user(stranger).get(f"/v1/other/runs/{runs['support']}/spans")
    assert response.status_code == 404
    assert Agent.objects.filter(organization=org).count() == 2
