"""The admin where people work on agents: agents, revisions, runs (trace view), conversations, prices.

Org "acme" (conftest: owner olivia, editor eddie, viewer vera) and org
"globex-beta" (owner bob-beta) each hold a deployed agent with one run in a
conversation. acme's members must never see a trace of globex-beta; revisions
are immutable for everyone; a viewer reads traces but changes nothing; every
write goes through a service and leaves an AuditEvent; no page shows a secret.
"""
from __future__ import annotations

import json

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from agents import grants
from agents.engine.testing import start_openai_stub
from agents.models import Agent, Revision
from monitoring.models import ModelPrice, Run, Span
from orgs.actor import Actor
from orgs.models import AuditEvent, Membership
from orgs.roles import EDITOR, OWNER, VIEWER

from . import factories as f
from .builders import agent_with_revision, local_spec, run_once, send_secrets

pytestmark = pytest.mark.django_db

SYSTEM = Actor(system=True)
BETA = "globex-beta"
BETA_AGENT = "beta-bot-xyz"
SECRET_VALUE = "value-xyz"


# --- fixtures and helpers ---------------------------------------------------------------------
@pytest.fixture
def acme(org):
    """acme's deployed agent, its revision, and one run in a conversation."""
    agent, revision = agent_with_revision(org, "acme-helper", local_spec("acme says {{input.question}}"))
    run = run_once(agent, "where is my parcel", conversation_key="acme-conv-1")
    return {"agent": agent, "revision": revision, "run": run, "conversation": run.conversation}


@pytest.fixture
def beta(db):
    """Another tenant with the same kinds of rows."""
    org = f.OrganizationFactory(slug=BETA, name="Globex Beta")
    owner = f.member(org, OWNER, "bob-beta-owner")
    agent, revision = agent_with_revision(org, BETA_AGENT, local_spec("beta answer {{input.question}}"))
    run = run_once(agent, "beta question", conversation_key="beta-conv-1")
    return {"org": org, "owner": owner, "agent": agent, "revision": revision, "run": run,
            "conversation": run.conversation}


def login(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def url(app_model: str, view: str, *args) -> str:
    return reverse(f"admin:{app_model.replace('.', '_')}_{view}", args=args)


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


def has_save_button(response) -> bool:
    return b'name="_save"' in response.content


def revision_form(agent, spec, message="tighter prompt") -> dict:
    return {"agent": str(agent.pk), "message": message, "spec": json.dumps(spec)}


# --- isolation -----------------------------------------------------------------------------------
CHANGELISTS = ["agents.agent", "agents.revision", "monitoring.run", "monitoring.conversation"]


@pytest.mark.parametrize("model", CHANGELISTS)
@pytest.mark.parametrize("role", [VIEWER, OWNER])
def test_changelist_shows_own_org_and_never_another(model, role, owner, viewer, acme, beta):
    user = owner if role == OWNER else viewer
    response = login(user).get(url(model, "changelist"))
    assert response.status_code == 200
    assert b"acme-helper" in response.content
    for marker in (BETA_AGENT, BETA, beta["run"].id, beta["revision"].id, "beta-conv-1"):
        assert marker.encode() not in response.content


OBJECTS = [
    ("agents.agent", "agent"),
    ("agents.revision", "revision"),
    ("monitoring.run", "run"),
    ("monitoring.conversation", "conversation"),
]


@pytest.mark.parametrize(("model", "key"), OBJECTS)
@pytest.mark.parametrize("view", ["change", "history", "delete"])
def test_another_orgs_object_url_reveals_nothing(model, key, view, owner, acme, beta):
    """Another org's object answers exactly like an id that does not exist, and shows no data."""
    client = login(owner)
    target, missing = url(model, view, beta[key].pk), url(model, view, "999999")
    for method in ("get", "post"):
        response = getattr(client, method)(target, {"post": "yes", "name": "hijacked"})
        assert response.status_code == getattr(client, method)(missing, {"post": "yes"}).status_code
        assert response.status_code in (302, 403)
        assert BETA_AGENT.encode() not in response.content
    landing = client.get(target, follow=True)  # Django's "<id> doesn't exist" message echoes the URL's id only
    assert BETA_AGENT.encode() not in landing.content and b"beta question" not in landing.content
    assert type(beta[key]).objects.filter(pk=beta[key].pk).exists()
    assert Agent.objects.get(pk=beta["agent"].pk).name == BETA_AGENT


def test_run_filters_offer_only_the_users_agents(viewer, org, acme, beta):
    other, _ = agent_with_revision(org, "acme-second")
    run_once(other, "hello")
    content = login(viewer).get(url("monitoring.run", "changelist")).content
    assert b"agent__id__exact=%d" % acme["agent"].pk in content and b"agent__id__exact=%d" % other.pk in content
    assert b"agent__id__exact=%d" % beta["agent"].pk not in content
    assert b"status__exact=ok" in content and b"source__exact=api" in content


def test_run_search_finds_one_run_by_id_and_never_another_orgs(viewer, acme, beta):
    client = login(viewer)
    second = run_once(acme["agent"], "another one")
    found = client.get(url("monitoring.run", "changelist"), {"q": second.id})
    assert [run.pk for run in found.context["cl"].result_list] == [second.pk]
    assert acme["run"].id.encode() not in found.content
    theirs = client.get(url("monitoring.run", "changelist"), {"q": beta["run"].id})
    assert theirs.status_code == 200 and theirs.context["cl"].result_count == 0
    assert b"beta question" not in theirs.content and BETA_AGENT.encode() not in theirs.content


def test_run_date_hierarchy_drills_down(viewer, acme):
    created = acme["run"].created_at
    response = login(viewer).get(url("monitoring.run", "changelist"),
                                 {"created_at__year": created.year, "created_at__month": created.month})
    assert response.status_code == 200 and acme["run"].id.encode() in response.content


def test_superuser_sees_every_org(acme, beta):
    root = get_user_model().objects.create_superuser("root", "root@example.com", f.PASSWORD)
    content = login(root).get(url("agents.agent", "changelist")).content
    assert b"acme-helper" in content and BETA_AGENT.encode() in content


# --- viewers read, and only read -------------------------------------------------------------------
def test_viewer_reads_the_run_trace(viewer, acme):
    run = acme["run"]
    response = login(viewer).get(url("monitoring.run", "change", run.pk))
    assert response.status_code == 200
    content = response.content.decode()
    spans = list(Span.objects.filter(run=run))
    assert {span.kind for span in spans} == {"step", "llm"}
    for span in spans:
        assert span.name in content
    assert "acme says where is my parcel" in content  # the step's and the llm call's output
    assert "where is my parcel" in content  # the run's input
    assert "fruxon-local / local" in content  # the llm span's model
    step = next(s for s in spans if s.kind == "step")
    llm = next(s for s in spans if s.kind == "llm")
    assert llm.parent_id == step.id
    # The llm call is nested one level under its step.
    assert 'fruxon-span-step" style="margin-left: 0.0em"' in content
    assert 'fruxon-span-llm" style="margin-left: 1.5em"' in content
    assert not has_save_button(response)


def test_trace_nests_a_sub_agents_spans_under_its_call(viewer, org):
    summarizer = {"inputs": {"text": {"type": "string", "required": True}},
                  "steps": [{"name": "summarize", "prompt": "Summarize {{input.text}}",
                             "model": {"provider": "fruxon-local", "name": "local",
                                       "script": [{"reply": "summary of {{input.text}}"}]}}]}
    agent_with_revision(org, "helper", summarizer)
    script = [{"toolCalls": [{"name": "agent__helper", "arguments": {"input": {"text": "long"}}}]},
              {"reply": "Router: done"}]
    router_spec = {"steps": [{"name": "route", "prompt": "route this", "subAgents": [{"agent": "helper"}],
                              "model": {"provider": "fruxon-local", "name": "local", "script": script}}]}
    router, _ = agent_with_revision(org, "router", router_spec)
    run = execute_router(router)
    assert run.status == "ok", run.error
    content = login(viewer).get(url("monitoring.run", "change", run.pk)).content.decode()

    def indent(kind: str, name: str) -> float:
        """The margin-left (em) of the trace block showing span ``kind:name``."""
        assert Span.objects.filter(run=run, kind=kind, name=name).exists()
        marker = f'fruxon-span-{kind}" style="margin-left: '
        start = content.rindex(marker, 0, content.index(f"<strong>{name}</strong>")) + len(marker)
        return float(content[start:content.index("em", start)])

    assert indent("step", "route") == 0.0
    assert indent("subAgent", "helper") == 1.5  # called by the route step
    assert indent("step", "summarize") == 3.0  # runs inside the sub-agent call
    assert "summary of long" in content and "Router: done" in content
    assert content.index("<strong>route</strong>") < content.index("<strong>helper</strong>") \
        < content.index("<strong>summarize</strong>")


def test_run_list_queries_do_not_grow_with_runs(viewer, acme):
    client = login(viewer)

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get(url("monitoring.run", "changelist")).status_code == 200
        return len(captured)

    few = queries()
    for number in range(8):
        run_once(acme["agent"], f"question {number}")
    assert queries() == few


def test_viewer_cannot_add_or_change_anything(viewer, acme):
    client = login(viewer)
    spec = local_spec("viewer wrote this")
    assert client.get(url("agents.revision", "add")).status_code == 403
    assert client.post(url("agents.revision", "add"), revision_form(acme["agent"], spec)).status_code == 403
    assert client.get(url("agents.agent", "add")).status_code == 403
    agent_page = client.get(url("agents.agent", "change", acme["agent"].pk))
    assert agent_page.status_code == 200 and not has_save_button(agent_page)
    assert url("agents.revision", "add").encode() not in agent_page.content
    assert client.post(url("agents.agent", "change", acme["agent"].pk), {"name": "renamed"}).status_code == 403
    revision_page = client.get(url("agents.revision", "change", acme["revision"].pk))
    assert revision_page.status_code == 200 and not has_save_button(revision_page)
    assert client.post(url("agents.agent", "delete", acme["agent"].pk), {"post": "yes"}).status_code == 403
    assert client.post(url("monitoring.run", "delete", acme["run"].pk), {"post": "yes"}).status_code == 403
    assert Revision.objects.filter(agent=acme["agent"]).count() == 1
    assert Agent.objects.get(pk=acme["agent"].pk).name == "acme-helper"
    assert Run.objects.filter(pk=acme["run"].pk).exists()


def test_conversation_page_lists_its_runs_in_order(viewer, acme):
    second = run_once(acme["agent"], "and the second question", conversation_key="acme-conv-1")
    response = login(viewer).get(url("monitoring.conversation", "change", acme["conversation"].pk))
    assert response.status_code == 200 and not has_save_button(response)
    content = response.content.decode()
    first_at, second_at = content.index(acme["run"].id), content.index(second.id)
    assert first_at < second_at
    assert "and the second question" in content
    runs_of_it = login(viewer).get(url("monitoring.run", "changelist"),
                                   {"conversation__id__exact": acme["conversation"].pk})
    assert runs_of_it.status_code == 200 and runs_of_it.context["cl"].result_count == 2
    assert login(viewer).post(url("monitoring.conversation", "delete", acme["conversation"].pk),
                              {"post": "yes"}).status_code == 403


# --- editors cut revisions through the service -------------------------------------------------------
def test_editor_adds_a_revision_through_the_admin_form(editor, acme):
    agent = acme["agent"]
    spec = local_spec("a better answer to {{input.question}}")
    before = Revision.objects.filter(agent=agent).count()
    response = login(editor).post(url("agents.revision", "add"), revision_form(agent, spec, "better answer"))
    assert response.status_code == 302
    revision = Revision.objects.filter(agent=agent).order_by("-created_at", "-id").first()
    assert Revision.objects.filter(agent=agent).count() == before + 1
    assert revision.spec == spec and revision.message == "better answer"
    assert revision.created_by == editor and revision.created_by_label == "user:eddie"
    assert revision.parent_id == acme["revision"].pk
    assert response["Location"] == url("agents.revision", "change", revision.pk)
    event = AuditEvent.objects.get(action="revision.created", target_id=revision.pk)
    assert event.actor_user == editor and event.organization_id == agent.organization_id


def test_invalid_spec_shows_the_json_path_and_creates_nothing(editor, acme):
    agent = acme["agent"]
    spec = local_spec()
    del spec["steps"][0]["model"]
    counts = (Revision.objects.count(), AuditEvent.objects.filter(action="revision.created").count())
    response = login(editor).post(url("agents.revision", "add"), revision_form(agent, spec))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors["spec"]
    assert any(error.startswith("$.steps[0]") for error in errors), errors
    assert "$.steps[0]" in response.content.decode()
    assert (Revision.objects.count(), AuditEvent.objects.filter(action="revision.created").count()) == counts


def test_spec_that_is_not_json_is_a_form_error(editor, acme):
    response = login(editor).post(url("agents.revision", "add"),
                                  {"agent": str(acme["agent"].pk), "message": "", "spec": "{not json"})
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["spec"]
    assert Revision.objects.filter(agent=acme["agent"]).count() == 1


def test_editor_picks_only_agents_where_they_are_editor(editor, org, acme, beta):
    gamma = f.OrganizationFactory(slug="initech-gamma")
    Membership.objects.create(organization=gamma, user=editor, role=VIEWER)
    gamma_agent, _ = agent_with_revision(gamma, "gamma-agent")
    client = login(editor)
    choices = client.get(url("agents.revision", "add")).context["adminform"].form.fields["agent"].queryset
    assert set(choices) == {acme["agent"]}
    for agent in (gamma_agent, beta["agent"]):
        response = client.post(url("agents.revision", "add"), revision_form(agent, local_spec("sneaky")))
        assert response.status_code == 200 and response.context["adminform"].form.errors["agent"]
        assert Revision.objects.filter(agent=agent).count() == 1


def test_add_page_preselects_the_agent_from_its_page(editor, acme):
    client = login(editor)
    agent_page = client.get(url("agents.agent", "change", acme["agent"].pk)).content.decode()
    add_url = url("agents.revision", "add") + f"?agent={acme['agent'].pk}"
    assert add_url in agent_page
    form = client.get(add_url).context["adminform"].form
    assert str(form.initial["agent"]) == str(acme["agent"].pk)


def test_grants_lower_and_raise_the_role_on_one_agent(editor, viewer, org, acme):
    other, _ = agent_with_revision(org, "acme-other")
    grants.set_grant(actor=SYSTEM, agent=acme["agent"], username=editor.username, role=VIEWER)
    grants.set_grant(actor=SYSTEM, agent=other, username=viewer.username, role=EDITOR)
    as_editor, as_viewer = login(editor), login(viewer)

    # The editor is a viewer on acme-helper: read-only there, still an editor elsewhere.
    page = as_editor.get(url("agents.agent", "change", acme["agent"].pk))
    assert page.status_code == 200 and not has_save_button(page)
    assert as_editor.post(url("agents.agent", "change", acme["agent"].pk), {"name": "x"}).status_code == 403
    choices = as_editor.get(url("agents.revision", "add")).context["adminform"].form.fields["agent"].queryset
    assert set(choices) == {other}

    # The viewer is an editor on acme-other only.
    assert has_save_button(as_viewer.get(url("agents.agent", "change", other.pk)))
    choices = as_viewer.get(url("agents.revision", "add")).context["adminform"].form.fields["agent"].queryset
    assert set(choices) == {other}
    response = as_viewer.post(url("agents.revision", "add"), revision_form(other, local_spec("granted")))
    assert response.status_code == 302 and Revision.objects.filter(agent=other).count() == 2


# --- revisions are immutable -------------------------------------------------------------------------
@pytest.mark.parametrize("who", ["owner", "superuser"])
def test_a_revision_cannot_be_changed_or_deleted(who, owner, acme):
    user = owner if who == "owner" else get_user_model().objects.create_superuser("root", "r@example.com", f.PASSWORD)
    client = login(user)
    revision = acme["revision"]
    page = client.get(url("agents.revision", "change", revision.pk))
    assert page.status_code == 200 and not has_save_button(page)
    changed = client.post(url("agents.revision", "change", revision.pk),
                          {"agent": str(acme["agent"].pk), "message": "rewritten", "spec": json.dumps(local_spec("x"))})
    assert changed.status_code == 403
    assert client.get(url("agents.revision", "delete", revision.pk)).status_code == 403
    assert client.post(url("agents.revision", "delete", revision.pk), {"post": "yes"}).status_code == 403
    bulk = client.post(url("agents.revision", "changelist"),
                       {"action": "delete_selected", "_selected_action": [revision.pk], "post": "yes"})
    assert bulk.status_code in (200, 302)
    stored = Revision.objects.get(pk=revision.pk)
    assert stored.message == "first" and stored.spec == revision.spec


def test_revision_page_shows_the_spec_and_the_diff_against_deployed(viewer, acme):
    agent = acme["agent"]
    newer = services_revision(agent, local_spec("acme says {{input.question}}", prompt="Please: {{input.question}}"))
    client = login(viewer)
    content = client.get(url("agents.revision", "change", newer.pk)).content.decode()
    assert '<pre class="fruxon-json">' in content and "&quot;steps&quot;: [" in content
    assert "steps.answer.prompt" in content  # the changes table
    assert "-{{input.question}}" in content and "+Please: {{input.question}}" in content  # the unified prompt diff
    assert acme["revision"].pk in content  # names what it is compared with
    deployed_page = client.get(url("agents.revision", "change", acme["revision"].pk)).content.decode()
    assert "This is the deployed revision." in deployed_page


# --- agents --------------------------------------------------------------------------------------------
def test_agent_page_lists_revisions_newest_first_and_deploys_nowhere(editor, acme):
    newer = services_revision(acme["agent"], local_spec("v2"), message="second cut")
    response = login(editor).get(url("agents.agent", "change", acme["agent"].pk))
    content = response.content.decode()
    assert content.index(newer.pk) < content.index(acme["revision"].pk + "</code>")
    assert "second cut" in content and newer.content_hash[:12] in content
    assert 'class="fruxon-deployed"' in content
    assert url("agents.revision", "change", newer.pk) in content
    assert 'name="deployed_revision"' not in content
    assert "deployed_revision" not in response.context["adminform"].form.fields
    login(editor).post(url("agents.agent", "change", acme["agent"].pk),
                       {"name": "acme-helper", "description": "", "deployed_revision": newer.pk})
    assert Agent.objects.get(pk=acme["agent"].pk).deployed_revision_id == acme["revision"].pk


def test_editor_creates_and_renames_an_agent_through_the_services(editor, org):
    client = login(editor)
    created = client.post(url("agents.agent", "add"),
                          {"organization": str(org.pk), "slug": "fresh-agent", "name": "Fresh", "description": "d"})
    assert created.status_code == 302
    agent = Agent.objects.get(organization=org, slug="fresh-agent")
    assert agent.created_by == editor
    assert AuditEvent.objects.filter(action="agent.created", target_id="fresh-agent", actor_user=editor).exists()
    renamed = client.post(url("agents.agent", "change", agent.pk), {"name": "Fresher", "description": "d"})
    assert renamed.status_code == 302 and Agent.objects.get(pk=agent.pk).name == "Fresher"
    event = AuditEvent.objects.get(action="agent.updated", target_id="fresh-agent")
    assert event.data == {"changed": ["name"]}
    duplicate = client.post(url("agents.agent", "add"), {"organization": str(org.pk), "slug": "fresh-agent"})
    assert duplicate.status_code == 200 and Agent.objects.filter(slug="fresh-agent").count() == 1


def test_editor_cannot_create_an_agent_in_another_org(editor, beta):
    response = login(editor).post(url("agents.agent", "add"),
                                  {"organization": str(beta["org"].pk), "slug": "planted"})
    assert response.status_code == 200 and response.context["adminform"].form.errors["organization"]
    assert not Agent.objects.filter(slug="planted").exists()


def test_deleting_a_deployed_agent_is_refused_with_a_message(editor, acme):
    response = login(editor).post(url("agents.agent", "delete", acme["agent"].pk), {"post": "yes"}, follow=True)
    assert any("is deployed" in message for message in messages_of(response))
    assert Agent.objects.filter(pk=acme["agent"].pk).exists()
    assert not AuditEvent.objects.filter(action="agent.deleted").exists()


def test_editor_deletes_an_undeployed_agent_with_its_history(editor, org):
    agent, _ = agent_with_revision(org, "retired", deploy=False)
    run_once(agent, "one last time", revision_id=Revision.objects.get(agent=agent).pk)
    client = login(editor)
    confirm = client.get(url("agents.agent", "delete", agent.pk))
    assert confirm.status_code == 200 and not confirm.context["perms_lacking"]
    assert dict(confirm.context["model_count"]) == {"agents": 1, "revisions": 1, "runs": 1}
    response = client.post(url("agents.agent", "delete", agent.pk), {"post": "yes"})
    assert response.status_code == 302
    assert not Agent.objects.filter(pk=agent.pk).exists() and not Run.objects.filter(agent_id=agent.pk).exists()
    assert AuditEvent.objects.filter(action="agent.deleted", target_id="retired", actor_user=editor).exists()


# --- runs -------------------------------------------------------------------------------------------------
def test_nobody_adds_or_changes_a_run_and_only_owners_delete(owner, editor, acme):
    run = acme["run"]
    for user in (owner, editor):
        client = login(user)
        assert client.get(url("monitoring.run", "add")).status_code == 403
        assert client.post(url("monitoring.run", "change", run.pk), {"status": "error"}).status_code == 403
    assert login(editor).post(url("monitoring.run", "delete", run.pk), {"post": "yes"}).status_code == 403
    assert Run.objects.get(pk=run.pk).status == "ok"
    response = login(owner).post(url("monitoring.run", "delete", run.pk), {"post": "yes"})
    assert response.status_code == 302
    assert not Run.objects.filter(pk=run.pk).exists() and not Span.objects.filter(run_id=run.pk).exists()
    assert AuditEvent.objects.filter(action="run.deleted", target_id=run.pk, actor_user=owner).exists()


# --- secrets never leak ---------------------------------------------------------------------------------
def test_trace_and_revision_pages_never_show_a_secret_value(viewer, owner, org):
    base_url, stub = start_openai_stub(script=[{"content": "done"}])
    try:
        f.secret(org, "KEY", SECRET_VALUE, allowed_agents=["*"], allowed_hosts=["127.0.0.1"])
        spec = send_secrets(local_spec("done", prompt="Use the key for {{input.question}}"), "KEY", base_url=base_url)
        agent, revision = agent_with_revision(org, "uses-secret", spec)
        run = run_once(agent, "the question")
    finally:
        stub.close()
    assert run.status == "ok"
    assert stub.requests[0].headers["Authorization"] == f"Bearer {SECRET_VALUE}"  # really used
    for user in (viewer, owner):
        client = login(user)
        for page in (url("monitoring.run", "change", run.pk), url("agents.revision", "change", revision.pk),
                     url("monitoring.run", "changelist"), url("agents.agent", "change", agent.pk)):
            content = client.get(page).content.decode()
            assert SECRET_VALUE not in content, page
        trace = client.get(url("monitoring.run", "change", run.pk)).content.decode()
        assert "{{secret.KEY}}" in trace
        assert "{{secret.KEY}}" in client.get(url("agents.revision", "change", revision.pk)).content.decode()


# --- model prices -----------------------------------------------------------------------------------------
def test_builtin_prices_are_read_by_members_and_changed_by_superusers_only(viewer, owner, org):
    builtin = ModelPrice.objects.filter(organization__isnull=True).first()
    assert builtin is not None  # seeded by migration
    listing = login(viewer).get(url("monitoring.modelprice", "changelist"))
    assert listing.status_code == 200 and builtin.model.encode() in listing.content
    page = login(owner).get(url("monitoring.modelprice", "change", builtin.pk))
    assert page.status_code == 200 and not has_save_button(page)
    form = {"provider": builtin.provider, "model": builtin.model, "input_per_million": "999",
            "output_per_million": "999"}
    assert login(owner).post(url("monitoring.modelprice", "change", builtin.pk), form).status_code == 403
    assert login(owner).post(url("monitoring.modelprice", "delete", builtin.pk), {"post": "yes"}).status_code == 403
    assert ModelPrice.objects.get(pk=builtin.pk).input_per_million != 999
    root = get_user_model().objects.create_superuser("root", "r@example.com", f.PASSWORD)
    assert login(root).post(url("monitoring.modelprice", "change", builtin.pk), form).status_code == 302
    assert ModelPrice.objects.get(pk=builtin.pk).input_per_million == 999


def test_owner_overrides_a_price_through_the_service(owner, editor, org, beta):
    form = {"organization": str(org.pk), "provider": "openai", "model": "acme-tuned", "input_per_million": "1.5",
            "output_per_million": "3"}
    assert login(editor).post(url("monitoring.modelprice", "add"), form).status_code == 403
    response = login(owner).post(url("monitoring.modelprice", "add"), form)
    assert response.status_code == 302
    row = ModelPrice.objects.get(organization=org, model="acme-tuned")
    assert str(row.input_per_million) == "1.500000" and row.agent_id is None
    assert AuditEvent.objects.filter(organization=org, action="prices.set", actor_user=owner).exists()
    planted = {**form, "organization": str(beta["org"].pk), "model": "planted"}
    refused = login(owner).post(url("monitoring.modelprice", "add"), planted)
    assert refused.status_code == 200 and not ModelPrice.objects.filter(model="planted").exists()
    ModelPrice.objects.create(organization=beta["org"], provider="openai", model="beta-secret-model",
                              input_per_million=1, output_per_million=1)
    listing = login(owner).get(url("monitoring.modelprice", "changelist")).content
    assert b"acme-tuned" in listing and b"beta-secret-model" not in listing
    negative = login(owner).post(url("monitoring.modelprice", "add"),
                                 {**form, "model": "neg", "input_per_million": "-1"})
    assert negative.status_code == 200 and not ModelPrice.objects.filter(model="neg").exists()


def test_owner_changes_and_bulk_deletes_overrides_through_the_service(owner, org, acme, beta):
    from monitoring import pricing

    rows = [{"provider": "openai", "model": name, "inputPerMillion": "1", "outputPerMillion": "2"}
            for name in ("tuned-a", "tuned-b", "tuned-c")]
    pricing.set_overrides(actor=SYSTEM, organization=org, rows=rows)
    client = login(owner)
    row = ModelPrice.objects.get(organization=org, model="tuned-a")
    changed = client.post(url("monitoring.modelprice", "change", row.pk), {
        "provider": "openai", "model": "tuned-a", "input_per_million": "7", "output_per_million": "2"})
    assert changed.status_code == 302
    assert ModelPrice.objects.get(organization=org, model="tuned-a").input_per_million == 7
    assert AuditEvent.objects.filter(action="prices.set", actor_user=owner).count() == 1

    chosen = list(ModelPrice.objects.filter(organization=org, model__in=["tuned-a", "tuned-b"])
                  .values_list("pk", flat=True))
    bulk = client.post(url("monitoring.modelprice", "changelist"),
                       {"action": "delete_selected", "_selected_action": chosen, "post": "yes"})
    assert bulk.status_code == 302
    assert list(ModelPrice.objects.filter(organization=org).values_list("model", flat=True)) == ["tuned-c"]

    # An agent override must name an agent of the same org.
    form = {"organization": str(org.pk), "agent": str(beta["agent"].pk), "provider": "openai", "model": "x",
            "input_per_million": "1", "output_per_million": "1"}
    refused = client.post(url("monitoring.modelprice", "add"), form)
    assert refused.status_code == 200 and refused.context["adminform"].form.errors["agent"]
    accepted = client.post(url("monitoring.modelprice", "add"), {**form, "agent": str(acme["agent"].pk)})
    assert accepted.status_code == 302
    assert ModelPrice.objects.get(agent=acme["agent"], model="x").organization_id == org.pk


# --- helpers that build through the services --------------------------------------------------------------
def execute_router(agent):
    from agents import execution

    return execution.execute(agent=agent, input={}).run


def services_revision(agent, spec, message="next"):
    from agents import services

    return services.create_revision(actor=SYSTEM, agent=agent, spec=spec, message=message)
