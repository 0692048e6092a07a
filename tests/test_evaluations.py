"""Datasets, cases, evaluations (eager Celery), comparison, the deploy gate, schedules and alerts."""
from __future__ import annotations

import hashlib
import hmac
import json
from datetime import timedelta

import pytest
from django.core import mail
from django.utils import timezone

from agents.models import Agent
from agents.services import create_revision
from deployments import services as deploys
from evaluations.models import Case, CaseResult, Dataset, EvaluationRun
from evaluations.services import scheduled
from monitoring.models import Alert, Run

from . import factories as f
from .builders import SYSTEM, agent_with_revision, run_once


def spec_replying(template: str, prompt: str = "{{input.question}}") -> dict:
    return {
        "inputs": {"question": {"type": "string", "required": True}, "v2": {"type": "string"}, "v3": {"type": "string"}},
        "steps": [{"name": "answer", "prompt": prompt,
                   "model": {"provider": "fruxon-local", "name": "local", "script": [{"reply": template}]}}],
        "output": "{{steps.answer.output}}",
    }


CASES = [
    {"input": {"question": "alpha", "v2": "alpha", "v3": "alpha"}, "expected": "alpha", "critical": False},
    {"input": {"question": "beta", "v2": "WRONG", "v3": "beta"}, "expected": "beta", "critical": True},
    {"input": {"question": "gamma", "v2": "gamma", "v3": "gamma"}, "expected": "gamma", "critical": False},
]


@pytest.fixture
def editor_client(editor, api):
    return api.as_user(editor)


@pytest.fixture
def golden(org, editor_client):
    response = editor_client.post("/v1/acme/datasets", {"slug": "golden", "metrics": [{"type": "exact"}],
                                                         "passThreshold": 1.0}, format="json")
    assert response.status_code == 201, response.content
    bulk = editor_client.post("/v1/acme/datasets/golden/cases", {"cases": CASES}, format="json")
    assert bulk.status_code == 201 and len(bulk.json()["results"]) == 3
    return Dataset.objects.get(slug="golden")


@pytest.fixture
def versions(org):
    agent, v1 = agent_with_revision(org, "support", spec_replying("{{input.question}}"), deploy=False)
    deploys.deploy(actor=SYSTEM, agent=agent, revision_id=v1.id)
    v2 = create_revision(actor=SYSTEM, agent=agent, spec=spec_replying("{{input.v2}}"), message="breaks beta")
    v3 = create_revision(actor=SYSTEM, agent=agent, spec=spec_replying("{{input.v3}}", prompt="Q: {{input.question}}"))
    agent.refresh_from_db()
    return agent, v1, v2, v3


@pytest.fixture
def commits(django_capture_on_commit_callbacks):
    """Evaluations go to (eager) Celery on commit; tests run inside a transaction, so run the hooks."""
    return lambda: django_capture_on_commit_callbacks(execute=True)


def _evaluate(client, revision_id, commits, dataset="golden"):
    with commits():
        response = client.post("/v1/acme/evaluations", {"agent": "support", "revisionId": revision_id,
                                                         "dataset": dataset}, format="json")
    assert response.status_code == 202, response.content
    return client.get(f"/v1/acme/evaluations/{response.json()['id']}").json()


def test_dataset_crud_and_validation(org, editor_client, viewer, api):
    bad = editor_client.post("/v1/acme/datasets", {"slug": "x", "metrics": [{"type": "regex", "pattern": "("}]}, format="json")
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_metrics"
    unknown = editor_client.post("/v1/acme/datasets", {"slug": "x", "metrics": [{"type": "vibes"}]}, format="json")
    assert unknown.status_code == 400
    assert not Dataset.objects.exists()
    created = editor_client.post("/v1/acme/datasets", {"slug": "golden", "metrics": [{"type": "contains"}]}, format="json")
    assert created.status_code == 201 and created.json()["passThreshold"] == 1.0
    case = editor_client.post("/v1/acme/datasets/golden/cases", {"input": {"q": 1}, "expected": "x", "critical": True,
                                                                  "tags": ["smoke"]}, format="json")
    assert case.status_code == 201 and case.json()["critical"] is True
    vera = api.as_user(viewer)
    assert vera.get("/v1/acme/datasets/golden/cases").json()["results"][0]["tags"] == ["smoke"]
    assert vera.post("/v1/acme/datasets", {"slug": "mine"}, format="json").status_code == 403
    assert vera.post("/v1/acme/datasets/golden/cases", {"input": {}}, format="json").status_code == 403
    patched = editor_client.patch(f"/v1/acme/datasets/golden/cases/{case.json()['id']}", {"critical": False}, format="json")
    assert patched.json()["critical"] is False
    half = editor_client.post("/v1/acme/datasets/golden/cases", {"cases": [{"input": {}}, {"input": "not an object"}]},
                              format="json")
    assert half.status_code == 400 and Case.objects.count() == 1  # all or nothing
    assert editor_client.get("/v1/acme/datasets/golden").json()["caseCount"] == 1


def test_add_to_dataset_copies_run_input(org, editor_client, viewer, api, golden, versions):
    agent = versions[0]
    run = run_once(agent, "what broke?")
    response = editor_client.post(f"/v1/acme/runs/{run.id}:add-to-dataset",
                                  {"dataset": "golden", "expected": "fixed answer", "critical": True}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["input"] == run.input == {"question": "what broke?"}
    assert body["sourceRunId"] == run.id and body["critical"] is True and body["expected"] == "fixed answer"
    assert api.as_user(viewer).post(f"/v1/acme/runs/{run.id}:add-to-dataset", {"dataset": "golden"},
                                    format="json").status_code == 403
    other = f.OrganizationFactory(slug="other")
    foreign_agent, _ = agent_with_revision(other, "support")
    foreign_run = run_once(foreign_agent)
    assert editor_client.post(f"/v1/acme/runs/{foreign_run.id}:add-to-dataset", {"dataset": "golden"},
                              format="json").status_code == 404


def test_evaluation_runs_and_reports(org, editor_client, viewer, api, golden, versions, commits):
    agent, v1, v2, v3 = versions
    body = _evaluate(editor_client, v2.id, commits)
    assert body["status"] == "completed" and body["progress"] == {"completed": 3, "total": 3, "fraction": 1.0}
    assert body["overallScore"] == pytest.approx(2 / 3) and body["passRate"] == pytest.approx(2 / 3)
    assert body["aggregates"]["metrics"]["exact"]["passRate"] == pytest.approx(2 / 3)
    beta = next(r for r in body["results"] if r["input"]["question"] == "beta")
    assert beta["expected"] == "beta" and beta["output"] == "WRONG" and beta["passed"] is False and beta["critical"]
    assert Run.objects.filter(source="evaluation").count() == 3
    vera = api.as_user(viewer)
    assert vera.get("/v1/acme/evaluations").json()["results"][0]["id"] == body["id"]
    assert vera.post("/v1/acme/evaluations", {"agent": "support", "revisionId": v1.id, "dataset": "golden"},
                     format="json").status_code == 403


def test_compare_with_deployed_baseline(org, editor_client, golden, versions, commits):
    agent, v1, v2, v3 = versions
    candidate = _evaluate(editor_client, v2.id, commits)
    with commits():
        first = editor_client.get(f"/v1/acme/evaluations/{candidate['id']}:compare?baseline=deployed").json()
    # eager Celery: the missing baseline was started and completed within the call
    assert first["baselineStarted"] is True
    baseline = EvaluationRun.objects.get(revision=v1, trigger="baseline")
    body = editor_client.get(f"/v1/acme/evaluations/{candidate['id']}:compare?baseline=deployed").json()
    assert body["baselineId"] == baseline.id and body["baselineStarted"] is False
    assert body["verdict"] == "fail" and body["criticalRegressions"] == 1
    assert body["regressions"][0]["critical"] is True and body["regressions"][0]["output"] == "WRONG"
    assert body["deltas"]["overallScore"] == pytest.approx(-1 / 3)
    explicit = editor_client.get(f"/v1/acme/evaluations/{candidate['id']}:compare?baseline={baseline.id}").json()
    assert explicit["verdict"] == "fail"


def test_gate_blocks_critical_regression_and_passes_without(org, editor_client, golden, versions, commits):
    agent, v1, v2, v3 = versions
    patched = editor_client.patch("/v1/acme/agents/support", {"gatingDataset": "golden"}, format="json")
    assert patched.json()["gatingDataset"] == "golden"
    # no evaluation of the candidate yet: blocked
    response = editor_client.post("/v1/acme/agents/support:deploy", {"revisionId": v3.id}, format="json")
    assert response.status_code == 409
    gate = next(c for c in response.json()["error"]["details"]["checks"] if c["check"] == "evaluation")
    assert gate["status"] == "fail" and "No completed evaluation" in gate["detail"]
    _evaluate(editor_client, v1.id, commits)  # the deployed baseline
    _evaluate(editor_client, v2.id, commits)
    _evaluate(editor_client, v3.id, commits)
    refused = editor_client.post("/v1/acme/agents/support:deploy", {"revisionId": v2.id}, format="json")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "not_ready"
    gate = next(c for c in refused.json()["error"]["details"]["checks"] if c["check"] == "evaluation")
    assert gate["status"] == "fail" and gate["data"]["criticalRegressions"] == 1
    assert Agent.objects.get(pk=agent.pk).deployed_revision_id == v1.id
    accepted = editor_client.post("/v1/acme/agents/support:deploy", {"revisionId": v3.id}, format="json")
    assert accepted.status_code == 201, accepted.content
    gate = next(c for c in accepted.json()["checks"] if c["check"] == "evaluation")
    assert gate["status"] == "pass"


def test_unknown_gating_dataset_is_400(org, editor_client, versions):
    response = editor_client.patch("/v1/acme/agents/support", {"gatingDataset": "nope"}, format="json")
    assert response.status_code == 400 and response.json()["error"]["code"] == "unknown_dataset"


def test_scheduled_reevaluation_alerts_on_drop(org, owner_client, editor_client, golden, versions,
                                               django_capture_on_commit_callbacks):
    from agents.engine.testing import StubReply, start_json_server

    received = []

    def receiver(request):
        received.append(request)
        return StubReply(200, {"ok": True})

    url, server = start_json_server(receiver)
    try:
        agent, v1, v2, v3 = versions
        no_dataset = editor_client.put("/v1/acme/agents/support/evaluation-schedule", {"everyHours": 6}, format="json")
        assert no_dataset.status_code == 400
        editor_client.patch("/v1/acme/agents/support", {"gatingDataset": "golden"}, format="json")
        put = editor_client.put("/v1/acme/agents/support/evaluation-schedule",
                                {"everyHours": 6, "alertWebhook": f"{url}/hook", "alertEmails": ["oncall@example.com"]},
                                format="json")
        assert put.status_code == 200 and put.json()["dataset"] == "golden"
        later = timezone.now() + timedelta(hours=7)
        with django_capture_on_commit_callbacks(execute=True):
            first = scheduled.start_due(now=later)
        assert len(first) == 1 and EvaluationRun.objects.get(pk=first[0]).overall_score == 1.0
        assert received == [] and not mail.outbox  # nothing to compare with yet: no alert
        # the model under the deployed revision "shifts": same revision, now the beta case fails
        Agent.objects.filter(pk=agent.pk).update(deployed_revision=v2)
        with django_capture_on_commit_callbacks(execute=True):
            second = scheduled.start_due(now=later + timedelta(hours=7))
        assert len(second) == 1
        with django_capture_on_commit_callbacks(execute=True):
            assert scheduled.start_due(now=later + timedelta(hours=7)) == []  # claimed once
    finally:
        server.close()
    assert len(received) == 1
    request = received[0]
    raw = json.dumps(request.body).encode()
    assert request.headers["X-Fruxon-Event"] == "evaluation.score_dropped"
    signature = request.headers["X-Fruxon-Signature"]
    org.refresh_from_db()
    assert request.body["data"]["previousScore"] == 1.0 and request.body["data"]["score"] == pytest.approx(2 / 3)
    # the sender's serialization is json.dumps defaults, so re-dumping the parsed body gives the signed bytes
    expected = "sha256=" + hmac.new(org.webhook_secret.encode(), raw, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(signature, expected)
    assert len(mail.outbox) == 1 and "dropped" in mail.outbox[0].subject
    assert Alert.objects.get().delivered_at is not None
    secret = owner_client.get("/v1/acme/settings").json()["webhookSecret"]
    assert secret == org.webhook_secret


def test_llm_judge_through_the_engine(org, editor_client, versions, commits):
    judge_model = {"provider": "fruxon-local", "name": "judge", "script": [{"reply": '{"score": 0.9, "reason": "polite"}'}]}
    response = editor_client.post("/v1/acme/datasets", {"slug": "judged", "metrics": [
        {"type": "llmJudge", "rubric": "Is the answer polite?", "model": judge_model, "threshold": 0.8}]}, format="json")
    assert response.status_code == 201, response.content
    editor_client.post("/v1/acme/datasets/judged/cases", {"input": {"question": "hi"}}, format="json")
    body = _evaluate(editor_client, versions[1].id, commits, dataset="judged")
    score = body["results"][0]["scores"][0]
    assert score["metric"] == "llmJudge" and score["score"] == pytest.approx(0.9) and score["passed"] is True
    assert CaseResult.objects.count() == 1
