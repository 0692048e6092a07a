"""Deploy, rollback, readiness, history, health, schedules, shadow, auto-rollback."""
from __future__ import annotations

import threading
import time
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.utils import timezone

from agents import services as agent_services
from agents.grants import remove_grant, set_grant
from agents.models import Agent
from agents.services import create_revision
from deployments import autorollback, scheduling, services, shadow
from deployments.models import Deployment, ScheduledDeployment, ShadowResult
from deployments.tasks import run_shadow
from evaluations.services import datasets
from monitoring import budgets
from monitoring.models import Alert, Budget, Run
from monitoring.pricing import set_overrides
from orgs.models import AuditEvent, Integration, Membership
from orgs.services.api_keys import revoke_key

from . import factories as f
from .builders import SYSTEM, agent_with_revision, local_spec, run_once, send_secrets


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
    # schedules and the shadow configuration are editor-only, reads included (API.md); results are not
    ed = api.as_user(editor)
    row = scheduling.schedule(actor=SYSTEM, agent=agent, revision_id=v2.id, run_at=timezone.now() + timedelta(hours=1))
    shadow.configure(actor=SYSTEM, agent=agent, revision_id=v2.id, sample_rate=0.5)
    editor_reads = ["/v1/acme/agents/support/scheduled-deployments",
                    f"/v1/acme/agents/support/scheduled-deployments/{row.pk}", "/v1/acme/agents/support/shadow"]
    for url in editor_reads:
        denied = vera.get(url)
        assert denied.status_code == 403 and denied.json()["error"]["details"]["requiredRole"] == "editor", url
        assert ed.get(url).status_code == 200, url
    assert vera.get("/v1/acme/agents/support/shadow/results").status_code == 200
    assert vera.get("/v1/acme/agents/support/deployments").status_code == 200
    _, reader = f.api_key(org, scopes=["revisions:read"])
    _, runner = f.api_key(org, scopes=["agents:execute"])
    for url in editor_reads:
        assert api.as_key(reader).get(url).status_code == 200, url
        assert api.as_key(runner).get(url).status_code == 403, url
    # an editor may deploy but not force
    forced = _deploy(api.as_user(editor), v2.id, force=True, reason="YOLO")
    assert forced.status_code == 403 and Agent.objects.get(pk=agent.pk).deployed_revision_id == v1.id
    # nor may an API key, even with the deploy scope
    _, key = f.api_key(org, scopes=["revisions:deploy"])
    assert _deploy(api.as_key(key), v2.id, force=True, reason="ci").status_code == 403
    assert _deploy(api.as_key(key), v2.id).status_code == 201


def test_blocking_checks_refuse_deploy_and_owner_can_force(org, owner_client, editor, api):
    spec = send_secrets(local_spec(), "MISSING_KEY")
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
    f.secret(org, "MISSING_KEY", "v", allowed_agents=["support"], allowed_hosts=["api.openai.com"])
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
    f.secret(org, "ONLY_BILLING", "y", allowed_agents=["billing"], allowed_hosts=["api.openai.com"])
    agent, rev = agent_with_revision(org, "support", send_secrets(local_spec(), "KEY", "ONLY_BILLING"), deploy=False)
    checks = {c["check"]: c for c in api.as_user(editor).get(
        f"/v1/acme/agents/support/readiness?revisionId={rev.id}").json()["checks"]}
    assert checks["secrets"]["status"] == "fail"
    data = checks["secrets"]["data"]
    assert (data["missing"], data["notAllowed"], data["hostNotAllowed"]) == (["KEY"], ["ONLY_BILLING"], [])


def _checks(client, revision_id):
    body = client.get(f"/v1/acme/agents/support/readiness?revisionId={revision_id}").json()
    return {c["check"]: c for c in body["checks"]}


def test_readiness_diff_summarises_changes_and_warns_on_no_change(org, agent_v1_v2, editor, api):
    agent, v1, v2 = agent_v1_v2
    client = api.as_user(editor)
    first = _checks(client, v1.id)["diff"]
    assert first["status"] == "pass" and first["detail"].startswith("First deploy")
    services.deploy(actor=SYSTEM, agent=agent, revision_id=v1.id)
    changed = _checks(client, v2.id)["diff"]
    assert changed["status"] == "pass"
    assert changed["detail"] == f"1 change(s) against {v1.id}: steps changed: answer; models changed in: answer"
    assert changed["data"]["againstRevisionId"] == v1.id and changed["data"]["summary"]["changeCount"] == 1
    same = create_revision(actor=SYSTEM, agent=agent, spec=local_spec("v1"), message="same spec, new revision")
    assert same.content_hash == v1.content_hash and same.id != v1.id
    unchanged = _checks(client, same.id)["diff"]
    assert unchanged["status"] == "warn" and "No changes against the deployed revision" in unchanged["detail"]
    assert unchanged["data"] == {"againstRevisionId": v1.id, "contentHash": v1.content_hash}
    # a warning, not a blocker
    assert _deploy(client, same.id).status_code == 201


def test_readiness_budget_none_alerts_only_and_hard_cap(org, agent_v1_v2, editor, api):
    agent, v1, _ = agent_v1_v2
    client = api.as_user(editor)
    assert _checks(client, v1.id)["budget"]["status"] == "warn"
    budget = Budget.objects.create(organization=org, agent=agent, period="month", amount_usd=Decimal("20"), enforce=False)
    alerts_only = _checks(client, v1.id)["budget"]
    assert alerts_only["status"] == "warn" and alerts_only["detail"].startswith("Alerts only")
    assert alerts_only["data"] == {"amountUsd": "20.0000", "period": "month", "enforce": False}
    Budget.objects.filter(pk=budget.pk).update(enforce=True)
    capped = _checks(client, v1.id)["budget"]
    assert capped["status"] == "pass" and capped["detail"] == "Hard cap $20.0000/month."


def test_readiness_integrations_must_exist_here_and_be_usable(org, editor, api):
    other = f.OrganizationFactory(slug="other")
    f.integration(other, "elsewhere", status="connected")  # the same slug in ANOTHER org does not count
    spec = local_spec()
    spec["steps"][0]["tools"] = [
        {"name": "lookup", "integration": "crm", "parameters": {"type": "object"}},
        {"name": "find", "integration": "elsewhere", "parameters": {"type": "object"}},
        {"name": "ghost", "integration": "ghost", "parameters": {"type": "object"}},
    ]
    agent, rev = agent_with_revision(org, "support", spec, deploy=False)
    f.integration(org, "crm", status="connected")
    client = api.as_user(editor)
    item = _checks(client, rev.id)["integrations"]
    assert item["status"] == "fail"
    assert item["data"] == {"missing": ["elsewhere", "ghost"], "unusable": {}}
    assert "elsewhere does not exist in this organization" in item["detail"]
    refused = _deploy(client, rev.id)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "not_ready"
    f.integration(org, "elsewhere", status="authorized")
    f.integration(org, "ghost", status="disconnected")
    assert _checks(client, rev.id)["integrations"]["data"] == {"missing": [], "unusable": {"ghost": "disconnected"}}
    Integration.objects.filter(organization=org, slug="ghost").update(status="connected")
    item = _checks(client, rev.id)["integrations"]
    assert item["status"] == "pass" and item["detail"] == "All connected or authorized: crm, elsewhere, ghost."
    assert _deploy(client, rev.id).status_code == 201


def test_readiness_sub_agents_pinned_to_a_real_revision_or_deployed(org, editor, api):
    helper, helper_v1 = agent_with_revision(org, "helper", deploy=False)
    other_agent, other_rev = agent_with_revision(org, "other-agent", deploy=False)
    client = api.as_user(editor)

    def sub_agents_item(sub_agents):
        spec = local_spec()
        spec["steps"][0]["subAgents"] = sub_agents
        support = Agent.objects.filter(organization=org, slug="support").first()
        if support is None:
            support, rev = agent_with_revision(org, "support", spec, deploy=False)
        else:
            rev = create_revision(actor=SYSTEM, agent=support, spec=spec)
        return _checks(client, rev.id)["subAgents"]

    # unpinned and not deployed
    item = sub_agents_item([{"agent": "helper"}])
    assert item["status"] == "fail" and item["detail"] == "helper is neither pinned nor deployed"
    # pinned to a revision that does not exist, or that is another agent's
    item = sub_agents_item([{"agent": "helper", "revisionId": "rev_doesnotexist"}])
    assert item["status"] == "fail"
    assert item["detail"] == "helper is pinned to rev_doesnotexist, which is not one of its revisions"
    item = sub_agents_item([{"agent": "helper", "revisionId": other_rev.id}])
    assert item["status"] == "fail" and "not one of its revisions" in item["detail"]
    # a sub-agent that does not exist at all
    assert sub_agents_item([{"agent": "nobody"}])["status"] == "fail"
    # pinned to an existing revision of its own: pass (even though it is not deployed)
    item = sub_agents_item([{"agent": "helper", "revisionId": helper_v1.id}])
    assert item["status"] == "pass" and item["detail"] == f"helper pinned to {helper_v1.id}"
    # unpinned but deployed: pass
    services.deploy(actor=SYSTEM, agent=helper, revision_id=helper_v1.id)
    item = sub_agents_item([{"agent": "helper"}])
    assert item["status"] == "pass" and item["detail"] == f"helper deployed ({helper_v1.id})"


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
    # another agent's revision in this org, even one that agent deployed: not this agent's history
    billing, b1 = agent_with_revision(org, "billing", deploy=False)
    services.deploy(actor=SYSTEM, agent=billing, revision_id=b1.id)
    foreign = client.post("/v1/acme/agents/support:rollback", {"revisionId": b1.id}, format="json")
    assert foreign.status_code == 409 and foreign.json()["error"]["code"] == "not_previously_deployed"
    # another org's revision (deployed there) and an unknown id: resolved in this org only, 404, no leak
    other = f.OrganizationFactory(slug="other")
    elsewhere, e1 = agent_with_revision(other, "support", deploy=False)
    services.deploy(actor=SYSTEM, agent=elsewhere, revision_id=e1.id)
    for unknown in (e1.id, "rev_unknown"):
        response = client.post("/v1/acme/agents/support:rollback", {"revisionId": unknown}, format="json")
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
        assert unknown not in response.json()["error"].get("details", {}).values()
    assert Agent.objects.get(pk=agent.pk).deployed_revision_id == v2.id
    assert Agent.objects.get(pk=elsewhere.pk).deployed_revision_id == e1.id
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
                                   format="json").json() == {"autoRollback": True, "alertWebhook": "", "alertEmails": []}
    rolled = autorollback.rollback_degraded()
    assert len(rolled) == 1
    deployment = Deployment.objects.get(pk=rolled[0])
    assert deployment.kind == "rollback" and deployment.actor_label == "system" and deployment.to_revision_id == v1.id
    assert autorollback.rollback_degraded() == []  # idempotent
    assert not Alert.objects.exists()  # no alert channel set: nothing to alert


@pytest.mark.parametrize("auto_rollback", [True, False])
def test_a_degraded_deploy_raises_an_alert(org, agent_v1_v2, editor, api, auto_rollback,
                                           django_capture_on_commit_callbacks):
    """Issue 14 item 2: a degraded deploy alerts the deploy policy's webhook and emails, once per deployment."""
    from django.core import mail

    from agents.engine.testing import StubReply, start_json_server

    from .standard_webhooks import verify

    agent, v1, v2 = agent_v1_v2
    services.deploy(actor=SYSTEM, agent=agent, revision_id=v1.id)
    _runs(agent, v1, 30, at=timezone.now() - timedelta(minutes=5))
    degraded = services.deploy(actor=SYSTEM, agent=agent, revision_id=v2.id)
    _runs(agent, v2, 30, status="error")
    url, receiver = start_json_server(lambda request: StubReply(204, b""))
    with receiver:
        put = api.as_user(editor).put("/v1/acme/agents/support/deploy-policy", {
            "autoRollback": auto_rollback, "alertWebhook": f"{url}/hook", "alertEmails": ["oncall@example.com"]},
            format="json")
        assert put.status_code == 200 and put.json()["alertWebhook"] == f"{url}/hook"
        for _ in range(2):  # the beat task runs every minute: one alert per degraded deployment
            with django_capture_on_commit_callbacks(execute=True):
                autorollback.rollback_degraded()
    assert len(receiver.requests) == 1 and len(mail.outbox) == 1
    org.refresh_from_db()
    event = verify(org.webhook_secret, receiver.requests[0].headers, receiver.requests[0].raw)
    assert event["type"] == "deployment.degraded"
    assert event["data"]["deploymentId"] == degraded.pk and event["data"]["revisionId"] == v2.id
    assert event["data"]["rolledBack"] is auto_rollback and "error rate" in event["data"]["reasons"][0]
    alert = Alert.objects.get(kind="deployment.degraded")
    assert sorted(alert.deliveries.values_list("channel", "status")) == [("email", "delivered"),
                                                                         ("webhook", "delivered")]
    assert Agent.objects.get(pk=agent.pk).deployed_revision_id == (v1.id if auto_rollback else v2.id)


def test_a_deploy_policy_webhook_must_pass_the_egress_policy(org, agent_v1_v2, editor, api):
    response = api.as_user(editor).put("/v1/acme/agents/support/deploy-policy", {
        "autoRollback": False, "alertWebhook": "http://169.254.169.254/latest"}, format="json")
    assert response.status_code == 400 and response.json()["error"]["code"] == "egress_denied"


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
    bad = create_revision(actor=SYSTEM, agent=agent, spec=send_secrets(local_spec(), "NOPE"))
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


def test_an_unexpected_error_fails_its_row_rolls_it_back_and_the_tick_goes_on(org, agent_v1_v2, editor, api,
                                                                               monkeypatch):
    agent, v1, v2 = agent_v1_v2
    services.deploy(actor=SYSTEM, agent=agent, revision_id=v1.id)
    billing, b1 = agent_with_revision(org, "billing", deploy=False)
    soon = timezone.now() + timedelta(seconds=30)
    broken = scheduling.schedule(actor=SYSTEM, agent=agent, revision_id=v2.id, run_at=soon)
    fine = scheduling.schedule(actor=SYSTEM, agent=billing, revision_id=b1.id, run_at=soon + timedelta(seconds=1))
    real_deploy = services.deploy

    def deploy_then_crash(**kwargs):
        deployment = real_deploy(**kwargs)  # the pointer moved, a Deployment row and an audit event written...
        if kwargs["agent"].slug == "support":  # ...then something unforeseen breaks
            raise RuntimeError("disk on fire near postgres://fruxon:hunter2@db/fruxon\nmore detail")
        return deployment

    monkeypatch.setattr(services, "deploy", deploy_then_crash)
    later = timezone.now() + timedelta(minutes=1)
    assert scheduling.apply_due(now=later) == [broken.pk, fine.pk]
    body = api.as_user(editor).get(f"/v1/acme/agents/support/scheduled-deployments/{broken.pk}").json()
    assert body["status"] == "failed" and body["failureCode"] == "internal_error" and body["deploymentId"] is None
    assert body["failureReason"] == "RuntimeError: disk on fire near postgres://[redacted]@db/fruxon"
    # its partial work is gone: pointer, history and audit as before
    assert Agent.objects.get(pk=agent.pk).deployed_revision_id == v1.id
    assert list(Deployment.objects.filter(agent=agent).values_list("to_revision_id", flat=True)) == [v1.id]
    assert not AuditEvent.objects.filter(action="agent.scheduled", target_id="support").exists()
    # and the row after it was applied by the same tick
    fine.refresh_from_db()
    assert fine.status == "done" and Agent.objects.get(pk=billing.pk).deployed_revision_id == b1.id
    assert scheduling.apply_due(now=later) == []


def test_a_schedule_deploys_as_its_creator_rechecked_when_it_runs(org, agent_v1_v2, editor, api):
    agent, v1, v2 = agent_v1_v2
    soon = (timezone.now() + timedelta(seconds=30)).isoformat()
    later = timezone.now() + timedelta(minutes=1)
    url = "/v1/acme/agents/support/scheduled-deployments"
    # an API key's schedule runs as that key, not as "system"
    key, plaintext = f.api_key(org, scopes=["revisions:deploy", "revisions:read"])
    created = api.as_key(plaintext).post(url, {"revisionId": v1.id, "runAt": soon}, format="json").json()
    assert created["createdBy"] == f"key:{key.prefix}"
    assert scheduling.apply_due(now=later) == [created["id"]]
    deployment = Deployment.objects.get(agent=agent)
    assert deployment.kind == "scheduled" and deployment.actor_label == f"key:{key.prefix}"
    assert AuditEvent.objects.get(action="agent.scheduled").actor_label == f"key:{key.prefix}"
    # a creator who lost the editor role by then: failed, nothing deployed
    by_eddie = api.as_user(editor).post(url, {"revisionId": v2.id, "runAt": soon}, format="json").json()
    Membership.objects.filter(organization=org, user=editor).update(role="viewer")
    scheduling.apply_due(now=later)
    row = ScheduledDeployment.objects.get(pk=by_eddie["id"])
    assert row.status == "failed" and row.failure_code == "creator_not_allowed"
    assert row.failure_reason.startswith("creator no longer allowed: user:eddie is viewer on agent 'support'")
    assert Agent.objects.get(pk=agent.pk).deployed_revision_id == v1.id
    # a key revoked (or one that lost the scope) by then: failed too
    by_key = api.as_key(plaintext).post(url, {"revisionId": v2.id, "runAt": soon}, format="json").json()
    revoke_key(actor=SYSTEM, organization=org, key_id=key.pk)
    scheduling.apply_due(now=later)
    row = ScheduledDeployment.objects.get(pk=by_key["id"])
    assert row.status == "failed" and row.failure_reason.startswith("creator no longer allowed: key:")
    assert Deployment.objects.filter(agent=agent).count() == 1
    # a creator promoted back in time may deploy; a per-agent grant counts like the role it gives
    Membership.objects.filter(organization=org, user=editor).update(role="editor")
    set_grant(actor=SYSTEM, agent=agent, username="eddie", role="viewer")
    again = api.as_user(editor).post(url, {"revisionId": v2.id, "runAt": soon}, format="json")
    assert again.status_code == 403  # the grant lowers eddie to viewer on this agent
    remove_grant(actor=SYSTEM, agent=agent, username="eddie")
    again = api.as_user(editor).post(url, {"revisionId": v2.id, "runAt": soon}, format="json").json()
    set_grant(actor=SYSTEM, agent=agent, username="eddie", role="viewer")
    scheduling.apply_due(now=later)
    assert ScheduledDeployment.objects.get(pk=again["id"]).failure_code == "creator_not_allowed"
    remove_grant(actor=SYSTEM, agent=agent, username="eddie")
    last = api.as_user(editor).post(url, {"revisionId": v2.id, "runAt": soon}, format="json").json()
    scheduling.apply_due(now=later)
    assert ScheduledDeployment.objects.get(pk=last["id"]).status == "done"
    assert Deployment.objects.filter(agent=agent).latest("at").actor_label == "user:eddie"


@pytest.mark.django_db(transaction=True)
def test_two_racing_ticks_apply_a_due_deployment_once(monkeypatch):
    """The first tick is held inside its transaction (claim taken, deploy not done); a second tick
    meanwhile finds no work at once (skip_locked, never waiting on the lock); then the first finishes."""
    assert connection.vendor == "postgresql", "the race is about PostgreSQL row locks"
    org = f.OrganizationFactory(slug="acme")
    agent, v1 = agent_with_revision(org, "support", deploy=False)
    row = scheduling.schedule(actor=SYSTEM, agent=agent, revision_id=v1.id, run_at=timezone.now() + timedelta(seconds=1))
    later = timezone.now() + timedelta(minutes=1)
    real_deploy = services.deploy
    inside, release = threading.Event(), threading.Event()
    calls = []

    def held_deploy(**kwargs):
        calls.append(threading.current_thread().name)
        inside.set()
        assert release.wait(30), "never released"
        return real_deploy(**kwargs)

    monkeypatch.setattr(services, "deploy", held_deploy)
    results: dict[str, list] = {}
    errors = []

    def tick(name):
        try:
            results[name] = scheduling.apply_due(now=later)
        except Exception as exc:  # surfaced by the asserts below
            errors.append(exc)
        finally:
            connection.close()

    first = threading.Thread(target=tick, args=("first",), name="first")
    first.start()
    try:
        assert inside.wait(20), "the first tick never reached the deploy"
        second = threading.Thread(target=tick, args=("second",), name="second")
        started = time.monotonic()
        second.start()
        second.join(timeout=10)
        assert not second.is_alive(), "the second tick blocked on the first one's lock"
        assert time.monotonic() - started < 5
        assert results["second"] == [] and not errors
        assert not Deployment.objects.exists()  # the first one has not committed yet
    finally:
        release.set()
        first.join(timeout=30)
    assert not errors and results["first"] == [row.pk] and calls == ["first"]
    assert Deployment.objects.filter(agent=agent).count() == 1
    row.refresh_from_db()
    assert row.status == "done" and row.deployment_id == Deployment.objects.get().pk
    assert scheduling.apply_due(now=later) == []


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


def _priced(org, agent):
    """Every fruxon-local call of ``agent`` costs something (1 cent per 1,000 tokens)."""
    set_overrides(actor=SYSTEM, organization=org, agent=agent, rows=[{
        "provider": "fruxon-local", "model": "*", "inputPerMillion": Decimal("10000"),
        "outputPerMillion": Decimal("10000")}])


def _spent(agent) -> Decimal:
    return Decimal(budgets.status(Budget.objects.get(agent=agent))["spentUsd"])


def test_shadow_runs_count_against_the_budget_and_run_once_per_live_run(org):
    agent, v1 = agent_with_revision(org, "support", local_spec("live answer with some words", latency_ms=5))
    candidate = create_revision(actor=SYSTEM, agent=agent, spec=local_spec("a longer shadow answer with more words"))
    _priced(org, agent)
    budgets.put_budget(actor=SYSTEM, agent=agent, period="month", amount_usd=Decimal("50"), enforce=True,
                       alert_thresholds=[], alert_webhook="", alert_emails=[])
    agent = Agent.objects.select_related("budget").get(pk=agent.pk)
    live = run_once(agent)
    assert live.cost_usd > 0 and _spent(agent) == live.cost_usd
    result = run_shadow.apply(args=[live.id, candidate.id]).get()
    shadow_run = ShadowResult.objects.get(pk=result).shadow_run
    assert shadow_run.source == "shadow" and shadow_run.cost_usd > 0
    assert _spent(agent) == live.cost_usd + shadow_run.cost_usd
    # a redelivered task (acks_late) for the same live run: nothing runs, nothing is charged
    assert run_shadow.apply(args=[live.id, candidate.id]).get() is None
    assert Run.objects.filter(source="shadow").count() == 1 and ShadowResult.objects.count() == 1
    assert _spent(agent) == live.cost_usd + shadow_run.cost_usd


@pytest.mark.django_db(transaction=True)
def test_a_duplicate_shadow_task_while_the_first_runs_does_not_run_the_candidate_again():
    """Two deliveries of one shadow task overlap: the second finds the first's claim and returns."""
    from agents.engine.testing import StubReply, start_json_server

    arrived, release = threading.Event(), threading.Event()
    hits = []

    def lookup(request):  # a read-only tool: shadow runs do call it; the first call waits for the test
        hits.append(request.path)
        if len(hits) == 1:
            arrived.set()
            release.wait(20)
        return StubReply(200, {"found": True})

    url, server = start_json_server(lookup)
    org = f.OrganizationFactory(slug="acme")
    try:
        f.integration(org, "catalog", config={"baseUrl": url, "headers": {}})
        agent, v1 = agent_with_revision(org, "support", local_spec("live"))
        spec = local_spec("shadow")
        spec["steps"][0]["tools"] = [{"name": "lookup", "integration": "catalog", "parameters": {"type": "object"}}]
        spec["steps"][0]["model"]["script"] = [{"reply": "", "toolCalls": [{"name": "lookup", "arguments": {}}]},
                                               {"reply": "shadow"}]
        candidate = create_revision(actor=SYSTEM, agent=agent, spec=spec)
        _priced(org, agent)
        budgets.put_budget(actor=SYSTEM, agent=agent, period="month", amount_usd=Decimal("50"), enforce=False,
                           alert_thresholds=[], alert_webhook="", alert_emails=[])
        live = run_once(Agent.objects.get(pk=agent.pk))
        outcomes = {}

        def deliver(name):
            try:
                outcomes[name] = run_shadow.apply(args=[live.id, candidate.id]).get()
            finally:
                connection.close()

        first = threading.Thread(target=deliver, args=("first",))
        first.start()
        try:
            assert arrived.wait(20), "the first delivery never reached the candidate's tool call"
            second = threading.Thread(target=deliver, args=("second",))
            second.start()
            second.join(timeout=15)
            assert not second.is_alive() and outcomes["second"] is None
        finally:
            release.set()
            first.join(timeout=30)
    finally:
        server.close()
    assert outcomes["first"] is not None and hits == ["/lookup"]
    assert Run.objects.filter(source="shadow").count() == 1 and ShadowResult.objects.count() == 1
    shadow_run = Run.objects.get(source="shadow")
    assert ShadowResult.objects.get().shadow_run_id == shadow_run.id and shadow_run.output == "shadow"
    assert _spent(agent) == live.cost_usd + shadow_run.cost_usd


def test_shadow_agreement_scored_by_the_gating_metrics(org, editor, viewer, api, django_capture_on_commit_callbacks):
    agent, v1 = agent_with_revision(org, "support", local_spec("the parcel ships {{input.question}}"))
    candidate = create_revision(actor=SYSTEM, agent=agent, spec=local_spec("Sure: The parcel ships MONDAY."))
    dataset = datasets.create_dataset(actor=SYSTEM, organization=org, slug="golden", pass_threshold=0.9, metrics=[
        {"type": "contains"}, {"type": "latencyCeiling", "maxMs": 60000}])
    agent_services.update_agent(actor=SYSTEM, agent=agent, changes={"gating_dataset": dataset})
    client = api.as_user(editor)
    client.put("/v1/acme/agents/support/shadow", {"revisionId": candidate.id, "sampleRate": 1.0}, format="json")
    for question in ("monday", "friday"):
        with django_capture_on_commit_callbacks(execute=True):
            assert client.post("/v1/acme/agents/support:execute", {"input": {"question": question}},
                               format="json").status_code == 200
    body = api.as_user(viewer).get("/v1/acme/agents/support/shadow/results").json()
    friday, monday = body["results"]  # newest first
    assert monday["liveOutput"] == "the parcel ships monday" and monday["outputsEqual"] is False
    assert [(m["type"], m["score"], m["passed"]) for m in monday["metrics"]] == [
        ("contains", 1.0, True), ("latencyCeiling", 1.0, True)]
    assert monday["agreement"] == 1.0 and monday["agreed"] is True and monday["agreementBasis"] == "metrics"
    assert [(m["type"], m["score"], m["passed"]) for m in friday["metrics"]] == [
        ("contains", 0.0, False), ("latencyCeiling", 1.0, True)]
    assert friday["agreement"] == 0.5 and friday["agreed"] is False
    summary = body["summary"]
    assert summary["count"] == 2 and summary["agreementRate"] == 0.5 and summary["outputsEqualRate"] == 0.0
    assert summary["metricScored"] == 2 and summary["meanAgreement"] == 0.75
    assert summary["metrics"] == [
        {"metric": "contains", "type": "contains", "count": 2, "meanScore": 0.5, "passRate": 0.5},
        {"metric": "latencyCeiling", "type": "latencyCeiling", "count": 2, "meanScore": 1.0, "passRate": 1.0}]
    # without gating metrics, agreement is output equality
    agent_services.update_agent(actor=SYSTEM, agent=agent, changes={"gating_dataset": None})
    with django_capture_on_commit_callbacks(execute=True):
        client.post("/v1/acme/agents/support:execute", {"input": {"question": "x"}}, format="json")
    newest = api.as_user(viewer).get("/v1/acme/agents/support/shadow/results").json()["results"][0]
    assert newest["metrics"] == [] and newest["agreement"] is None and newest["agreementBasis"] == "outputsEqual"
    assert newest["agreed"] is False


def test_shadow_results_shape_is_in_the_openapi_schema(api, owner_client):
    schema = api.anonymous().get("/v1/schema", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    document = schema.json() if schema["Content-Type"].endswith("json") else __import__("yaml").safe_load(schema.content)
    components = document["components"]["schemas"]
    result = components["ShadowResult"]["properties"]
    assert {"metrics", "agreement", "agreed", "agreementBasis", "outputsEqual", "similarity"} <= set(result)
    assert components["ShadowMetricScore"]["properties"].keys() >= {"type", "score", "passed"}
    path = next(v for p, v in document["paths"].items() if p.endswith("/shadow/results"))
    ref = path["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    page = components[ref.rsplit("/", 1)[1]]["properties"]
    assert {"results", "summary", "next"} <= set(page)
    summary_ref = page["summary"].get("$ref") or page["summary"]["allOf"][0]["$ref"]
    summary = components[summary_ref.rsplit("/", 1)[1]]["properties"]
    assert {"agreementRate", "meanAgreement", "metrics", "outputsEqualRate"} <= set(summary)
