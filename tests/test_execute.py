"""The execute API: pinning, recording, secrets, provider failures, conversations, query count."""
from __future__ import annotations

import json

import pytest
from django.db import connection

from agents.engine.testing import start_openai_stub
from agents.models import Agent
from monitoring.models import Conversation, Run, Span

from . import factories as f
from .builders import agent_with_revision, local_spec, send_secrets

SECRET = "sk-never-show-me-9731"


@pytest.fixture
def runner(org, api):
    _, plaintext = f.api_key(org, preset="runner")
    return api.as_key(plaintext)


def _execute(client, agent="support", tenant="acme", **body):
    body.setdefault("input", {"question": "where is my order?"})
    return client.post(f"/v1/{tenant}/agents/{agent}:execute", body, format="json")


def test_execute_deployed_revision(org, runner):
    agent, revision = agent_with_revision(org, "support", local_spec("hello {{input.question}}"))
    response = _execute(runner)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["output"] == "hello where is my order?" and body["revisionId"] == revision.id
    assert body["source"] == "api" and body["conversationId"] is None
    assert set(body["usage"]) >= {"inputTokens", "outputTokens", "costUsd"} and body["usage"]["inputTokens"] > 0
    assert float(response["X-Fruxon-Overhead-Ms"]) >= 0 and response["X-Fruxon-Run-Id"] == body["runId"]
    run = Run.objects.get(pk=body["runId"])
    assert run.status == "ok" and run.source == "api" and run.revision_id == revision.id
    assert run.spans.filter(kind="llm").count() == 1 and run.cost_usd > 0


def test_pinning_is_a_canary_and_stays_inside_agent_and_org(org, runner, api):
    agent, v1 = agent_with_revision(org, "support", local_spec("v1"))
    from agents.services import create_revision

    from .builders import SYSTEM

    v2 = create_revision(actor=SYSTEM, agent=agent, spec=local_spec("v2"))
    pinned = _execute(runner, revisionId=v2.id).json()
    assert pinned["output"] == "v2" and pinned["source"] == "canary"
    assert Run.objects.get(pk=pinned["runId"]).source == "canary"
    assert _execute(runner, revisionId=v1.id).json()["source"] == "api"
    _, other_agent_rev = agent_with_revision(org, "billing", local_spec("billing"))
    other_org = f.OrganizationFactory(slug="other")
    _, other_org_rev = agent_with_revision(other_org, "support", local_spec("foreign"))
    runs_before = Run.objects.count()
    for rev in (other_agent_rev.id, other_org_rev.id, "rev_doesnotexist"):
        response = _execute(runner, revisionId=rev)
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found", rev
    assert Run.objects.count() == runs_before


def test_not_deployed_is_409(org, runner):
    agent_with_revision(org, "support", deploy=False)
    response = _execute(runner)
    assert response.status_code == 409 and response.json()["error"]["code"] == "not_deployed"
    assert "X-Fruxon-Overhead-Ms" in response


def test_bad_input_names_it_and_records_nothing(org, runner):
    spec = local_spec()
    spec["inputs"]["count"] = {"type": "integer"}
    agent_with_revision(org, "support", spec)
    for bad, path in (({}, "input.question"), ({"question": 3}, "input.question"),
                      ({"question": "q", "count": "7"}, "input.count"), ({"question": "q", "extra": 1}, "input.extra")):
        response = _execute(runner, input=bad)
        assert response.status_code == 400, bad
        assert path in response.json()["error"]["details"]["fields"], response.json()
    assert _execute(runner, input={"question": "q"}, colour="red").status_code == 400
    assert Run.objects.count() == 0


def test_secrets_never_recorded_or_returned(org, owner, runner):
    base_url, stub = start_openai_stub(script=[{"content": "The answer"}])
    try:
        f.secret(org, "OPENAI_KEY", SECRET, allowed_agents=["support"], allowed_hosts=["127.0.0.1"])
        spec = {
            "inputs": {"question": {"type": "string", "required": True}},
            "steps": [{"name": "answer", "model": {"provider": "openai", "name": "gpt-4o-mini", "baseUrl": base_url,
                                                   "apiKey": "{{secret.OPENAI_KEY}}",
                                                   "headers": {"X-Org-Token": "org {{secret.OPENAI_KEY}}"}},
                       "systemPrompt": "Be brief.", "prompt": "{{input.question}}"}],
            "output": "{{steps.answer.output}}",
        }
        agent_with_revision(org, "support", spec)
        response = _execute(runner)
        assert response.status_code == 200, response.content
        assert stub.requests[0].headers["Authorization"] == f"Bearer {SECRET}"  # it was really used
        assert stub.requests[0].headers["X-Org-Token"] == f"org {SECRET}"  # resolved at call time in a header too
        assert SECRET not in json.dumps(stub.requests[0].body)  # never in what the model reads
    finally:
        stub.close()
    assert SECRET.encode() not in response.content
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM monitoring_run")
        runs = repr(cursor.fetchall())
        cursor.execute("SELECT * FROM monitoring_span")
        spans = repr(cursor.fetchall())
    assert SECRET not in runs and SECRET not in spans
    assert "{{secret.OPENAI_KEY}}" in spans  # traces keep the template
    from .conftest import Api

    detail = Api.as_user(owner).get(f"/v1/acme/runs/{response.json()['runId']}")
    assert detail.status_code == 200 and SECRET.encode() not in detail.content


def test_secret_refused_to_agent_outside_allowed_agents(org, runner):
    f.secret(org, "ONLY_BILLING", SECRET, allowed_agents=["billing"], allowed_hosts=["127.0.0.1"])
    agent_with_revision(org, "support", send_secrets(local_spec(), "ONLY_BILLING", base_url="http://127.0.0.1:9/v1"))
    response = _execute(runner)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "secret_not_allowed" and SECRET not in json.dumps(error)
    run = Run.objects.get(pk=error["details"]["runId"])
    assert run.status == "error"


@pytest.mark.parametrize("script,status,code,run_status", [
    ([{"status": 400, "body": {"error": {"message": "bad model"}}}], 502, "provider_error", "error"),
    ([{"content": "late", "delayMs": 5000}], 504, None, "timeout"),
])
def test_provider_failure_is_recorded_and_answered(org, runner, script, status, code, run_status):
    base_url, stub = start_openai_stub(script=script)
    try:
        spec = {"inputs": {"question": {"type": "string"}},
                "steps": [{"name": "answer", "model": {"provider": "openai", "name": "gpt-4o-mini", "baseUrl": base_url},
                           "prompt": "{{input.question}}"}],
                "timeoutSeconds": 1}
        agent_with_revision(org, "support", spec)
        response = _execute(runner)
    finally:
        stub.close()
    assert response.status_code == status, response.content
    error = response.json()["error"]
    if code:
        assert error["code"] == code
    else:
        assert error["code"] in {"provider_timeout", "timeout"}
    run = Run.objects.get(pk=error["details"]["runId"])
    assert run.status == run_status and run.error["code"] == error["code"]
    assert Span.objects.filter(run=run).exists()


def test_conversations_continue(org, runner):
    agent_with_revision(org, "support")
    agent_with_revision(org, "billing")
    first = _execute(runner, conversationId="session-42").json()
    second = _execute(runner, conversationId="session-42").json()
    assert first["conversationId"] == second["conversationId"] == "session-42"
    conversation = Conversation.objects.get(key="session-42")
    assert conversation.turns == 2 and conversation.runs.count() == 2
    response = _execute(runner, agent="billing", conversationId="session-42")
    assert response.status_code == 409
    assert _execute(runner, conversationId="bad key with spaces").status_code == 400


def test_viewer_cannot_execute_but_editor_can(org, editor, viewer, api):
    agent_with_revision(org, "support")
    assert _execute(api.as_user(viewer)).status_code == 403
    assert _execute(api.as_user(editor)).status_code == 200


def test_execute_query_count_is_pinned(org, runner, django_assert_num_queries):
    """The hot path's queries: org + agent + deployed revision in one, then run + spans in one statement.

    Pinned so a change that adds a query to every execute shows up in review.
    """
    agent_with_revision(org, "support")
    _execute(runner)  # warm the API-key and price caches
    with django_assert_num_queries(EXECUTE_QUERIES):
        assert _execute(runner).status_code == 200


# agent with its org, shadow config and deployed revision (1; fruxon.api.base, one join each)
# + run and spans in one INSERT statement (1; monitoring.recording). The API key and the
# price table come from the cache once warm (the first execute above warms both).
EXECUTE_QUERIES = 2
