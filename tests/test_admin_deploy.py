"""Shipping from the admin: deploy (confirm page), rollback, schedule, shadow, the deploy history.

Org "acme" (conftest: owner olivia, editor eddie, viewer vera) holds agent "support"
with v1 deployed, v2 ready to ship (a prompt change) and v3 referencing a secret
that does not exist (a blocking readiness failure). Org "globex-beta" holds its own
agent with a deployment, a schedule and a shadow result. Every write must go through
the deployment services (Deployment rows, audit events); viewers see the checklist
but never act; only owners force; another org's pages answer like missing ones.
"""
from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.admin.utils import quote
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from agents import grants
from agents.models import Agent, Revision
from agents.services import create_revision
from deployments import scheduling, services, shadow
from deployments.models import Deployment, ScheduledDeployment, ShadowConfig, ShadowResult
from orgs.models import AuditEvent
from orgs.roles import OWNER

from . import factories as f
from .builders import SYSTEM, agent_with_revision, local_spec, run_once, send_secrets

pytestmark = pytest.mark.django_db

BETA = "globex-beta"
BETA_AGENT = "beta-bot-xyz"
ACTION_BUTTONS = ("Deploy…", "Roll back…", "Schedule…", "Shadow…")


# --- fixtures and helpers -----------------------------------------------------------------------
@pytest.fixture
def ship(org):
    """acme/support: v1 deployed (through the service), v2 a prompt change, v3 needs a missing secret."""
    agent, v1 = agent_with_revision(org, "support", local_spec("v1 says {{input.question}}"), deploy=False)
    services.deploy(actor=SYSTEM, agent=agent, revision_id=v1.id, reason="launch")
    v2 = create_revision(actor=SYSTEM, agent=agent, message="sharper prompt",
                         spec=local_spec("v2 says {{input.question}}", prompt="Answer briefly: {{input.question}}"))
    v3 = create_revision(actor=SYSTEM, agent=agent, message="needs a key",
                         spec=send_secrets(local_spec("v3"), "MISSING_KEY"))
    agent.refresh_from_db()
    return {"agent": agent, "v1": v1, "v2": v2, "v3": v3}


@pytest.fixture
def beta(db):
    """Another tenant: a deployed agent with a second revision, a schedule, a shadow result."""
    org = f.OrganizationFactory(slug=BETA, name="Globex Beta")
    owner = f.member(org, OWNER, "bob-beta-owner")
    agent, v1 = agent_with_revision(org, BETA_AGENT, local_spec("beta v1"), deploy=False)
    deployment = services.deploy(actor=SYSTEM, agent=agent, revision_id=v1.id)
    v2 = create_revision(actor=SYSTEM, agent=agent, spec=local_spec("beta v2"))
    schedule = scheduling.schedule(actor=SYSTEM, agent=agent, revision_id=v2.id,
                                   run_at=timezone.now() + timedelta(days=1), reason="beta later")
    agent.refresh_from_db()
    live = run_once(agent, "beta question")
    result = shadow.run_shadow_for(live.id, v2.id)
    return {"org": org, "owner": owner, "agent": agent, "v1": v1, "v2": v2, "deployment": deployment,
            "schedule": schedule, "result": result}


def login(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def agent_url(agent, view: str = "change") -> str:
    return reverse(f"admin:agents_agent_{view}", args=[agent.pk])


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


def pointer(agent) -> str | None:
    return Agent.objects.get(pk=agent.pk).deployed_revision_id


def future(hours: int = 2) -> str:
    return (timezone.now() + timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M")


def checklist_rows(content: bytes) -> dict[str, str]:
    """``{check: the <tr> HTML}`` of the confirm page's checklist."""
    html = content.decode()
    table = html.split('class="fruxon-table fruxon-checklist"', 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr class=\"fruxon-\w+\">.*?</tr>", table, flags=re.S)
    return {re.search(r"<code>(\w+)</code>", row).group(1): row for row in rows}


# --- viewers: they read, never act -------------------------------------------------------------------
def test_viewer_sees_the_checklist_but_no_button_and_cannot_post(viewer, ship):
    agent, v2 = ship["agent"], ship["v2"]
    shadow.configure(actor=SYSTEM, agent=agent, revision_id=v2.id, sample_rate=0.2)
    client = login(viewer)

    page = client.get(agent_url(agent, "deploy"), {"revision": v2.id})
    assert page.status_code == 200
    rows = checklist_rows(page.content)
    assert list(rows) == ["evaluation", "diff", "integrations", "secrets", "subAgents", "budget", "rollbackTarget"]
    assert b'name="_deploy"' not in page.content and b'name="_force"' not in page.content
    assert b"deploying needs the editor role" in page.content

    for target in (agent_url(agent), reverse("admin:agents_revision_change", args=[v2.id])):
        content = client.get(target).content.decode()
        assert not [label for label in ACTION_BUTTONS if label in content]
        assert "Readiness checklist" in content
    for view in ("rollback", "schedule", "shadow"):
        page = client.get(agent_url(agent, view))
        assert page.status_code == 200 and b'type="submit"' not in page.content.split(b'id="content-main"')[1]

    before = (Deployment.objects.count(), AuditEvent.objects.count())
    posts = [
        ("deploy", {"revision": v2.id, "reason": "x", "_deploy": "Deploy"}),
        ("deploy", {"revision": ship["v3"].id, "reason": "x", "_force": "Force deploy"}),
        ("rollback", {"revision": ship["v1"].id, "reason": "x"}),
        ("schedule", {"revision": v2.id, "run_at": future(), "reason": "x"}),
        ("shadow", {"revision": ship["v3"].id, "sample_rate": "0.5"}),
        ("shadow_off", {}),
    ]
    for view, data in posts:
        assert client.post(agent_url(agent, view), data).status_code == 403, view
    assert (Deployment.objects.count(), AuditEvent.objects.count()) == before
    assert pointer(agent) == ship["v1"].id
    assert not ScheduledDeployment.objects.exists()
    assert ShadowConfig.objects.get(agent=agent).revision_id == v2.id


# --- deploy through the confirm page -----------------------------------------------------------------
def test_editor_deploys_through_the_confirm_page(editor, ship):
    agent, v1, v2 = ship["agent"], ship["v1"], ship["v2"]
    client = login(editor)
    agent_page = client.get(agent_url(agent)).content.decode()
    assert all(label in agent_page for label in ACTION_BUTTONS)
    revision_page = client.get(reverse("admin:agents_revision_change", args=[v2.id])).content.decode()
    assert f'{agent_url(agent, "deploy")}?revision={v2.id}' in revision_page and "Deploy…" in revision_page

    page = client.get(agent_url(agent, "deploy"), {"revision": v2.id})
    assert page.status_code == 200
    rows = checklist_rows(page.content)
    assert 'class="fruxon-pass"' in rows["secrets"] and "blocking" in rows["secrets"]
    assert "blocking" not in rows["budget"] and 'class="fruxon-warn"' in rows["budget"]
    content = page.content.decode()
    assert "steps.answer.prompt" in content  # the changes table
    assert "-{{input.question}}" in content and "+Answer briefly: {{input.question}}" in content  # the prompt diff
    assert 'name="_deploy"' in content and 'name="_force"' not in content

    response = client.post(agent_url(agent, "deploy"), {"revision": v2.id, "reason": "ship it", "_deploy": "Deploy"})
    assert response.status_code == 302 and response["Location"] == agent_url(agent)
    deployment = Deployment.objects.filter(agent=agent).first()
    assert (deployment.from_revision_id, deployment.to_revision_id) == (v1.id, v2.id)
    assert deployment.actor_label == "user:eddie" and deployment.actor_user == editor
    assert deployment.reason == "ship it" and deployment.forced is False and deployment.kind == "deploy"
    assert pointer(agent) == v2.id
    assert AuditEvent.objects.filter(action="agent.deploy", actor_label="user:eddie").count() == 1
    landing = client.get(response["Location"])
    assert any(f"Deployed {v2.id}" in m for m in messages_of(landing))

    again = client.post(agent_url(agent, "deploy"), {"revision": v2.id, "_deploy": "Deploy"})
    assert again.status_code == 200 and any("already deployed" in m for m in messages_of(again))
    assert Deployment.objects.filter(agent=agent).count() == 2


def test_editor_is_refused_force(editor, ship):
    agent = ship["agent"]
    client = login(editor)
    for revision in (ship["v3"], ship["v2"]):  # failing or not, forcing is for owners
        response = client.post(agent_url(agent, "deploy"),
                               {"revision": revision.id, "reason": "trust me", "_force": "Force deploy"})
        assert response.status_code == 403
    assert pointer(agent) == ship["v1"].id and Deployment.objects.filter(agent=agent).count() == 1


def test_a_blocking_check_shows_and_a_plain_post_changes_nothing(editor, owner, ship):
    agent, v3 = ship["agent"], ship["v3"]
    page = login(editor).get(agent_url(agent, "deploy"), {"revision": v3.id})
    rows = checklist_rows(page.content)
    secrets_row = rows["secrets"]
    assert 'class="fruxon-fail"' in secrets_row and "blocking" in secrets_row and "MISSING_KEY" in secrets_row
    assert b"1 blocking check fails" in page.content
    assert b'name="_deploy"' not in page.content and b'name="_force"' not in page.content
    assert b"ask an owner of the organization to force" in page.content

    for user in (editor, owner):
        response = login(user).post(agent_url(agent, "deploy"),
                                    {"revision": v3.id, "reason": "go", "_deploy": "Deploy"})
        assert response.status_code == 200
        assert any(m.startswith("Not ready to deploy") and "MISSING_KEY" in m for m in messages_of(response))
    assert pointer(agent) == ship["v1"].id
    assert Deployment.objects.filter(agent=agent).count() == 1


def test_owner_forces_with_a_required_reason(owner, ship):
    agent, v1, v3 = ship["agent"], ship["v1"], ship["v3"]
    client = login(owner)
    page = client.get(agent_url(agent, "deploy"), {"revision": v3.id})
    assert b'name="_force"' in page.content and b"Force deploy" in page.content
    assert b'name="_deploy"' not in page.content

    no_reason = client.post(agent_url(agent, "deploy"), {"revision": v3.id, "reason": "  ", "_force": "Force deploy"})
    assert no_reason.status_code == 200 and b"A forced deploy needs a reason." in no_reason.content
    assert pointer(agent) == v1.id

    response = client.post(agent_url(agent, "deploy"),
                           {"revision": v3.id, "reason": "hotfix, key lands in 5 min", "_force": "Force deploy"})
    assert response.status_code == 302
    deployment = Deployment.objects.filter(agent=agent).first()
    assert deployment.to_revision_id == v3.id and deployment.forced is True
    assert deployment.actor_label == "user:olivia" and deployment.reason == "hotfix, key lands in 5 min"
    assert [c["status"] for c in deployment.checks if c["check"] == "secrets"] == ["fail"]
    assert pointer(agent) == v3.id
    assert AuditEvent.objects.get(action="agent.deploy", actor_label="user:olivia").data["forced"] is True


def test_grants_raise_and_lower_the_role_on_one_agent(org, viewer, editor, ship):
    agent, v2 = ship["agent"], ship["v2"]
    grants.set_grant(actor=SYSTEM, agent=agent, username=viewer.username, role="admin")
    grants.set_grant(actor=SYSTEM, agent=agent, username=editor.username, role="viewer")

    lowered = login(editor)
    page = lowered.get(agent_url(agent)).content.decode()
    assert not [label for label in ACTION_BUTTONS if label in page]
    assert lowered.post(agent_url(agent, "deploy"), {"revision": v2.id, "_deploy": "Deploy"}).status_code == 403

    raised = login(viewer)
    assert raised.post(agent_url(agent, "deploy"), {"revision": ship["v3"].id, "reason": "x",
                                                    "_force": "Force deploy"}).status_code == 403  # admin < owner
    response = raised.post(agent_url(agent, "deploy"), {"revision": v2.id, "reason": "granted", "_deploy": "Deploy"})
    assert response.status_code == 302 and pointer(agent) == v2.id
    assert Deployment.objects.filter(agent=agent).first().actor_label == "user:vera"


def test_ids_that_look_quoted_resolve_raw_and_quoted(monkeypatch, editor, ship):
    """The admin unquotes "_26" to "&": a revision "rev_26..." must still open, by either link."""
    monkeypatch.setattr(Revision._meta.get_field("id"), "_get_default", lambda: "rev_26ab2fcd3e")
    tricky = create_revision(actor=SYSTEM, agent=ship["agent"], spec=local_spec("tricky"), message="tricky id")
    assert tricky.id == "rev_26ab2fcd3e"
    client = login(editor)
    for target in (reverse("admin:agents_revision_change", args=[tricky.id]),
                   reverse("admin:agents_revision_change", args=[quote(tricky.id)])):
        page = client.get(target)
        assert page.status_code == 200 and b"tricky id" in page.content, target
    deploy_page = client.get(agent_url(ship["agent"], "deploy"), {"revision": tricky.id}).content.decode()
    assert f'href="/admin/agents/revision/{tricky.id}/change/"' in deploy_page
    response = client.post(agent_url(ship["agent"], "deploy"), {"revision": tricky.id, "_deploy": "Deploy"})
    assert response.status_code == 302 and pointer(ship["agent"]) == tricky.id


# --- rollback -----------------------------------------------------------------------------------------
def test_rollback_through_its_confirm_page(editor, ship):
    agent, v1, v2 = ship["agent"], ship["v1"], ship["v2"]
    client = login(editor)
    first = client.get(agent_url(agent, "rollback"))
    assert b"nothing to roll back to" in first.content and b'name="_rollback"' not in first.content

    services.deploy(actor=SYSTEM, agent=agent, revision_id=v2.id)
    agent.refresh_from_db()
    page = client.get(agent_url(agent, "rollback"))
    content = page.content.decode()
    assert page.status_code == 200 and 'name="_rollback"' in content
    target = content.split("<h2>Target</h2>", 1)[1].split("</p>", 1)[0]
    assert f">{v1.id}</a>" in target and f">{v2.id}</a>" in target and "the revision deployed before it" in target

    response = client.post(agent_url(agent, "rollback"), {"revision": v1.id, "reason": "v2 answers badly"})
    assert response.status_code == 302
    deployment = Deployment.objects.filter(agent=agent).first()
    assert deployment.kind == "rollback" and (deployment.from_revision_id, deployment.to_revision_id) == (v2.id, v1.id)
    assert deployment.actor_label == "user:eddie" and deployment.reason == "v2 answers badly"
    assert pointer(agent) == v1.id
    assert AuditEvent.objects.filter(action="agent.rollback").count() == 1
    # a revision that never ran in production is not offered, and posting it changes nothing
    refused = client.post(agent_url(agent, "rollback"), {"revision": ship["v3"].id, "reason": "x"})
    assert refused.status_code == 200 and pointer(agent) == v1.id


# --- schedule and cancel -------------------------------------------------------------------------------
def test_schedule_then_cancel_by_action_and_by_button(editor, viewer, ship):
    agent, v2, v3 = ship["agent"], ship["v2"], ship["v3"]
    client = login(editor)
    assert client.get(agent_url(agent, "schedule")).status_code == 200
    response = client.post(agent_url(agent, "schedule"),
                           {"revision": v2.id, "run_at": future(2), "reason": "quiet hour"})
    assert response.status_code == 302
    first = ScheduledDeployment.objects.get(agent=agent)
    assert (first.revision_id, first.status, first.created_by_label, first.reason) == (v2.id, "pending", "user:eddie",
                                                                                       "quiet hour")
    assert AuditEvent.objects.filter(action="deployment.scheduled").count() == 1

    past = client.post(agent_url(agent, "schedule"), {"revision": v2.id, "run_at": "2001-01-01T10:00", "reason": ""})
    assert past.status_code == 200 and any("future" in m for m in messages_of(past))
    assert ScheduledDeployment.objects.count() == 1

    client.post(agent_url(agent, "schedule"), {"revision": v2.id, "run_at": future(3), "reason": "second"})
    second = ScheduledDeployment.objects.exclude(pk=first.pk).get()
    overview = client.get(agent_url(agent)).content.decode()
    assert "quiet hour" in overview and "second" in overview

    # viewers see the list, are offered no action and cannot cancel
    vera = login(viewer)
    listing = vera.get(reverse("admin:deployments_scheduleddeployment_changelist"))
    assert listing.status_code == 200 and b"cancel_selected" not in listing.content
    vera.post(reverse("admin:deployments_scheduleddeployment_changelist"),
              {"action": "cancel_selected", "_selected_action": [first.pk]})
    assert vera.post(reverse("admin:deployments_scheduleddeployment_cancel", args=[first.pk])).status_code == 403
    assert b"Cancel this scheduled deploy" not in vera.get(
        reverse("admin:deployments_scheduleddeployment_change", args=[first.pk])).content
    assert ScheduledDeployment.objects.filter(status="pending").count() == 2

    action = client.post(reverse("admin:deployments_scheduleddeployment_changelist"),
                         {"action": "cancel_selected", "_selected_action": [first.pk]})
    assert action.status_code == 302
    first.refresh_from_db()
    assert first.status == "cancelled" and first.finished_at is not None

    detail = client.get(reverse("admin:deployments_scheduleddeployment_change", args=[second.pk]))
    assert b"Cancel this scheduled deploy" in detail.content
    button = client.post(reverse("admin:deployments_scheduleddeployment_cancel", args=[second.pk]),
                         {"next": agent_url(agent, "schedule")})
    assert button.status_code == 302 and button["Location"] == agent_url(agent, "schedule")
    second.refresh_from_db()
    assert second.status == "cancelled"
    assert AuditEvent.objects.filter(action="deployment.schedule_cancelled").count() == 2

    again = client.post(reverse("admin:deployments_scheduleddeployment_cancel", args=[second.pk]), follow=True)
    assert any("only pending ones can be cancelled" in m for m in messages_of(again))

    # a schedule that fails at its time shows why in the list
    scheduling.schedule(actor=SYSTEM, agent=agent, revision_id=v3.id, run_at=timezone.now() + timedelta(minutes=5))
    scheduling.apply_due(now=timezone.now() + timedelta(minutes=10))
    failed = client.get(reverse("admin:deployments_scheduleddeployment_changelist"), {"status__exact": "failed"})
    assert b"not_ready" in failed.content and b"MISSING_KEY" in failed.content


# --- shadow ----------------------------------------------------------------------------------------
def test_shadow_configure_summary_results_and_off(editor, viewer, ship):
    agent, v1, v2 = ship["agent"], ship["v1"], ship["v2"]
    client = login(editor)
    page = client.get(agent_url(agent, "shadow"))
    assert page.status_code == 200 and b"Shadow mode is <strong>off</strong>" in page.content
    assert f'value="{v1.id}"'.encode() not in page.content  # the deployed revision is no candidate

    response = client.post(agent_url(agent, "shadow"), {"revision": v2.id, "sample_rate": "0.5"})
    assert response.status_code == 302
    config = ShadowConfig.objects.get(agent=agent)
    assert (config.revision_id, config.sample_rate, config.updated_by_label) == (v2.id, 0.5, "user:eddie")
    assert AuditEvent.objects.filter(action="shadow.configured").count() == 1
    bad = client.post(agent_url(agent, "shadow"), {"revision": v2.id, "sample_rate": "1.5"})
    assert bad.status_code == 200 and ShadowConfig.objects.get(agent=agent).sample_rate == 0.5

    live = run_once(agent, "parcel")
    result = shadow.run_shadow_for(live.id, v2.id)
    assert result is not None and result.outputs_equal is False

    overview = login(viewer).get(agent_url(agent)).content.decode()
    summary = overview.split("fruxon-shadow-summary", 1)[1].split("</table>", 1)[0]
    assert "<td>1</td>" in summary and "0%" in summary  # one compared run, no agreement

    listing = login(viewer).get(reverse("admin:deployments_shadowresult_changelist"))
    assert b"v1 says parcel" in listing.content and b"v2 says parcel" in listing.content
    detail = login(viewer).get(reverse("admin:deployments_shadowresult_change", args=[result.pk])).content.decode()
    pair = detail.split("fruxon-shadow-pair", 1)[1].split("</table>", 1)[0]
    assert pair.index("v1 says parcel") < pair.index("v2 says parcel")
    assert ShadowResult.objects.count() == 1

    off = client.post(agent_url(agent, "shadow_off"))
    assert off.status_code == 302 and not ShadowConfig.objects.filter(agent=agent).exists()
    assert AuditEvent.objects.filter(action="shadow.disabled", actor_label="user:eddie").count() == 1
    twice = client.post(agent_url(agent, "shadow_off"), follow=True)
    assert any("not on" in m for m in messages_of(twice))
    assert client.get(agent_url(agent, "shadow_off")).status_code == 405


# --- the deploy history -----------------------------------------------------------------------------
def test_history_lists_deploys_and_shows_health(viewer, editor, ship):
    agent, v2 = ship["agent"], ship["v2"]
    first = Deployment.objects.get(agent=agent)
    for i in range(20):
        run_once(agent, f"q{i}")
    login(editor).post(agent_url(agent, "deploy"), {"revision": v2.id, "reason": "second deploy", "_deploy": "Deploy"})

    client = login(viewer)
    listing = client.get(reverse("admin:deployments_deployment_changelist"))
    content = listing.content.decode()
    assert listing.status_code == 200
    assert "second deploy" in content and "launch" in content and "user:eddie" in content
    assert v2.id in content and ship["v1"].id in content

    healthy = client.get(reverse("admin:deployments_deployment_change", args=[first.pk]))
    assert healthy.status_code == 200
    assert b'fruxon-verdict-healthy">healthy' in healthy.content
    assert b"Readiness at deploy time" in healthy.content and b"rollbackTarget" in healthy.content
    latest = Deployment.objects.filter(agent=agent).first()
    fresh = client.get(reverse("admin:deployments_deployment_change", args=[latest.pk]))
    assert b"insufficient_data" in fresh.content and b"0 run(s) since the deploy" in fresh.content
    assert b'name="_save"' not in fresh.content


# --- tenancy ------------------------------------------------------------------------------------
def test_another_orgs_pages_answer_like_missing_ones(owner, ship, beta):
    client = login(owner)
    agent = beta["agent"]

    def pair(name: str, pk) -> tuple[str, str]:
        """Another org's object URL and the same URL for an id that does not exist."""
        return reverse(name, args=[pk]), reverse(name, args=[987654])

    targets = [pair(f"admin:agents_agent_{view}", agent.pk)
               for view in ("deploy", "rollback", "schedule", "shadow", "shadow_off")]
    targets += [
        pair("admin:deployments_deployment_change", beta["deployment"].pk),
        pair("admin:deployments_scheduleddeployment_change", beta["schedule"].pk),
        pair("admin:deployments_scheduleddeployment_cancel", beta["schedule"].pk),
        pair("admin:deployments_shadowresult_change", beta["result"].pk),
    ]
    bodies = {"revision": beta["v2"].id, "reason": "hijack", "run_at": future(), "sample_rate": "1",
              "_deploy": "Deploy", "_force": "Force deploy"}
    for target, missing in targets:
        for method in ("get", "post"):
            response = getattr(client, method)(target, bodies)
            assert response.status_code == getattr(client, method)(missing, bodies).status_code, (target, method)
            # a redirect to the index ("doesn't exist"), or the 403 Django gives any POST to a read-only page
            assert response.status_code in (302, 403, 404), (target, method, response.status_code)
            if response.status_code == 302:
                assert response["Location"] == reverse("admin:index")
            assert BETA_AGENT.encode() not in response.content
        landing = client.get(target, follow=True).content
        assert BETA_AGENT.encode() not in landing and b"beta v2" not in landing
    for listing in ("deployment", "scheduleddeployment", "shadowresult", "shadowconfig"):
        content = client.get(reverse(f"admin:deployments_{listing}_changelist")).content
        assert BETA_AGENT.encode() not in content and b"beta later" not in content
    assert pointer(agent) == beta["v1"].id
    assert ScheduledDeployment.objects.get(pk=beta["schedule"].pk).status == "pending"
    assert Deployment.objects.filter(agent=agent).count() == 1
    assert not ShadowConfig.objects.filter(agent=agent).exists()
    # a beta revision posted to acme's own agent is no revision of it
    mixed = client.post(agent_url(ship["agent"], "deploy"), {"revision": beta["v2"].id, "_deploy": "Deploy"})
    assert mixed.status_code == 200 and pointer(ship["agent"]) == ship["v1"].id
    assert any("is not a revision of support" in m for m in messages_of(mixed))
