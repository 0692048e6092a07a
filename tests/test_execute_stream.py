"""Streaming executes (API.md "Streaming, cancellation and overload"), in process.

The same revision streamed and not streamed gives the same final body; events come in
API.md's order; the deltas add up to the output; a provider error mid-stream ends in
``run.failed`` with the run recorded; refusals before the run are ordinary JSON errors.
Cancellation and overload need a real ASGI server: ``tests/test_execute_async_server.py``.
"""
from __future__ import annotations

import json

import pytest
from asgiref.sync import async_to_sync

from monitoring.models import Run

from . import factories as f
from .builders import agent_with_revision, local_spec

STORY = ["Once ", "upon ", "a ", "time"]


def chunked_spec(**model) -> dict:
    spec = local_spec("unused")
    spec["steps"][0]["model"]["script"] = [{"chunks": STORY, **model}]
    return spec


def read_events(response) -> list[tuple[str, dict]]:
    """The (event, data) pairs of a text/event-stream answer."""
    assert response.streaming
    chunks = response.streaming_content

    async def collect():
        return [chunk async for chunk in chunks]

    raw = b"".join(async_to_sync(collect)() if hasattr(chunks, "__aiter__") else chunks).decode()
    events = []
    for block in raw.split("\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append((lines["event"], json.loads(lines["data"])))
    return events


@pytest.fixture
def runner(org, api):
    _, plaintext = f.api_key(org, preset="runner")
    return api.as_key(plaintext)


def _execute(client, agent="support", headers=None, **body):
    body.setdefault("input", {"question": "tell me a story"})
    return client.post(f"/v1/acme/agents/{agent}:execute", body, format="json", headers=headers or {})


def test_streamed_and_not_streamed_give_the_same_final_body(org, runner):
    agent_with_revision(org, "support", chunked_spec())
    plain = _execute(runner)
    assert plain.status_code == 200, plain.content
    streamed = _execute(runner, stream=True)
    assert streamed.status_code == 200 and streamed["Content-Type"].startswith("text/event-stream")
    events = read_events(streamed)
    names = [name for name, _ in events]
    assert names[0] == "run.started" and names[-1] == "run.completed"
    assert names == ["run.started", "step.started", *["output.delta"] * len(STORY), "step.completed", "run.completed"]
    started, completed = events[0][1], events[-1][1]
    assert started == {"runId": completed["runId"], "revisionId": completed["revisionId"], "source": "api",
                       "conversationId": None}
    assert streamed["X-Fruxon-Run-Id"] == completed["runId"]
    assert "".join(data["text"] for name, data in events if name == "output.delta") == completed["output"]
    body = plain.json()
    for volatile in ("runId", "latencyMs"):
        body.pop(volatile), completed.pop(volatile)
    assert completed == body and body["output"] == "".join(STORY)
    step = next(data for name, data in events if name == "step.completed")
    assert step["step"] == "answer" and step["status"] == "ok" and step["usage"]["outputTokens"] > 0
    # Both runs are recorded, the streamed one under the id announced first.
    assert Run.objects.get(pk=started["runId"]).output == "".join(STORY)
    assert Run.objects.filter(status="ok").count() == 2


def test_accept_header_streams_too(org, runner):
    agent_with_revision(org, "support", chunked_spec())
    response = _execute(runner, headers={"Accept": "text/event-stream"})
    assert response.status_code == 200 and response["Content-Type"].startswith("text/event-stream")
    assert read_events(response)[-1][0] == "run.completed"


def test_provider_error_mid_stream_ends_in_run_failed_and_is_recorded(org, runner):
    agent_with_revision(org, "support", chunked_spec(error="provider_error"))
    events = read_events(_execute(runner, stream=True))
    names = [name for name, _ in events]
    assert names[:2] == ["run.started", "step.started"] and names[-1] == "run.failed"
    assert "run.completed" not in names and names.count("output.delta") == len(STORY)
    failed = events[-1][1]
    assert set(failed) == {"runId", "error"} and failed["runId"] == events[0][1]["runId"]
    assert failed["error"]["code"] == "provider_error" and failed["error"]["message"]
    assert failed["error"]["details"]["status"] == "error"
    run = Run.objects.get(pk=failed["runId"])
    assert run.status == "error" and run.error["code"] == "provider_error"
    assert run.spans.filter(kind="llm", status="error").count() == 1


def test_streamed_output_that_is_not_the_model_text(org, runner):
    """An output template that wraps the text: no step streams it (the deltas would not add up), and
    the final body still carries it."""
    spec = chunked_spec()
    spec["output"] = {"answer": "{{steps.answer.output}}"}
    agent_with_revision(org, "support", spec)
    events = read_events(_execute(runner, stream=True))
    assert events[-1][0] == "run.completed" and events[-1][1]["output"] == {"answer": "".join(STORY)}


@pytest.mark.parametrize("body,status,code", [
    ({"input": {}}, 400, "invalid_request"),                               # a required input is missing
    ({"input": {"question": "q"}, "revisionId": "rev_nope"}, 404, "not_found"),
    ({"input": {"question": "q"}, "stream": "yes"}, 400, "invalid_request"),
])
def test_refusals_before_the_run_are_json_not_a_stream(org, runner, body, status, code):
    spec = chunked_spec()
    spec["inputs"] = {"question": {"type": "string", "required": True}}
    agent_with_revision(org, "support", spec)
    response = runner.post("/v1/acme/agents/support:execute", {**body, "stream": body.get("stream", True)},
                           format="json")
    assert response.status_code == status and not response.streaming
    assert response["Content-Type"] == "application/json" and response.json()["error"]["code"] == code
    assert Run.objects.count() == 0


def test_unknown_agent_and_missing_key_are_json(org, runner, api):
    agent_with_revision(org, "support", chunked_spec())
    missing = _execute(runner, agent="nope", stream=True)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    anonymous = _execute(api.anonymous(), stream=True)
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "unauthenticated"
    assert anonymous["WWW-Authenticate"].startswith("Bearer")


def test_a_person_streams_through_the_drf_base(org, editor, api):
    agent_with_revision(org, "support", chunked_spec())
    response = _execute(api.as_user(editor), stream=True)
    assert response.status_code == 200
    assert read_events(response)[-1][1]["output"] == "".join(STORY)


def test_other_methods_answer_as_the_drf_base(org, runner, api):
    """Only POST runs; the other methods get the DRF base's answers, as on every endpoint."""
    agent_with_revision(org, "support", chunked_spec())
    url = "/v1/acme/agents/support:execute"
    wrong = runner.get(url)
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"
    described = runner.options(url)
    assert described.status_code == 200 and described.json()["name"]
    assert api.anonymous().get(url).status_code == 401
    assert runner.get("/v1/acme/agents/nope:execute").status_code == 404
    assert Run.objects.count() == 0
