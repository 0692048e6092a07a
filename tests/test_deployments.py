"""Deploy, rollback, readiness, history, health, schedules, shadow, auto-rollback."""
from __future__ import annotations

import threading
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import OperationalError, connection
from django.utils import timezone

from agents.models import Agent
from agents.services import create_revision
from deployments import autorollback, scheduling, services, shadow
from deployments.models import Deployment, ScheduledDeployment, ShadowResult
from monitoring.models import Budget, Run
from orgs.models import AuditEvent, Integration

from . import factories as f
from .builders import SYSTEM, agent_with_revision, local_spec, run_once


@pytest.fixture
def agent_v1_v2(org):
    agent, v1 = agent_with_revision(org, "support", local_spec("v1"), deploy=False)
    v2 = create_revision(actor=SYSTEM, agent=agent, spec=local_spec("v2"), message="v2")
    return agent, v1, v2


def _deploy(client, revision_id, **extra):
    return client.post("/v1/acme/agents/support:deploy", {"revisionId": revision_id, **extra}, format="json")


def test_deploy_switches_records_and_audits(org, agent_v1_v2, editor, api):
    agent, v1, v2 = agent_v1_v2
    client = api.as_user(editor)
    response = _deploy(client, v1.id, reason="launch")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["fromRevisionId"] is None and body["toRevisionId"] == v1.id and body["kind"] == "deploy"
    assert body["actor"] == "user:eddie" and body["reason"] == "launch" and body["forced"] is False
    assert {c["check"] for c in body["checks"]} == {"evaluation", "diff", "integrations", "secrets", "subAgents",
                                                    "budget", "rollbackTarget"}
    agent.refresh_from_db()
    assert agent.deployed_revision_id == v1.id
    again = _deploy(client, v1.id)
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_deployed"
    _deploy(client, v2.id, reason="better")
    history = client.get("/v1/acme/agents/support/deployments").json()["results"]
    assert [(d["fromRevisionId"], d["toRevisionId"]) for d in history] == [(v1.id, v2.id), (None, v1.id)]
    assert AuditEvent.objects.filter(action="agent.deploy").count() == 2
    exec_response = client.post("/v1/acme/agents/support:execute", {"input": {"question": "q"}}, format="json")
    assert exec_response.json()["output"] == "v2"


def test_roles_for_deploy_rollback_schedule_shadow(org, agent_v1_v2, owner, editor, viewer, api):
    agent, v1, v2 = agent_v1_v2
    services.deploy(actor=SYSTEM, agent=agent, revision_id=v1.id)
    vera = api.as_user(viewer)
    later = (timezone.now() + timedelta(hours=1)).isoformat()
    calls = [
        ("post", "/v1/acme/agents/support:deploy", {"revisionId": v2.id}),
        ("post", "/v1/acme/agents/support:rollback", {}),
        ("post", "/v1/acme/agents/support/scheduled-deployments", {"revisionId": v2.id, "runAt": later}),
        ("put", "/v1/acme/agents/support/shadow", {"revisionId": v2.id, "sampleRate": 0.5}),
        ("delete", "/v1/acme/agents/support/shadow", None),
    ]
    for method, url, body in calls:
        response = getattr(vera, method)(url, body, format="json")
        assert response.status_code == 403 and response.json()["error"]["code"] == "forbidden", url
    assert Deployment.objects.count() == 1 and not ScheduledDeployment.objects.exists()
    # an editor may deploy but not force
    forced = _deploy(api.as_user(editor), v2.id, force=True, reason="YOLO")
    assert forced.status_code == 403 and Agent.objects.get(pk=agent.pk).deployed_revision_id == v1.id
    # nor may an API key, even with the deploy scope
    _, key = f.api_key(org, scopes=["revisions:deploy"])
    assert _deploy(api.as_key(key), v2.id, force=True, reason="ci").status_code == 403
    assert _deploy(api.as_key(key), v2.id).status_code == 201


def test_blocking_checks_refuse_deploy_and_owner_can_force(org, owner_client, editor, api):
    spec = local_spec(prompt="{{input.question}} {{secret.MISSING_KEY}}")
    spec["steps"][0]["tools"] = [{"name": "lookup", "integration": "crm", "parameters": {"type": "object"}}]
    spec["steps"][0]["subAgents"] = [{"agent": "helper"}]
    agent, rev = agent_with_revision(org, "support", spec, deploy=False)
    f.integration(org, "crm", status="disconnected")
    agent_with_revision(org, "helper", deploy=False)
    response = _deploy(api.as_user(editor), rev.id)
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "not_ready"
    checks = {c["check"]: c for c in error["details"]["checks"]}
    assert checks["secrets"]["status"] == "fail" and "MISSING_KEY" in checks["secrets"]["detail"]
    assert checks["integrations"]["status"] == "fail" and "disconnected" in checks["integrations"]["detail"]
    assert checks["subAgents"]["status"] == "fail" and "helper" in checks["subAgents"]["detail"]
    assert checks["budget"]["status"] == "warn" and checks["evaluation"]["status"] == "warn"
    assert not Deployment.objects.exists() and Agent.objects.get(pk=agent.pk).deployed_revision_id is None
    readiness = api.as_user(editor).get(f"/v1/acme/agents/support/readiness?revisionId={rev.id}").json()
    assert readiness["ready"] is False and [c["check"] for c in readiness["checks"]][0] == "evaluation"
    assert _deploy(owner_client, rev.id, force=True).status_code == 400  # a reason is required
    forced = _deploy(owner_client, rev.id, force=True, reason="hotfix, integration reconnects tonight")
    assert forced.status_code == 201 and forced.json()["forced"] is True
    # fixing the blockers turns them green
    f.secret(org, "MISSING_KEY", "v", allowed_agents=["support"])
    Integration.objects.filter(slug="crm").update(status="authorized")
    helper = Agent.objects.get(slug="helper")
    Agent.objects.filter(pk=helper.pk).update(deployed_revision=helper.revisions.get())
    Budget.objects.create(organization=org, agent=agent, amount_usd=Decimal("50"), enforce=True)
    checks = {c["check"]: c["status"] for c in
              api.as_user(editor).get(f"/v1/acme/agents/support/readiness?revisionId={rev.id}").json()["checks"]}
    assert checks == {"evaluation": "warn", "diff": "pass", "integrations": "pass", "secrets": "pass",
                      "subAgents": "pass", "budget": "pass", "rollbackTarget": "warn"}


def test_secret_of_another_org_or_agent_does_not_satisfy(org, editor, api):
    other = f.OrganizationFactory(slug="other")
    f.secret(other, "KEY", "x")
    f.secret(org, "ONLY_BILLING", "y", allowed_agents=["billing"])
    agent, rev = agent_with_revision(org, "support", local_spec(prompt="{{secret.KEY}} {{secret.ONLY_BILLING}} {{input.question}}"),
                                     deploy=False)
    checks = {c["check"]: c for c in api.as_user(editor).get(
        f"/v1/acme/agents/support/readiness?revisionId={rev.id}").json()["checks"]}
    assert checks["secrets"]["status"] == "fail"
    assert checks["secrets"]["data"] == {"missing": ["KEY"], "notAllowed": ["ONLY_BILLING"]}


def test_rollback_default_and_explicit_targets(org, agent_v1_v2, editor, api):
    agent, v1, v2 = agent_v1_v2
    client = api.as_user(editor)
    none_yet = client.post("/v1/acme/agents/support:rollback", {}, format="json")
    assert none_yet.status_code == 409
    _deploy(client, v1.id)
    v3 = create_revision(actor=SYSTEM, agent=agent, spec=local_spec("v3"))
    _deploy(client, v2.id)
    never = client.post("/v1/acme/agents/support:rollback", {"revisionId": v3.id}, format="json")
    assert never.status_code == 409 and never.json()["error"]["code"] == "not_previously_deployed"
    back = client.post("/v1/acme/agents/support:rollback", {"reason": "errors up"}, format="json")
    assert back.status_code == 201 and back.json()["kind"] == "rollback" and back.json()["toRevisionId"] == v1.id
    assert Agent.objects.get(pk=agent.pk).deployed_revision_id == v1.id
    readiness = client.get(f"/v1/acme/agents/support/readiness?revisionId={v1.id}").json()
    target = next(c for c in readiness["checks"] if c["check"] == "rollbackTarget")
    assert target["data"]["revisionId"] == v2.id  # from v1 (deployed by the rollback) the way back is v2


def _runs(agent, revision, n, *, status="ok", latency=100, cost="0.001", at=None):
    at = at or timezone.now()
    Run.objects.bulk_create([
        Run(organization_id=agent.organization_id, agent=agent, revision=revision, status=status, source="api",
            latency_ms=latency, cost_usd=Decimal(cost), created_at=at) for _ in range(n)
    ])


def test_health_verdicts(org, agent_v1_v2, viewer, api):
    agent, v1, v2 = agent_v1_v2
    services.deploy(actor=SYSTEM, agent=agent, revision_id=v1.id)
    _runs(agent, v1, 40, at=timezone.now() - timedelta(minutes=5))
    deployment = services.deploy(actor=SYSTEM, agent=agent, revision_id=v2.id)
    url = f"/v1/acme/agents/support/deployments/{deployment.pk}/health"
    client = api.as_user(viewer)
    assert client.get(url).json()["verdict"] == "insufficient_data"
    _runs(agent, v2, 30)
    body = client.get(url).json()
    assert body["verdict"] == "healthy" and body["current"]["runs"] == 30 and body["baseline"]["runs"] == 40
    _runs(agent, v2, 10, status="error")
    body = client.get(url).json()
    assert body["verdict"] == "degraded" and "error rate" in body["reasons"][0]
    assert body["thresholds"]["minSample"] == 20


def test_auto_rollback_of_a_degraded_deploy(org, agent_v1_v2, editor, api):
    agent, v1, v2 = agent_v1_v2
    services.deploy(actor=SYSTEM, agent=agent, revision_id=v1.id)
    _runs(agent, v1, 30, at=timezone.now() - timedelta(minutes=5))
    services.deploy(actor=SYSTEM, agent=agent, revision_id=v2.id)
    _runs(agent, v2, 30, status="error")
    assert autorollback.rollback_degraded() == []  # no policy yet
    assert api.as_user(editor).put("/v1/acme/agents/support/deploy-policy", {"autoRollback": True},
                                   format="json").json() == {"autoRollback": True}
    rolled = autorollback.rollback_degraded()
    assert len(rolled) == 1
    deployment = Deployment.objects.get(pk=rolled[0])
    assert deployment.kind == "rollback" and deployment.actor_label == "system" and deployment.to_revision_id == v1.id
    assert autorollback.rollback_degraded() == []  # idempotent


def test_scheduled_rollout_applies_once_and_records_failures(org, agent_v1_v2, editor, api):
    agent, v1, v2 = agent_v1_v2
    client = api.as_user(editor)
    past = client.post("/v1/acme/agents/support/scheduled-deployments",
                       {"revisionId": v1.id, "runAt": (timezone.now() - timedelta(minutes=1)).isoformat()}, format="json")
    assert past.status_code == 400
    soon = timezone.now() + timedelta(seconds=30)
    created = client.post("/v1/acme/agents/support/scheduled-deployments",
                          {"revisionId": v1.id, "runAt": soon.isoformat(), "reason": "night window"}, format="json")
    assert created.status_code == 201 and created.json()["status"] == "pending"
    assert scheduling.apply_due() == []  # not due yet
    later = timezone.now() + timedelta(minutes=1)
    assert scheduling.apply_due(now=later) == [created.json()["id"]]
    assert scheduling.apply_due(now=later) == []
    row = client.get(f"/v1/acme/agents/support/scheduled-deployments/{created.json()['id']}").json()
    assert row["status"] == "done" and row["deploymentId"]
    deployment = Deployment.objects.get(pk=row["deploymentId"])
    assert deployment.kind == "scheduled" and deployment.actor_label == "user:eddie"
    # a scheduled deploy that readiness refuses at its moment is recorded as failed, with why
    bad = create_revision(actor=SYSTEM, agent=agent, spec=local_spec(prompt="{{secret.NOPE}} {{input.question}}"))
    failing = scheduling.schedule(actor=SYSTEM, agent=agent, revision_id=bad.id, run_at=soon)
    scheduling.apply_due(now=later)
    failing.refresh_from_db()
    assert failing.status == "failed" and failing.failure_code == "not_ready" and "NOPE" in failing.failure_reason
    assert Agent.objects.get(pk=agent.pk).deployed_revision_id == v1.id
    # cancel
    pending = client.post("/v1/acme/agents/support/scheduled-deployments",
                          {"revisionId": v2.id, "runAt": soon.isoformat()}, format="json").json()
    cancel_url = f"/v1/acme/agents/support/scheduled-deployments/{pending['id']}:cancel"
    assert client.post(cancel_url, {}, format="json").json()["status"] == "cancelled"
    assert client.post(cancel_url, {}, format="json").status_code == 409
    assert scheduling.apply_due(now=later) == []


@pytest.mark.django_db(transaction=True)
def test_two_racing_ticks_apply_a_due_deployment_once():
    org = f.OrganizationFactory(slug="acme")
    agent, v1 = agent_with_revision(org, "support", deploy=False)
    rows = [scheduling.schedule(actor=SYSTEM, agent=agent, revision_id=v1.id,
                                run_at=timezone.now() + timedelta(seconds=1))]
    later = timezone.now() + timedelta(minutes=1)
    barrier = threading.Barrier(2)
    results, errors = [], []

    def tick():
        try:
            barrier.wait()
            results.append(scheduling.apply_due(now=later))
        except OperationalError as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=tick) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and sorted(len(r) for r in results) == [0, 1]
    assert Deployment.objects.filter(agent=agent).count() == 1
    rows[0].refresh_from_db()
    assert rows[0].status == "done"


def test_shadow_mode_runs_candidate_after_live(org, owner, editor, api, django_capture_on_commit_callbacks):
    base_calls = []
    from agents.engine.testing import StubReply, start_json_server

    def crm(request):
        base_calls.append(request.path)
        return StubReply(200, {"ok": True})

    crm_url, crm_server = start_json_server(crm)
    try:
        f.integration(org, "crm", config={"baseUrl": crm_url, "headers": {}}, side_effects=True)
        agent, v1 = agent_with_revision(org, "support", local_spec("live answer"))
        candidate_spec = local_spec("shadow answer")
        candidate_spec["steps"][0]["tools"] = [{"name": "create_ticket", "integration": "crm",
                                                "parameters": {"type": "object"}}]
        candidate_spec["steps"][0]["model"]["script"] = [
            {"reply": "", "toolCalls": [{"name": "create_ticket", "arguments": {"title": "x"}}]},
            {"reply": "shadow answer"},
        ]
        candidate = create_revision(actor=SYSTEM, agent=agent, spec=candidate_spec)
        client = api.as_user(editor)
        put = client.put("/v1/acme/agents/support/shadow", {"revisionId": candidate.id, "sampleRate": 1.0}, format="json")
        assert put.status_code == 200 and client.get("/v1/acme/agents/support").json()["shadow"] == {
            "revisionId": candidate.id, "sampleRate": 1.0}
        with django_capture_on_commit_callbacks(execute=True):
            live = client.post("/v1/acme/agents/support:execute", {"input": {"question": "q"}}, format="json")
        assert live.status_code == 200 and live.json()["output"] == "live answer"
        assert base_calls == []  # the shadow run never called the side-effecting tool
        # a pinned (canary) call is served, so it does call tools; it is not shadowed
        with django_capture_on_commit_callbacks(execute=True):
            client.post("/v1/acme/agents/support:execute", {"input": {"question": "q"}, "revisionId": candidate.id},
                        format="json")
    finally:
        crm_server.close()
    assert base_calls == ["/create_ticket"]  # from the canary only
    result = ShadowResult.objects.get()
    assert result.live_run_id == live.json()["runId"] and result.shadow_run.source == "shadow"
    assert result.shadow_run.output == "shadow answer" and result.outputs_equal is False
    tool_span = result.shadow_run.spans.get(kind="tool")
    assert tool_span.status == "skipped" and "side effects" in tool_span.attributes["skipped"]
    listing = api.as_user(owner).get("/v1/acme/agents/support/shadow/results").json()
    assert listing["summary"]["count"] == 1 and listing["summary"]["agreementRate"] == 0.0
    assert listing["results"][0]["shadowOutput"] == "shadow answer"
    assert client.delete("/v1/acme/agents/support/shadow").status_code == 204
    assert client.get("/v1/acme/agents/support/shadow").status_code == 404


def test_shadow_sampling_rate(org):
    agent, v1 = agent_with_revision(org, "support")
    candidate = create_revision(actor=SYSTEM, agent=agent, spec=local_spec("c"))
    shadow.configure(actor=SYSTEM, agent=agent, revision_id=candidate.id, sample_rate=0.25)
    agent = Agent.objects.select_related("shadow_config").get(pk=agent.pk)
    run = run_once(agent)
    draws = iter([0.1, 0.3, 0.24, 0.9])
    sampled = [shadow.maybe_enqueue(agent=agent, run=run, rng=lambda: next(draws)) for _ in range(4)]
    assert sampled == [True, False, True, False]


def test_shadow_candidate_refusing_the_live_input_is_recorded(org, editor, api, django_capture_on_commit_callbacks):
    agent, v1 = agent_with_revision(org, "support", local_spec("live"))
    other_inputs = local_spec("never runs")
    other_inputs["inputs"] = {"topic": {"type": "string", "required": True}}
    other_inputs["steps"][0]["prompt"] = "{{input.topic}}"
    candidate = create_revision(actor=SYSTEM, agent=agent, spec=other_inputs)
    client = api.as_user(editor)
    client.put("/v1/acme/agents/support/shadow", {"revisionId": candidate.id, "sampleRate": 1.0}, format="json")
    with django_capture_on_commit_callbacks(execute=True):
        assert client.post("/v1/acme/agents/support:execute", {"input": {"question": "q"}},
                           format="json").status_code == 200
    body = client.get("/v1/acme/agents/support/shadow/results").json()
    assert body["summary"]["count"] == 1 and body["summary"]["shadowErrorRate"] == 1.0
    assert body["results"][0]["shadowRunId"] is None and "input" in body["results"][0]["error"]
