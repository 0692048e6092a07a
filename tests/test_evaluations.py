"""Datasets, cases, evaluations (eager Celery), comparison, the deploy gate, schedules and alerts."""
from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core import mail
from django.utils import timezone

from agents.engine.testing import StubReply, start_json_server
from agents.models import Agent
from agents.services import create_revision
from deployments import services as deploys
from evaluations import tasks
from evaluations.models import Case, CaseResult, Dataset, EvaluationRun
from evaluations.services import runs, scheduled
from monitoring import budgets
from monitoring.models import Alert, Budget, Run, Span
from monitoring.pricing import set_overrides
from orgs.models import AuditEvent

from . import factories as f
from .builders import SYSTEM, agent_with_revision, local_spec, run_once
from .standard_webhooks import Rejected, verify


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


def test_cases_accept_a_source_run_of_this_org_only(org, editor_client, api, golden, versions):
    agent = versions[0]
    run = run_once(agent, "why?")
    url = "/v1/acme/datasets/golden/cases"
    created = editor_client.post(url, {"input": {"question": "why?"}, "sourceRunId": run.id}, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["sourceRunId"] == run.id
    assert Case.objects.get(pk=created.json()["id"]).source_run_id == run.id
    other = f.OrganizationFactory(slug="other")
    foreign_run = run_once(agent_with_revision(other, "support")[0])
    before = Case.objects.count()
    for bad in (foreign_run.id, "run_doesnotexist"):  # another org's run is as unknown as none at all
        refused = editor_client.post(url, {"input": {"question": "x"}, "sourceRunId": bad}, format="json")
        assert refused.status_code == 400, refused.content
        error = refused.json()["error"]
        assert error["code"] == "unknown_run" and "sourceRunId" in error["details"]["fields"]
    # bulk is all or nothing: one unknown run id and no case of the batch is written
    bulk = editor_client.post(url, {"cases": [{"input": {"question": "a"}, "sourceRunId": run.id},
                                              {"input": {"question": "b"}, "sourceRunId": foreign_run.id}]},
                              format="json")
    assert bulk.status_code == 400 and bulk.json()["error"]["code"] == "unknown_run"
    assert Case.objects.count() == before
    case_url = f"{url}/{created.json()['id']}"
    patched = editor_client.patch(case_url, {"sourceRunId": foreign_run.id}, format="json")
    assert patched.status_code == 400 and Case.objects.get(pk=created.json()["id"]).source_run_id == run.id
    cleared = editor_client.patch(case_url, {"sourceRunId": ""}, format="json")
    assert cleared.status_code == 200 and cleared.json()["sourceRunId"] == ""
    assert AuditEvent.objects.filter(action="dataset.case_updated").count() == 1
    # a key limited to another agent may not point a case at this agent's runs
    _, limited = f.api_key(org, preset="builder", agents=["billing"])
    hidden = api.as_key(limited).post(url, {"input": {"question": "x"}, "sourceRunId": run.id}, format="json")
    assert hidden.status_code == 400 and hidden.json()["error"]["code"] == "unknown_run"


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
    url, receiver = start_json_server(lambda request: StubReply(200, {"ok": True}))
    received = receiver.requests  # each with its headers and the body's bytes as received
    with receiver:
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
    assert len(received) == 1
    headers, raw = received[0].headers, received[0].raw
    assert headers["X-Fruxon-Event"] == "evaluation.score_dropped"
    org.refresh_from_db()
    # the signature (Standard Webhooks) covers the bytes on the wire, whatever a receiver's JSON parser makes of them
    assert verify(org.webhook_secret, headers, raw)["type"] == "evaluation.score_dropped"
    with pytest.raises(Rejected):
        verify(org.webhook_secret, headers, raw.replace(b"score", b"Score", 1))
    body = json.loads(raw)
    assert body["data"]["previousScore"] == 1.0 and body["data"]["score"] == pytest.approx(2 / 3)
    assert body["data"]["previousEvaluationId"] == first[0]
    assert len(mail.outbox) == 1 and "dropped" in mail.outbox[0].subject
    assert Alert.objects.get().delivered_at is not None
    assert Alert.objects.get().deliveries.filter(status="delivered").count() == 2  # webhook and email
    # the secret is shown once, when rotated (tests/test_webhooks.py), not in the settings
    assert "webhookSecret" not in owner_client.get("/v1/acme/settings").json()


@pytest.fixture
def watched(org, editor_client, golden, versions):
    """support gated on golden, re-evaluated every 6 hours; alerts by email."""
    editor_client.patch("/v1/acme/agents/support", {"gatingDataset": "golden"}, format="json")
    put = editor_client.put("/v1/acme/agents/support/evaluation-schedule",
                            {"everyHours": 6, "alertEmails": ["oncall@example.com"]}, format="json")
    assert put.status_code == 200
    clock = {"now": timezone.now()}

    def tick(commits) -> EvaluationRun:
        clock["now"] += timedelta(hours=7)
        with commits():
            started = scheduled.start_due(now=clock["now"])
        assert len(started) == 1
        return EvaluationRun.objects.get(pk=started[0])

    return tick


def _drop_alerts():
    return Alert.objects.filter(kind="evaluation.score_dropped")


def test_candidate_in_between_raises_no_false_alert(org, editor_client, golden, versions, watched, commits):
    agent, v1, v2, v3 = versions
    Agent.objects.filter(pk=agent.pk).update(deployed_revision=v2)  # the deployed revision scores 2/3
    first = watched(commits)
    assert first.overall_score == pytest.approx(2 / 3)
    candidate = _evaluate(editor_client, v1.id, commits)  # a better candidate, evaluated in between
    assert candidate["overallScore"] == 1.0
    second = watched(commits)
    # same score as the previous scheduled run: no drop, whatever the candidate scored
    assert second.overall_score == pytest.approx(2 / 3)
    assert not _drop_alerts().exists() and not mail.outbox


def test_candidate_in_between_does_not_hide_a_drop(org, editor_client, golden, versions, watched, commits):
    agent, v1, v2, v3 = versions
    first = watched(commits)
    assert first.overall_score == 1.0
    candidate = _evaluate(editor_client, v2.id, commits)  # a worse candidate, evaluated in between
    assert candidate["overallScore"] == pytest.approx(2 / 3)
    Agent.objects.filter(pk=agent.pk).update(deployed_revision=v2)  # the deployed behaviour drifts down
    second = watched(commits)
    assert second.overall_score == pytest.approx(2 / 3)
    alert = _drop_alerts().get()
    assert alert.payload["previousEvaluationId"] == first.id and alert.payload["previousScore"] == 1.0
    assert alert.payload["evaluationId"] == second.id
    assert len(mail.outbox) == 1


def test_compare_starts_the_deployed_baseline_only_for_writers(org, editor_client, viewer, api, golden, versions,
                                                                commits):
    agent, v1, v2, v3 = versions
    candidate = _evaluate(editor_client, v2.id, commits)
    url = f"/v1/acme/evaluations/{candidate['id']}:compare?baseline=deployed"
    _, readonly = f.api_key(org, preset="readonly")
    readers = {"viewer": api.as_user(viewer), "readonly key": api.as_key(readonly)}
    for who, client in readers.items():
        with commits():
            response = client.get(url)
        assert response.status_code == 200, (who, response.content)
        body = response.json()
        assert body["verdict"] == "pending" and body["baselineMissing"] is True, who
        assert body["baselineId"] is None and body["baselineStarted"] is False
        assert "editor" in body["reasons"][0] and "evaluations:write" in body["reasons"][0]
        assert body["startNeeds"] == {"role": "editor", "scope": "evaluations:write"}
    assert not EvaluationRun.objects.filter(revision=v1).exists()  # nothing started, nothing spent

    # a key with evaluations:write starts it (queued here: its on-commit dispatch is not run yet)
    _, builder = f.api_key(org, preset="builder")
    started = api.as_key(builder).get(url).json()
    assert started["baselineStarted"] is True and started["baselineMissing"] is False
    baseline = EvaluationRun.objects.get(revision=v1, trigger="baseline")
    assert started["baselineId"] == baseline.id and started["verdict"] == "pending"
    assert AuditEvent.objects.get(action="evaluation.started", target_id=baseline.id).actor_label.startswith("key:")
    # readers now see the unfinished baseline, and still start nothing
    pending = readers["viewer"].get(url).json()
    assert pending["baselineId"] == baseline.id and pending["verdict"] == "pending"
    assert pending["baselineMissing"] is False and pending["baselineStarted"] is False
    assert EvaluationRun.objects.filter(revision=v1).count() == 1
    with commits():
        tasks.run_evaluation(baseline.id)
    done = readers["readonly key"].get(url).json()
    assert done["baselineId"] == baseline.id and done["verdict"] == "fail" and done["criticalRegressions"] == 1


def test_compare_response_is_in_the_schema(org, editor_client):
    schema = editor_client.get("/v1/schema?format=json").json()
    answer = schema["paths"]["/v1/{tenant}/evaluations/{evaluation}:compare"]["get"]["responses"]["200"]
    ref = answer["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    fields = schema["components"]["schemas"][ref]["properties"]
    assert {"verdict", "baselineMissing", "baselineStarted", "startNeeds", "regressions"} <= set(fields)
    verdict = fields["verdict"]
    while "enum" not in verdict:  # drf-spectacular names the enum as a component of its own
        verdict = schema["components"]["schemas"][(verdict.get("allOf") or [verdict])[0]["$ref"].rsplit("/", 1)[-1]]
    assert verdict["enum"] == ["pass", "fail", "pending"]
    assert "editor" in fields["baselineMissing"]["description"]


def _queued(client, revision_id, dataset="golden") -> str:
    """POST /evaluations without running its on-commit dispatch: the evaluation stays queued."""
    response = client.post("/v1/acme/evaluations", {"agent": "support", "revisionId": revision_id,
                                                     "dataset": dataset}, format="json")
    assert response.status_code == 202, response.content
    return response.json()["id"]


def test_progress_while_running(org, editor_client, viewer, api, golden, versions, commits):
    agent, v1, v2, v3 = versions
    evaluation_id = _queued(editor_client, v1.id)
    case_ids = EvaluationRun.objects.get(pk=evaluation_id).case_ids
    vera = api.as_user(viewer)
    assert vera.get(f"/v1/acme/evaluations/{evaluation_id}").json()["progress"] == {
        "completed": 0, "total": 3, "fraction": 0.0}
    # the chunks a worker would receive, one at a time
    assert runs.evaluate_chunk(evaluation_id, case_ids[:1]) == 1
    body = vera.get(f"/v1/acme/evaluations/{evaluation_id}").json()
    assert body["status"] == "running" and body["overallScore"] is None and body["startedAt"]
    assert body["progress"]["completed"] == 1 and 0 < body["progress"]["fraction"] < 1
    assert [r["caseId"] for r in body["results"]] == case_ids[:1]
    assert runs.evaluate_chunk(evaluation_id, case_ids[1:2]) == 1
    assert vera.get(f"/v1/acme/evaluations/{evaluation_id}").json()["progress"]["fraction"] == pytest.approx(2 / 3,
                                                                                                         abs=1e-4)
    with commits():
        assert runs.evaluate_chunk(evaluation_id, case_ids[2:]) == 1
    body = vera.get(f"/v1/acme/evaluations/{evaluation_id}").json()
    assert body["status"] == "completed" and body["progress"] == {"completed": 3, "total": 3, "fraction": 1.0}


def test_cancel_through_the_api(org, editor_client, viewer, api, golden, versions, commits):
    agent, v1, v2, v3 = versions
    evaluation_id = _queued(editor_client, v1.id)
    case_ids = EvaluationRun.objects.get(pk=evaluation_id).case_ids
    assert runs.evaluate_chunk(evaluation_id, case_ids[:1]) == 1  # one chunk done: running, 1 of 3
    url = f"/v1/acme/evaluations/{evaluation_id}:cancel"
    assert api.as_user(viewer).post(url).status_code == 403
    cancelled = editor_client.post(url)
    assert cancelled.status_code == 200, cancelled.content
    assert cancelled.json()["status"] == "cancelled" and cancelled.json()["finishedAt"]
    runs_before = Run.objects.count()
    # the rest of the work arrives after the cancel (queued chunks, a redelivery, the stall sweeper): nothing runs
    assert runs.evaluate_chunk(evaluation_id, case_ids) == 0
    assert tasks.run_evaluation(evaluation_id) == 0
    assert CaseResult.objects.filter(evaluation_id=evaluation_id).count() == 1
    assert Run.objects.count() == runs_before
    body = editor_client.get(f"/v1/acme/evaluations/{evaluation_id}").json()
    assert body["status"] == "cancelled" and body["progress"]["completed"] == 1 and body["overallScore"] is None
    again = editor_client.post(url)
    assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
    assert AuditEvent.objects.filter(action="evaluation.cancelled", target_id=evaluation_id,
                                     actor_label="user:eddie").count() == 1
    completed = _evaluate(editor_client, v1.id, commits)
    finished = editor_client.post(f"/v1/acme/evaluations/{completed['id']}:cancel")
    assert finished.status_code == 409 and "completed" in finished.json()["error"]["message"]
    assert EvaluationRun.objects.get(pk=completed["id"]).status == "completed"


def test_case_delete_is_a_service_with_an_audit_event(org, editor_client, viewer, api, golden, versions, commits):
    agent, v1, v2, v3 = versions
    case = golden.cases.order_by("id").first()
    url = f"/v1/acme/datasets/golden/cases/{case.pk}"
    assert api.as_user(viewer).delete(url).status_code == 403
    evaluation_id = _queued(editor_client, v1.id)
    busy = editor_client.delete(url)  # its result could never be written: the evaluation would never complete
    assert busy.status_code == 409 and busy.json()["error"]["details"]["evaluations"] == [evaluation_id]
    assert Case.objects.filter(pk=case.pk).exists()
    editor_client.post(f"/v1/acme/evaluations/{evaluation_id}:cancel")
    gone = editor_client.delete(url)
    assert gone.status_code == 204
    assert not Case.objects.filter(pk=case.pk).exists()
    event = AuditEvent.objects.get(action="dataset.case_deleted")
    assert event.actor_label == "user:eddie" and event.target_id == "golden"
    assert event.data == {"caseId": case.pk, "critical": False, "sourceRunId": ""}
    assert editor_client.delete(url).status_code == 404


def test_llm_judge_through_the_engine(org, editor_client, versions, commits):
    agent = versions[0]
    # fruxon-local priced for this agent, 1 cent per token: the agent's run and its judge both cost something
    set_overrides(actor=SYSTEM, organization=org, agent=agent, rows=[{
        "provider": "fruxon-local", "model": "*", "inputPerMillion": Decimal("10000"), "outputPerMillion": Decimal("10000")}])
    budget, _ = budgets.put_budget(actor=SYSTEM, agent=agent, period="day", amount_usd=Decimal("100"), enforce=True,
                                   alert_thresholds=[], alert_webhook="", alert_emails=[])
    judge_model = {"provider": "fruxon-local", "name": "judge", "script": [{"reply": '{"score": 0.9, "reason": "polite"}'}]}
    response = editor_client.post("/v1/acme/datasets", {"slug": "judged", "metrics": [
        {"type": "llmJudge", "rubric": "Is the answer polite?", "model": judge_model, "threshold": 0.8}]}, format="json")
    assert response.status_code == 201, response.content
    editor_client.post("/v1/acme/datasets/judged/cases", {"input": {"question": "hi"}}, format="json")
    body = _evaluate(editor_client, versions[1].id, commits, dataset="judged")
    result = body["results"][0]
    score = result["scores"][0]
    assert score["metric"] == "llmJudge" and score["score"] == pytest.approx(0.9) and score["passed"] is True
    assert CaseResult.objects.count() == 1
    # the judge's model call is priced and visible: on the case result, the evaluation and the run's spans
    agent_cost, judge_cost = Decimal(result["costUsd"]), Decimal(result["judgeCostUsd"])
    assert agent_cost > 0 and judge_cost > 0
    assert Decimal(body["costUsd"]) == agent_cost + judge_cost
    assert Decimal(body["aggregates"]["judgeCostUsd"]) == judge_cost
    run = Run.objects.get(pk=result["runId"])
    assert run.cost_usd == agent_cost + judge_cost
    judge_step = Span.objects.get(run=run, kind="step", name="judge:llmJudge")
    judge_llm = Span.objects.get(run=run, kind="llm", parent_id=judge_step.id)
    assert judge_llm.cost_usd == judge_cost and judge_llm.model == "judge" and judge_llm.attributes["judge"] is True
    detail = editor_client.get(f"/v1/acme/runs/{run.id}").json()
    assert Decimal(detail["usage"]["costUsd"]) == agent_cost + judge_cost
    assert "judge:llmJudge" in json.dumps(detail)  # the spans tree shows the judge step
    # and it counts against the evaluated agent's budget, as the agent's own call does
    assert Decimal(budgets.status(Budget.objects.get(pk=budget.pk))["spentUsd"]) == agent_cost + judge_cost


def test_llm_judge_refused_by_the_agents_budget(org, editor_client, versions, commits):
    """A budget that admits the agent's call but not the judge's: the evaluation stops, failed, with the reason.

A case the budget refused to grade says nothing of the revision: scoring it 0
would fail the gate and fire the score-drop alert for the wrong reason.
"""
    agent = versions[0]
    set_overrides(actor=SYSTEM, organization=org, agent=agent, rows=[
        {"provider": "fruxon-local", "model": "local", "inputPerMillion": Decimal("0"), "outputPerMillion": Decimal("0")},
        {"provider": "fruxon-local", "model": "judge", "inputPerMillion": Decimal("500000"),
         "outputPerMillion": Decimal("500000")}])
    budgets.put_budget(actor=SYSTEM, agent=agent, period="day", amount_usd=Decimal("0.5"), enforce=True,
                       alert_thresholds=[], alert_webhook="", alert_emails=[])
    judge_model = {"provider": "fruxon-local", "name": "judge", "script": [{"reply": '{"score": 1, "reason": "ok"}'}]}
    editor_client.post("/v1/acme/datasets", {"slug": "judged", "metrics": [
        {"type": "llmJudge", "rubric": "Polite?", "model": judge_model}]}, format="json")
    editor_client.post("/v1/acme/datasets/judged/cases", {"input": {"question": "hi"}}, format="json")
    body = _evaluate(editor_client, versions[1].id, commits, dataset="judged")
    assert body["status"] == "failed" and body["results"] == [] and body["overallScore"] is None
    assert "budget" in body["error"] and "raise the budget" in body["error"]
    event = AuditEvent.objects.get(action="evaluation.failed", target_id=body["id"])
    assert event.actor_label == "system" and event.data["completed"] == 0
    # the agent's call and the refused judge call are recorded (they ran, or tried to), as a run without a result
    run = Run.objects.get(source="evaluation", agent=agent)
    assert not CaseResult.objects.exists()
    judge_step = Span.objects.get(run=run, name="judge:llmJudge")
    assert judge_step.status == "budget_exceeded"


def test_an_empty_dataset_cannot_be_evaluated(org, editor_client, versions, commits):
    editor_client.post("/v1/acme/datasets", {"slug": "empty", "metrics": [{"type": "exact"}]}, format="json")
    with commits():
        response = editor_client.post("/v1/acme/evaluations", {"agent": "support", "revisionId": versions[1].id,
                                                               "dataset": "empty"}, format="json")
    assert response.status_code == 400 and response.json()["error"]["code"] == "empty_dataset"
    assert not EvaluationRun.objects.exists() and not AuditEvent.objects.filter(action="evaluation.started").exists()
    # the gate says why instead of failing on a missing score
    editor_client.patch("/v1/acme/agents/support", {"gatingDataset": "empty"}, format="json")
    readiness = editor_client.get(f"/v1/acme/agents/support/readiness?revisionId={versions[1].id}")
    assert readiness.status_code == 200, readiness.content


def test_keys_limited_to_other_agents_do_not_see_evaluations(org, editor_client, api, golden, versions, commits):
    evaluation = _evaluate(editor_client, versions[1].id, commits)
    _, other = f.api_key(org, preset="builder", agents=["billing"])
    _, mine = f.api_key(org, preset="builder", agents=["support"])
    hidden = api.as_key(other)
    assert hidden.get("/v1/acme/evaluations").json()["results"] == []
    assert hidden.get(f"/v1/acme/evaluations/{evaluation['id']}").status_code in (403, 404)
    assert [e["id"] for e in api.as_key(mine).get("/v1/acme/evaluations").json()["results"]] == [evaluation["id"]]


def test_a_baseline_must_be_an_evaluation_of_the_same_dataset(org, editor_client, golden, versions, commits):
    editor_client.post("/v1/acme/datasets", {"slug": "other", "metrics": [{"type": "exact"}]}, format="json")
    editor_client.post("/v1/acme/datasets/other/cases", {"input": {"question": "alpha"}, "expected": "alpha"},
                       format="json")
    on_golden = _evaluate(editor_client, versions[1].id, commits)
    on_other = _evaluate(editor_client, versions[1].id, commits, dataset="other")
    response = editor_client.get(f"/v1/acme/evaluations/{on_golden['id']}:compare?baseline={on_other['id']}")
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_baseline"
    assert editor_client.get(f"/v1/acme/evaluations/{on_golden['id']}:compare?baseline=eval_nope").status_code == 404


def test_model_replies_postgresql_would_refuse_are_still_recorded(org, editor_client, commits):
    """A NUL character in a model's reply (jsonb and text columns refuse it) must not lose the run or the result."""
    from agents.engine.testing import start_openai_stub

    base_url, stub = start_openai_stub(script=[{"content": "before\u0000after"}])
    try:
        spec = {"inputs": {"question": {"type": "string", "required": True}},
                "steps": [{"name": "answer", "prompt": "{{input.question}}",
                           "model": {"provider": "openai", "name": "gpt-4o-mini", "baseUrl": base_url}}],
                "output": "{{steps.answer.output}}"}
        agent, revision = agent_with_revision(org, "nul", spec)
        run = run_once(agent, "q")
        assert Run.objects.get(pk=run.id).output == "before\ufffdafter" and run.status == "ok"
        editor_client.post("/v1/acme/datasets", {"slug": "nul", "metrics": [{"type": "contains"}]}, format="json")
        editor_client.post("/v1/acme/datasets/nul/cases", {"input": {"question": "q"}, "expected": "after"},
                           format="json")
        with commits():
            started = editor_client.post("/v1/acme/evaluations", {"agent": "nul", "revisionId": revision.id,
                                                                  "dataset": "nul"}, format="json")
    finally:
        stub.close()
    body = editor_client.get(f"/v1/acme/evaluations/{started.json()['id']}").json()
    assert body["status"] == "completed" and body["results"][0]["passed"] is True
    assert body["results"][0]["output"] == "before\ufffdafter"


def test_request_bodies_with_nul_characters_are_refused_whole(org, editor_client, golden):
    before = Case.objects.count()
    for body in (b'{"input": {"question": "a\\u0000b"}}', b'{"cases": [{"input": {"q\\u0000": "x"}}]}',
                 b'{"input": {"question": "lone \\ud800 surrogate"}}'):
        response = editor_client.post("/v1/acme/datasets/golden/cases", body, content_type="application/json")
        assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_request"
        assert "NUL" in response.json()["error"]["message"], response.content
    assert Case.objects.count() == before
    bad_spec = editor_client.post("/v1/acme/agents", {"name": "x", "spec": local_spec("a\u0000")}, format="json")
    assert bad_spec.status_code == 400 and not Agent.objects.filter(slug="x").exists()


def test_pg_json_keeps_documents_postgresql_accepts():
    from fruxon.db import pg_json

    assert json.loads(pg_json({"a": [1, 2.5, "x"]})) == {"a": [1, 2.5, "x"]}
    assert json.loads(pg_json({"k\u0000": [float("nan"), float("inf"), "a\u0000b", 1.0]})) == {
        "k\ufffd": [None, None, "a\ufffdb", 1.0]}
    assert json.loads(pg_json({"literal": "\\u0000"})) == {"literal": "\\u0000"}  # a backslash text, kept
    assert json.loads(pg_json({"lone": "a\ud800b", "pair": "\U0001F600", "hangul": "\ud55c"})) == {
        "lone": "a\ufffdb", "pair": "\U0001F600", "hangul": "\ud55c"}
    deep = current = []
    for _ in range(500):
        current.append([])
        current = current[0]
    current.append("\x00")
    assert "\\ufffd" in pg_json(deep)
