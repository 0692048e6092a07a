"""The admin for evaluations (datasets, cases, evaluation runs) and budgets.

Org "acme" (conftest: owner olivia, editor eddie, viewer vera) holds agent "support"
with v1 deployed and v2 that answers case "beta" wrongly, and a golden dataset of
three cases (one critical). An evaluation's page must show, for every case, the
expected output next to the actual one, failed cases highlighted, each metric's
score with its reason. Budgets show their live spent and reserved amounts from the
ledger. Every write goes through a service; viewers change nothing; another org's
pages answer like missing ones.
"""
from __future__ import annotations

import json
import re
from decimal import Decimal

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from agents import grants
from agents.models import Agent
from agents.services import create_revision
from deployments import services as deploys
from evaluations.models import Case, Dataset, EvaluationRun
from evaluations.services import datasets, runs
from monitoring.budgets import put_budget
from monitoring.ledger import BudgetState, ledger, to_units
from monitoring.models import Budget
from orgs.models import AuditEvent
from orgs.roles import OWNER

from . import factories as f
from .builders import SYSTEM, agent_with_revision

pytestmark = pytest.mark.django_db

BETA = "globex-beta"


def spec_replying(template: str) -> dict:
    return {
        "inputs": {"question": {"type": "string", "required": True}, "v2": {"type": "string"}},
        "steps": [{"name": "answer", "prompt": "{{input.question}}",
                   "model": {"provider": "fruxon-local", "name": "local", "script": [{"reply": template}]}}],
        "output": "{{steps.answer.output}}",
    }


CASES = [
    {"input": {"question": "alpha", "v2": "alpha"}, "expected": "alpha", "critical": False, "tags": ["smoke"]},
    {"input": {"question": "beta", "v2": "WRONG-ANSWER"}, "expected": "beta", "critical": True},
    {"input": {"question": "gamma", "v2": "gamma"}, "expected": "gamma", "critical": False},
]


# --- fixtures and helpers -----------------------------------------------------------------------
@pytest.fixture
def commits(django_capture_on_commit_callbacks):
    """Evaluations go to (eager) Celery on commit; tests run inside a transaction, so run the hooks."""
    return lambda: django_capture_on_commit_callbacks(execute=True)


@pytest.fixture
def world(org):
    agent, v1 = agent_with_revision(org, "support", spec_replying("{{input.question}}"), deploy=False)
    deploys.deploy(actor=SYSTEM, agent=agent, revision_id=v1.id)
    v2 = create_revision(actor=SYSTEM, agent=agent, spec=spec_replying("{{input.v2}}"), message="breaks beta")
    golden = datasets.create_dataset(actor=SYSTEM, organization=org, slug="golden", metrics=[{"type": "exact"}])
    datasets.add_cases_bulk(actor=SYSTEM, dataset=golden, cases=CASES)
    agent.refresh_from_db()
    return {"agent": agent, "v1": v1, "v2": v2, "golden": golden}


@pytest.fixture
def beta(db, commits):
    org = f.OrganizationFactory(slug=BETA, name="Globex Beta")
    owner = f.member(org, OWNER, "bob-beta-owner")
    agent, v1 = agent_with_revision(org, "beta-bot-xyz", spec_replying("{{input.question}}"))
    dataset = datasets.create_dataset(actor=SYSTEM, organization=org, slug="beta-golden")
    case = datasets.add_case(actor=SYSTEM, dataset=dataset, input={"question": "beta-secret-question"},
                             expected="beta-secret-question")
    with commits():
        evaluation = runs.start(actor=SYSTEM, agent=agent, revision_id=v1.id, dataset=dataset)
    budget, _ = put_budget(actor=SYSTEM, agent=agent, period="month", amount_usd=Decimal("77"), enforce=True,
                           alert_thresholds=[], alert_webhook="", alert_emails=[])
    return {"org": org, "owner": owner, "agent": agent, "v1": v1, "dataset": dataset, "case": case,
            "evaluation": evaluation, "budget": budget}


def login(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def url(name: str, *args) -> str:
    """An admin URL with raw ids, as the pages link them (``eval_26...`` resolves although unquoting sees ``&``)."""
    return reverse(f"admin:{name}", args=args)


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


def evaluate(world, revision, commits) -> EvaluationRun:
    with commits():
        evaluation = runs.start(actor=SYSTEM, agent=world["agent"], revision_id=revision.id, dataset=world["golden"])
    evaluation.refresh_from_db()
    assert evaluation.status == "completed"
    return evaluation


def case_rows(content: bytes) -> dict[int, str]:
    """``{case id: its <tr> HTML}`` of an evaluation page's results table."""
    html = content.decode()
    table = html.split('class="fruxon-table fruxon-case-results"', 1)[1].split("</table>", 1)[0]
    rows = re.findall(r'<tr class="fruxon-case [^"]*" id="case-(\d+)">(.*?)</tr>', table, flags=re.S)
    return {int(pk): row for pk, row in rows}


def cell(row: str, css: str) -> str:
    return re.search(rf'<td class="{css}"><pre>(.*?)</pre></td>', row, flags=re.S).group(1)


# --- the evaluation page ------------------------------------------------------------------------------
def test_evaluation_page_shows_expected_against_actual_for_each_case(viewer, world, commits):
    evaluate(world, world["v1"], commits)  # the deployed baseline
    evaluation = evaluate(world, world["v2"], commits)
    response = login(viewer).get(url("evaluations_evaluationrun_change", evaluation.pk))
    assert response.status_code == 200
    rows = case_rows(response.content)
    cases = list(Case.objects.filter(dataset=world["golden"]).order_by("id"))
    assert sorted(rows) == [c.pk for c in cases]
    actual_of = {"alpha": "alpha", "beta": "WRONG-ANSWER", "gamma": "gamma"}
    for case in cases:
        row = rows[case.pk]
        assert cell(row, "fruxon-expected") == case.expected
        assert cell(row, "fruxon-actual") == actual_of[case.expected]
        assert row.index("fruxon-expected") < row.index("fruxon-actual")  # side by side, expected first
        assert "<code>exact</code>" in row
    failing = rows[cases[1].pk]
    assert 'class="fruxon-case fruxon-fail"' in response.content.decode()
    assert "FAILED" in failing and "critical" in failing and "differs from the expected" in failing
    assert "the output equals the expected text" in rows[cases[0].pk] and "passed" in rows[cases[0].pk]
    assert "smoke" in rows[cases[0].pk]
    content = response.content.decode()
    assert "1 failed" in content
    assert "Overall score <strong>0.6667</strong>" in content and "pass rate <strong>66.7%</strong>" in content
    assert 'fruxon-verdict-fail">fail' in content and "critical case(s) regressed" in content
    assert 'name="_save"' not in content


def test_evaluation_list_and_start_form(viewer, editor, world, commits):
    vera, eddie = login(viewer), login(editor)
    assert b"Start an evaluation" not in vera.get(url("evaluations_evaluationrun_changelist")).content
    assert b"Start an evaluation" in eddie.get(url("evaluations_evaluationrun_changelist")).content
    assert vera.get(url("evaluations_evaluationrun_start")).status_code == 403
    form_data = {"revision": world["v2"].id, "dataset": world["golden"].pk}
    assert vera.post(url("evaluations_evaluationrun_start"), form_data).status_code == 403
    revision_page = eddie.get(url("agents_revision_change", world["v2"].id)).content.decode()
    assert f'{url("evaluations_evaluationrun_start")}?revision={world["v2"].id}' in revision_page

    page = eddie.get(url("evaluations_evaluationrun_start"), {"revision": world["v2"].id})
    assert page.status_code == 200 and f'value="{world["v2"].id}" selected'.encode() in page.content
    with commits():
        response = eddie.post(url("evaluations_evaluationrun_start"), form_data)
    assert response.status_code == 302
    evaluation = EvaluationRun.objects.get()
    assert response["Location"] == url("evaluations_evaluationrun_change", evaluation.pk)
    assert (evaluation.trigger, evaluation.created_by_label, evaluation.revision_id) == ("admin", "user:eddie",
                                                                                        world["v2"].id)
    evaluation.refresh_from_db()
    assert evaluation.status == "completed" and evaluation.total == 3
    assert AuditEvent.objects.filter(action="evaluation.started", actor_label="user:eddie").count() == 1
    listing = vera.get(url("evaluations_evaluationrun_changelist")).content.decode()
    assert evaluation.id in listing and "3/3" in listing

    # a grant lowering the editor to viewer on this agent takes the revision off the form
    grants.set_grant(actor=SYSTEM, agent=world["agent"], username=editor.username, role="viewer")
    refused = login(editor).post(url("evaluations_evaluationrun_start"), form_data)
    assert refused.status_code == 200 and refused.context["form"].errors["revision"]
    assert EvaluationRun.objects.count() == 1


def test_cancel_action_for_editors_only(viewer, editor, world, commits):
    evaluate(world, world["v1"], commits)  # a completed baseline of the deployed revision
    queued = runs.start(actor=SYSTEM, agent=world["agent"], revision_id=world["v2"].id, dataset=world["golden"])
    action = {"action": "cancel_selected", "_selected_action": [queued.pk]}
    vera = login(viewer)
    page = vera.get(url("evaluations_evaluationrun_change", queued.pk)).content.decode()
    assert "0/3" in page and "Aggregates appear when the evaluation completes (queued)" in page
    assert 'fruxon-verdict-pending">pending' in page and f"{queued.pk} is queued" in page and "3 still to run" in page
    assert b"cancel_selected" not in vera.get(url("evaluations_evaluationrun_changelist")).content
    vera.post(url("evaluations_evaluationrun_changelist"), action)
    assert EvaluationRun.objects.get(pk=queued.pk).status == "queued"

    response = login(editor).post(url("evaluations_evaluationrun_changelist"), action, follow=True)
    assert EvaluationRun.objects.get(pk=queued.pk).status == "cancelled"
    assert any("Cancelled 1 evaluation" in m for m in messages_of(response))
    assert AuditEvent.objects.filter(action="evaluation.cancelled", actor_label="user:eddie").count() == 1
    again = login(editor).post(url("evaluations_evaluationrun_changelist"), action, follow=True)
    assert any("only queued or running ones can be cancelled" in m for m in messages_of(again))


# --- datasets and cases ---------------------------------------------------------------------------
def test_datasets_viewers_read_editors_write_through_the_service(org, viewer, editor, world):
    golden = world["golden"]
    vera = login(viewer)
    page = vera.get(url("evaluations_dataset_change", golden.pk))
    assert page.status_code == 200 and b'name="_save"' not in page.content
    assert b"WRONG-ANSWER" in page.content  # the cases table
    assert vera.post(url("evaluations_dataset_change", golden.pk), {"name": "renamed"}).status_code == 403
    assert vera.post(url("evaluations_dataset_add"), {"organization": org.pk, "slug": "x"}).status_code == 403

    eddie = login(editor)
    base = {"organization": org.pk, "slug": "regressions", "name": "Regressions", "description": "",
            "pass_threshold": "0.8"}
    bad = eddie.post(url("evaluations_dataset_add"),
                     {**base, "metrics": json.dumps([{"type": "regex", "pattern": "("}])})
    assert bad.status_code == 200 and "metrics[0]" in " ".join(bad.context["adminform"].form.errors["metrics"])
    unknown = eddie.post(url("evaluations_dataset_add"), {**base, "metrics": json.dumps([{"type": "vibes"}])})
    assert unknown.status_code == 200 and unknown.context["adminform"].form.errors["metrics"]
    assert not Dataset.objects.filter(slug="regressions").exists()

    created = eddie.post(url("evaluations_dataset_add"),
                         {**base, "metrics": json.dumps([{"type": "contains", "values": ["refund"]}])})
    assert created.status_code == 302
    dataset = Dataset.objects.get(organization=org, slug="regressions")
    assert dataset.metrics == [{"type": "contains", "values": ["refund"]}] and dataset.pass_threshold == 0.8
    assert AuditEvent.objects.filter(action="dataset.created", actor_label="user:eddie").count() == 1

    change = {"name": "Regressions v2", "description": "from incidents", "pass_threshold": "0.8"}
    refused = eddie.post(url("evaluations_dataset_change", dataset.pk), {**change, "metrics": "[{\"type\": 1}]"})
    assert refused.status_code == 200 and refused.context["adminform"].form.errors["metrics"]
    changed = eddie.post(url("evaluations_dataset_change", dataset.pk),
                         {**change, "metrics": json.dumps([{"type": "exact"}])})
    assert changed.status_code == 302
    dataset.refresh_from_db()
    assert dataset.name == "Regressions v2" and dataset.metrics == [{"type": "exact"}]
    assert AuditEvent.objects.filter(action="dataset.updated").count() == 1

    # cases: JSON input and expected, critical, tags
    add = eddie.post(url("evaluations_case_add"), {"dataset": dataset.pk, "input": '{"question": "refund?"}',
                                                  "expected": '"refund"', "critical": "on", "tags": "billing, urgent"})
    assert add.status_code == 302
    case = Case.objects.get(dataset=dataset)
    assert (case.input, case.expected, case.critical, case.tags) == ({"question": "refund?"}, "refund", True,
                                                                    ["billing", "urgent"])
    not_object = eddie.post(url("evaluations_case_add"), {"dataset": dataset.pk, "input": '["a"]', "expected": ""})
    assert not_object.status_code == 200 and not_object.context["adminform"].form.errors["input"]
    edit = eddie.post(url("evaluations_case_change", case.pk), {"input": '{"question": "refund now?"}',
                                                               "expected": '{"answer": "refund"}', "tags": ""})
    assert edit.status_code == 302
    case.refresh_from_db()
    assert case.input == {"question": "refund now?"} and case.expected == {"answer": "refund"}
    assert case.critical is False
    assert vera.post(url("evaluations_case_change", case.pk), {"input": "{}"}).status_code == 403

    # a dataset gating an agent's deploys is refused deletion by the service, shown as a message
    Agent.objects.filter(pk=world["agent"].pk).update(gating_dataset=golden)
    response = eddie.post(url("evaluations_dataset_delete", golden.pk), {"post": "yes"}, follow=True)
    assert any("gates deploys of support" in m for m in messages_of(response))
    assert Dataset.objects.filter(pk=golden.pk).exists()
    gone = eddie.post(url("evaluations_dataset_delete", dataset.pk), {"post": "yes"})
    assert gone.status_code == 302 and not Dataset.objects.filter(pk=dataset.pk).exists()
    assert AuditEvent.objects.filter(action="dataset.deleted").count() == 1


# --- budgets ------------------------------------------------------------------------------------------
def test_budget_pages_show_spent_and_reserved_and_owners_change_them(org, owner, editor, viewer, world):
    agent = world["agent"]
    olivia = login(owner)
    form = {"agent": agent.pk, "period": "month", "amount_usd": "10", "enforce": "on",
            "alert_thresholds": "0.5, 0.8, 1", "alert_webhook": "", "alert_emails": "ops@example.com"}
    assert login(editor).post(url("monitoring_budget_add"), form).status_code == 403
    bad = olivia.post(url("monitoring_budget_add"), {**form, "alert_thresholds": "0.5, lots"})
    assert bad.status_code == 200 and bad.context["adminform"].form.errors["alert_thresholds"]
    created = olivia.post(url("monitoring_budget_add"), form)
    assert created.status_code == 302
    budget = Budget.objects.get(agent=agent)
    assert (budget.amount_usd, budget.enforce, budget.alert_thresholds, budget.alert_emails) == (
        Decimal("10"), True, [0.5, 0.8, 1.0], ["ops@example.com"])
    assert AuditEvent.objects.filter(action="budget.set", actor_label="user:olivia").count() == 1

    state = BudgetState.of(budget, timezone.now())
    ledger().open_period(state)
    ledger().set_spent(state, to_units(Decimal("2.5")))
    assert ledger().reserve(state, to_units(Decimal("1.25"))) is not None

    vera = login(viewer)
    listing = vera.get(url("monitoring_budget_changelist")).content.decode()
    assert "$2.50000000" in listing and "$1.25000000" in listing and "25.00%" in listing
    page = vera.get(url("monitoring_budget_change", budget.pk))
    content = page.content.decode()
    assert page.status_code == 200 and 'name="_save"' not in content
    assert "Spent (USD)" in content and "$2.50000000" in content
    assert "Reserved (USD)" in content and "$1.25000000" in content
    assert "25.00%" in content and "Resets at" in content
    assert vera.post(url("monitoring_budget_change", budget.pk), {**form, "amount_usd": "999"}).status_code == 403
    eddie = login(editor)
    assert eddie.post(url("monitoring_budget_change", budget.pk), {**form, "amount_usd": "999"}).status_code == 403

    changed = olivia.post(url("monitoring_budget_change", budget.pk),
                          {**form, "amount_usd": "5", "enforce": "", "alert_thresholds": "0.9"})
    assert changed.status_code == 302
    budget.refresh_from_db()
    assert (budget.amount_usd, budget.enforce, budget.alert_thresholds) == (Decimal("5"), False, [0.9])
    assert "50.00%" in vera.get(url("monitoring_budget_change", budget.pk)).content.decode()

    gone = olivia.post(url("monitoring_budget_delete", budget.pk), {"post": "yes"})
    assert gone.status_code == 302 and not Budget.objects.filter(agent=agent).exists()
    assert AuditEvent.objects.filter(action="budget.deleted", actor_label="user:olivia").count() == 1


# --- tenancy ------------------------------------------------------------------------------------
def test_another_orgs_evaluation_pages_answer_like_missing_ones(owner, world, beta, commits):
    client = login(owner)
    pairs = [
        ("evaluations_evaluationrun_change", beta["evaluation"].pk, "eval_missing0"),
        ("evaluations_dataset_change", beta["dataset"].pk, 987654),
        ("evaluations_case_change", beta["case"].pk, 987654),
        ("monitoring_budget_change", beta["budget"].pk, 987654),
        ("monitoring_budget_delete", beta["budget"].pk, 987654),
        ("evaluations_dataset_delete", beta["dataset"].pk, 987654),
    ]
    for name, theirs, missing in pairs:
        for method in ("get", "post"):
            response = getattr(client, method)(url(name, theirs), {"post": "yes", "name": "hijacked"})
            assert response.status_code == getattr(client, method)(url(name, missing), {"post": "yes"}).status_code
            assert response.status_code in (302, 403), (name, method)
            assert b"beta-secret-question" not in response.content
        landing = client.get(url(name, theirs), follow=True).content
        assert b"beta-secret-question" not in landing and b"beta-bot-xyz" not in landing
    for listing in ("evaluations_evaluationrun_changelist", "evaluations_dataset_changelist",
                    "evaluations_case_changelist", "monitoring_budget_changelist"):
        content = client.get(url(listing)).content
        assert b"beta-golden" not in content and b"beta-bot-xyz" not in content and b"beta-secret" not in content
    # their revision or dataset cannot be chosen on the start form
    with commits():
        response = client.post(url("evaluations_evaluationrun_start"), {"revision": beta["v1"].id,
                                                                        "dataset": beta["dataset"].pk})
    assert response.status_code == 200 and set(response.context["form"].errors) == {"revision", "dataset"}
    mixed = client.post(url("evaluations_evaluationrun_start"), {"revision": world["v2"].id,
                                                                 "dataset": beta["dataset"].pk})
    assert mixed.status_code == 200 and mixed.context["form"].errors["dataset"]
    assert EvaluationRun.objects.filter(organization=world["agent"].organization).count() == 0
    assert Budget.objects.filter(pk=beta["budget"].pk, amount_usd=Decimal("77")).exists()
    assert Dataset.objects.filter(pk=beta["dataset"].pk, name="beta-golden").exists()
