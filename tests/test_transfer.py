"""Export, import and promotion between organizations (API.md "Export and import").

Org "stage" (owner olivia-stage) holds two agents with history (``support``
calls the ``shop-api`` integration and references the SHOP_TOKEN secret; it
is gated by the ``golden`` dataset and has a budget), two datasets with cases
and the integration. "prod" is where promotions go; "fresh" is empty.
Every refusal is checked to leave the target exactly as it was: the row
count of every model before and after.
"""
from __future__ import annotations

import copy
import io
import json
from decimal import Decimal

import pytest
from django.apps import apps
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.urls import reverse

from agents import services as agent_services
from agents.models import Agent, Revision
from deployments import services as deployments
from deployments import transfer
from deployments.models import Deployment
from evaluations.models import Case, Dataset
from evaluations.services import datasets
from fruxon.errors import InvalidRequest
from monitoring import budgets
from monitoring.models import Budget
from orgs.models import AuditEvent, Integration

from . import factories as f
from .builders import SYSTEM, local_spec
from .conftest import Api

pytestmark = pytest.mark.django_db

SHOP_TOKEN_VALUE = "shop-token-value-7f3a9c"
OPENAI_VALUE = "sk-live-openai-value-42e8"
APPS = {"orgs", "agents", "deployments", "evaluations", "monitoring", "guardian", "auth"}


# --- builders -------------------------------------------------------------------------------------
def shop_spec(reply: str) -> dict:
    """A spec that references the SHOP_TOKEN secret and calls the shop-api integration."""
    spec = local_spec(reply)
    # The token goes only where the shop-api integration lives (a credential position, a host it allows).
    spec["steps"].append({"name": "sign", "prompt": "{{input.question}}",
                          "model": {"provider": "openai", "name": "gpt-4o-mini", "baseUrl": "http://127.0.0.1:9/api",
                                    "headers": {"X-Shop-Token": "{{secret.SHOP_TOKEN}}"}}})
    spec["steps"][0]["tools"] = [{"name": "lookup_order", "integration": "shop-api", "description": "Look up an order",
                                  "parameters": {"type": "object", "properties": {}}}]
    return spec


def provision(org) -> None:
    """What a target needs for support's revisions: the secret and the integration."""
    f.secret(org, "SHOP_TOKEN", "prod-" + SHOP_TOKEN_VALUE)
    f.integration(org, "shop-api", credentials_secret="SHOP_TOKEN")


def counts() -> dict[str, int]:
    """Rows of every model of the project's apps (and the auth/guardian tables)."""
    return {m._meta.label: m._default_manager.count() for m in apps.get_models() if m._meta.app_label in APPS}


def cases_of(org, slug: str) -> list[tuple]:
    dataset = Dataset.objects.get(organization=org, slug=slug)
    return [(json.dumps(c.input, sort_keys=True), json.dumps(c.expected, sort_keys=True), c.critical, tuple(c.tags))
            for c in Case.objects.filter(dataset=dataset).order_by("id")]


def hashes_of(org, slug: str) -> list[str]:
    return list(Revision.objects.filter(agent__organization=org, agent__slug=slug)
                .order_by("created_at", "id").values_list("content_hash", flat=True))


@pytest.fixture
def stage(db):
    org = f.OrganizationFactory(slug="stage", name="Staging")
    owner = f.member(org, "owner", "olivia-stage")
    f.secret(org, "SHOP_TOKEN", SHOP_TOKEN_VALUE)
    f.secret(org, "OPENAI_KEY", OPENAI_VALUE)
    f.integration(org, "shop-api", name="Shop", credentials_secret="SHOP_TOKEN", side_effects=True)
    f.integration(org, "unused-api")

    support = agent_services.create_agent(actor=SYSTEM, organization=org, slug="support", name="Support",
                                          description="Answers about orders")
    v1 = agent_services.create_revision(actor=SYSTEM, agent=support, spec=shop_spec("v1 {{input.question}}"),
                                        message="first")
    v2 = agent_services.create_revision(actor=SYSTEM, agent=support, spec=shop_spec("v2 {{input.question}}"),
                                        message="second")
    deployments.deploy(actor=SYSTEM, agent=support, revision_id=v2.id, reason="go")
    agent_services.create_revision(actor=SYSTEM, agent=support, spec=shop_spec("v3 {{input.question}}"), message="wip")

    helper = agent_services.create_agent(actor=SYSTEM, organization=org, slug="helper", name="Helper")
    h1 = agent_services.create_revision(actor=SYSTEM, agent=helper, spec=local_spec("helping {{input.question}}"))
    deployments.deploy(actor=SYSTEM, agent=helper, revision_id=h1.id)

    golden = datasets.create_dataset(actor=SYSTEM, organization=org, slug="golden", name="Golden",
                                     metrics=[{"type": "exact"}, {"type": "contains", "name": "mentions", "values": ["v"]}],
                                     pass_threshold=0.8)
    datasets.add_case(actor=SYSTEM, dataset=golden, input={"question": "where?"}, expected="v2 where?", critical=True)
    datasets.add_case(actor=SYSTEM, dataset=golden, input={"question": "when?"}, expected={"eta": [1, 2]}, tags=["eta"])
    datasets.add_case(actor=SYSTEM, dataset=golden, input={"question": "when?"}, expected={"eta": [1, 2]}, tags=["eta"])
    extra = datasets.create_dataset(actor=SYSTEM, organization=org, slug="extra")
    datasets.add_case(actor=SYSTEM, dataset=extra, input={"question": "ü ☃"}, expected=None)
    agent_services.update_agent(actor=SYSTEM, agent=support, changes={"gating_dataset": golden, "gate_tolerance": 0.05})
    budgets.put_budget(actor=SYSTEM, agent=support, period="month", amount_usd=Decimal("50"), enforce=True,
                       alert_thresholds=[0.8, 0.5], alert_webhook="https://hooks.example/fx", alert_emails=["a@example.com"])
    return {"org": org, "owner": owner, "client": Api.as_user(owner), "support": support, "helper": helper,
            "v1": v1, "v2": v2}


@pytest.fixture
def fresh(stage):
    org = f.OrganizationFactory(slug="fresh", name="Fresh")
    f.MembershipFactory(organization=org, user=stage["owner"], role="owner")
    return org


@pytest.fixture
def prod(stage):
    org = f.OrganizationFactory(slug="prod", name="Production")
    f.MembershipFactory(organization=org, user=stage["owner"], role="owner")
    return org


def export(stage, query: str = "?history=true") -> dict:
    response = stage["client"].get(f"/v1/stage/export{query}")
    assert response.status_code == 200, response.content[:500]
    return response.json()


def import_into(client, slug: str, body, query: str = ""):
    return client.post(f"/v1/{slug}/import{query}", body, format="json")


# --- export ----------------------------------------------------------------------------------------
def test_export_document_shape(stage):
    document = export(stage)
    assert document["format"] == "fruxon.export/v1" and document["sourceOrg"] == "stage" and document["history"] is True
    assert document["exportedAt"].endswith("Z")
    support = next(a for a in document["agents"] if a["slug"] == "support")
    assert [r["message"] for r in support["revisions"]] == ["first", "second", "wip"]
    assert support["deployedRevisionId"] == stage["v2"].id
    assert support["revisions"][1]["parentId"] == stage["v1"].id
    assert support["revisions"][1]["contentHash"] == stage["v2"].content_hash
    assert support["gatingDataset"] == "golden" and support["gateTolerance"] == 0.05
    # the webhook URL is a credential of this environment: never exported
    assert support["budget"] == {"period": "month", "amountUsd": "50.0000", "enforce": True, "alertThresholds": [0.5, 0.8],
                                 "alertEmails": ["a@example.com"]}
    assert "hooks.example" not in json.dumps(document)
    assert [d["slug"] for d in document["datasets"]] == ["extra", "golden"]
    assert len(document["datasets"][1]["cases"]) == 3
    shop = next(i for i in document["integrations"] if i["slug"] == "shop-api")
    assert shop["credentialsSecret"] == "SHOP_TOKEN" and shop["sideEffects"] is True and "status" not in shop
    assert document["secrets"] == [{"name": "SHOP_TOKEN", "usedBy": ["agent:support", "integration:shop-api"]}]
    transfer.validate_document(document)  # the export passes the schema it ships with


def test_export_defaults_to_deployed_revisions_and_filters_agents(stage):
    document = export(stage, "")
    assert {a["slug"]: [r["id"] for r in a["revisions"]] for a in document["agents"]} == {
        "helper": [stage["helper"].deployed_revision_id], "support": [stage["v2"].id]}
    only = export(stage, "?agents=helper")
    assert [a["slug"] for a in only["agents"]] == ["helper"]
    assert only["datasets"] == [] and only["integrations"] == [] and only["secrets"] == []
    response = stage["client"].get("/v1/stage/export?agents=helper,ghost")
    assert response.status_code == 400 and response.json()["error"]["code"] == "unknown_agent"
    assert stage["client"].get("/v1/stage/export?history=maybe").status_code == 400


def test_export_never_contains_a_secret_value(stage):
    for query in ("", "?history=true"):
        text = json.dumps(export(stage, query))
        assert SHOP_TOKEN_VALUE not in text and OPENAI_VALUE not in text
    out = io.StringIO()
    call_command("export_org", "stage", "--history", stdout=out)
    assert SHOP_TOKEN_VALUE not in out.getvalue() and json.loads(out.getvalue())["sourceOrg"] == "stage"


def test_export_needs_an_owner_and_the_org_read_scope(stage):
    editor = f.member(stage["org"], "editor", "eddie-stage")
    assert Api.as_user(editor).get("/v1/stage/export").status_code == 403
    _, read_key = f.api_key(stage["org"], scopes=["org:read"])
    assert Api.as_key(read_key).get("/v1/stage/export").status_code == 200
    _, write_only = f.api_key(stage["org"], scopes=["org:write"])
    assert Api.as_key(write_only).get("/v1/stage/export").status_code == 403


# --- import ----------------------------------------------------------------------------------------
def test_round_trip_into_an_empty_org_and_a_second_import_is_a_no_op(stage, fresh):
    document = export(stage)
    client = stage["client"]
    response = import_into(client, "fresh", document)
    assert response.status_code == 200, response.content[:800]
    body = response.json()
    assert body["dryRun"] is False and body["applied"] is True
    plan = body["plan"]
    assert plan["agents"]["created"] == ["helper", "support"]
    assert len(plan["revisions"]["created"]) == 4 and plan["cases"] == {"created": 4, "unchanged": 0}
    assert plan["datasets"]["created"] == ["extra", "golden"] and plan["budgets"]["created"] == ["support"]
    assert plan["integrations"]["created"] == ["shop-api", "unused-api"]
    assert plan["missingSecrets"] == ["SHOP_TOKEN"] and plan["missingIntegrations"] == []

    for slug in ("support", "helper"):
        assert hashes_of(fresh, slug) == hashes_of(stage["org"], slug)
    source_ids = {r.content_hash: r.id for r in Revision.objects.filter(organization=stage["org"])}
    imported = list(Revision.objects.filter(organization=fresh))
    assert all(r.origin == {"org": "stage", "revisionId": source_ids[r.content_hash]} for r in imported)
    assert not {r.id for r in imported} & set(source_ids.values())  # new ids in the target
    v2 = Revision.objects.get(organization=fresh, content_hash=stage["v2"].content_hash)
    assert v2.parent.content_hash == stage["v1"].content_hash
    assert v2.references.filter(kind="secret", name="SHOP_TOKEN").exists()
    for slug in ("golden", "extra"):
        assert cases_of(fresh, slug) == cases_of(stage["org"], slug)
    golden = Dataset.objects.get(organization=fresh, slug="golden")
    assert golden.metrics == Dataset.objects.get(organization=stage["org"], slug="golden").metrics
    assert golden.pass_threshold == 0.8
    support = Agent.objects.get(organization=fresh, slug="support")
    assert support.gating_dataset == golden and support.gate_tolerance == 0.05
    assert support.deployed_revision_id is None  # no deploy asked
    budget = Budget.objects.get(agent=support)
    assert (budget.period, budget.amount_usd, budget.enforce, budget.alert_thresholds) == ("month", Decimal("50"), True, [0.5, 0.8])
    shop = Integration.objects.get(organization=fresh, slug="shop-api")
    assert (shop.credentials_secret, shop.status, shop.side_effects) == ("SHOP_TOKEN", "disconnected", True)
    assert Integration.objects.get(organization=fresh, slug="unused-api").status == "connected"
    assert AuditEvent.objects.filter(organization=fresh, action="org.imported").count() == 1

    before = counts()
    again = import_into(client, "fresh", document)
    assert again.status_code == 200 and again.json()["applied"] is False
    plan = again.json()["plan"]
    assert plan["changes"] == 0
    for kind in ("agents", "revisions", "datasets", "budgets", "integrations"):
        assert plan[kind]["created"] == [] and plan[kind]["updated"] == [], kind
    assert plan["cases"] == {"created": 0, "unchanged": 4}
    assert counts() == before


def test_dry_run_writes_nothing(stage, fresh):
    document = export(stage)
    client = stage["client"]
    before = counts()
    for response in (import_into(client, "fresh", document, "?dryRun=true"),
                     import_into(client, "fresh", {"document": document, "dryRun": True, "deploy": True})):
        assert response.status_code == 200, response.content[:500]
        body = response.json()
        assert body["dryRun"] is True and body["applied"] is False
        assert body["plan"]["agents"]["created"] == ["helper", "support"]
        assert body["plan"]["missingSecrets"] == ["SHOP_TOKEN"]
    assert counts() == before
    out = io.StringIO()
    path = _write(document)
    call_command("import_org", "fresh", path, "--dry-run", stdout=out)
    assert json.loads(out.getvalue())["plan"]["revisions"]["created"]
    assert counts() == before


def _write(document) -> str:
    import tempfile

    handle = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
    json.dump(document, handle)
    handle.close()
    return handle.name


def test_reimport_into_the_source_changes_nothing(stage):
    before = counts()
    response = import_into(stage["client"], "stage", export(stage), "?deploy=true")
    assert response.status_code == 200, response.content[:500]
    plan = response.json()["plan"]
    assert plan["changes"] == 0 and plan["integrations"]["unchanged"] == ["shop-api", "unused-api"]
    assert {d["action"] for d in plan["deploys"]} == {"unchanged"}
    assert counts() == before


@pytest.mark.parametrize("mutate,path", [
    (lambda d: d["secrets"].__setitem__(0, {"name": "SHOP_TOKEN", "value": "smuggled"}), "$.secrets[0].value"),
    (lambda d: d.__setitem__("extra", 1), "$.extra"),
    (lambda d: d["agents"][0].__setitem__("organization", 7), "$.agents[0].organization"),
    (lambda d: d["integrations"][0].__setitem__("credentials", "Bearer x"), "$.integrations[0].credentials"),
    (lambda d: d["agents"][1]["budget"].__setitem__("alertWebhook", "https://hooks.example/smuggled"),
     "$.agents[1].budget.alertWebhook"),
    (lambda d: d["agents"][1]["revisions"][0]["spec"]["steps"][0]["model"].__setitem__("apiKey", "sk-smuggled"),
     "$.agents[1].revisions[0].spec.steps[0].model.apiKey"),
    (lambda d: d["integrations"][0]["config"]["headers"].__setitem__("Authorization", "Bearer x"),
     "$.integrations[0].config.headers"),
    (lambda d: d.__setitem__("format", "fruxon.export/v2"), "$.format"),
    (lambda d: d["agents"][1]["revisions"][0].__setitem__("contentHash", "0" * 64), "$.agents[1].revisions[0].contentHash"),
    (lambda d: d["agents"][1]["revisions"][0]["spec"].__setitem__("bogus", True), "$.agents[1].revisions[0].spec.bogus"),
    (lambda d: d["agents"][1].__setitem__("deployedRevisionId", "rev_unknown"), "$.agents[1].deployedRevisionId"),
    (lambda d: d["datasets"][1]["metrics"].__setitem__(0, {"type": "nope"}), "$.datasets[1].metrics[0]"),
    (lambda d: d["datasets"][1]["cases"][0].__setitem__("input", "not an object"), "$.datasets[1].cases[0].input"),
    (lambda d: d["agents"][1]["budget"].__setitem__("amountUsd", "-5"), "$.agents[1].budget.amountUsd"),
    (lambda d: d["agents"].append(copy.deepcopy(d["agents"][0])), "$.agents[2].slug"),
    (lambda d: d["agents"][1].__setitem__("gatingDataset", "nowhere"), "$.agents[1].gatingDataset"),
])
def test_bad_documents_are_refused_and_write_nothing(stage, fresh, mutate, path):
    document = export(stage, "?history=true")
    mutate(document)
    before = counts()
    response = import_into(stage["client"], "fresh", document)
    assert response.status_code == 400, response.content[:500]
    error = response.json()["error"]
    assert error["code"] == "invalid_export"
    assert any(p["path"].startswith(path) for p in error["details"]["problems"]), error
    assert path in error["message"] or any(p["path"].startswith(path) for p in error["details"]["problems"])
    assert "smuggled" not in response.content.decode()
    assert counts() == before


def test_malformed_bodies(stage, fresh):
    client = stage["client"]
    for body, code in ((["not", "an", "object"], "invalid_export"), ({"document": {}, "bogus": 1}, "invalid_request"),
                       ({"document": export(stage), "deploy": "yes"}, "invalid_request")):
        response = import_into(client, "fresh", body)
        assert response.status_code == 400 and response.json()["error"]["code"] == code, response.content[:300]
    response = client.post("/v1/fresh/import", "{not json", content_type="application/json")
    assert response.status_code == 400


def test_a_failure_midway_leaves_the_target_exactly_as_before(stage, fresh, monkeypatch):
    document = export(stage)
    real = transfer.apply.dataset_services.add_cases_bulk

    def failing(*, actor, dataset, cases):
        if dataset.slug == "golden":  # the last dataset: integrations and "extra" are written by then
            raise InvalidRequest("Case 2 is invalid.", details={"fields": {"cases[2]": ["bad"]}})
        return real(actor=actor, dataset=dataset, cases=cases)

    monkeypatch.setattr(transfer.apply.dataset_services, "add_cases_bulk", failing)
    before = counts()
    response = import_into(stage["client"], "fresh", document)
    assert response.status_code == 400 and response.json()["error"]["message"] == "Case 2 is invalid."
    assert counts() == before


def test_a_refused_deploy_aborts_the_whole_import(stage, fresh):
    before = counts()
    response = import_into(stage["client"], "fresh", {"document": export(stage), "deploy": True})
    assert response.status_code == 409, response.content[:500]
    error = response.json()["error"]
    assert error["code"] == "not_ready" and error["details"]["agent"] == "support"
    secrets_check = next(c for c in error["details"]["checks"] if c["check"] == "secrets")
    assert secrets_check["status"] == "fail" and error["details"]["plan"]["missingSecrets"] == ["SHOP_TOKEN"]
    assert counts() == before


def test_import_with_deploy_deploys_the_same_content(stage, fresh):
    f.secret(fresh, "SHOP_TOKEN", "fresh-token")
    response = import_into(stage["client"], "fresh", {"document": export(stage), "deploy": True})
    assert response.status_code == 200, response.content[:800]
    for slug in ("support", "helper"):
        source = Agent.objects.get(organization=stage["org"], slug=slug)
        target = Agent.objects.get(organization=fresh, slug=slug)
        assert target.deployed_revision.content_hash == source.deployed_revision.content_hash
        assert Deployment.objects.get(agent=target).kind == "import"
    assert Integration.objects.get(organization=fresh, slug="shop-api").status == "connected"
    before = counts()
    again = import_into(stage["client"], "fresh", export(stage), "?deploy=true")
    assert again.status_code == 200 and again.json()["plan"]["changes"] == 0
    assert counts() == before


def test_sub_agents_deploy_first_and_pins_are_warned_about(stage, fresh):
    org = stage["org"]
    child = agent_services.create_agent(actor=SYSTEM, organization=org, slug="z-child")
    c1 = agent_services.create_revision(actor=SYSTEM, agent=child, spec=local_spec("child {{input.question}}"))
    deployments.deploy(actor=SYSTEM, agent=child, revision_id=c1.id)
    calling = local_spec("parent {{input.question}}")
    calling["steps"][0]["subAgents"] = [{"agent": "z-child", "description": "asks the child"}]
    parent = agent_services.create_agent(actor=SYSTEM, organization=org, slug="a-parent")
    p1 = agent_services.create_revision(actor=SYSTEM, agent=parent, spec=calling)
    deployments.deploy(actor=SYSTEM, agent=parent, revision_id=p1.id)
    pinned = copy.deepcopy(calling)
    pinned["steps"][0]["subAgents"][0]["revisionId"] = c1.id
    agent_services.create_revision(actor=SYSTEM, agent=parent, spec=pinned, message="pinned")

    document = export(stage, "?agents=a-parent,z-child&history=true")
    response = import_into(stage["client"], "fresh", {"document": document, "deploy": True})
    assert response.status_code == 200, response.content[:800]
    body = response.json()
    assert [d["agent"] for d in body["deployments"]] == ["z-child", "a-parent"]
    assert any(f"pins sub-agent z-child to {c1.id}" in w for w in body["plan"]["warnings"])
    assert Agent.objects.get(organization=fresh, slug="a-parent").deployed_revision.content_hash == p1.content_hash


def test_import_updates_what_changed_and_deletes_nothing(stage, fresh):
    client = stage["client"]
    assert import_into(client, "fresh", export(stage)).status_code == 200
    local = datasets.add_case(actor=SYSTEM, dataset=Dataset.objects.get(organization=fresh, slug="extra"),
                              input={"question": "only here"})
    Integration.objects.filter(organization=fresh, slug="unused-api").update(config={"baseUrl": "https://prod.example"})
    agent_services.update_agent(actor=SYSTEM, agent=stage["helper"], changes={"name": "Helper v2"})
    datasets.add_case(actor=SYSTEM, dataset=Dataset.objects.get(organization=stage["org"], slug="golden"),
                      input={"question": "new?"})
    plan = import_into(client, "fresh", export(stage)).json()["plan"]
    assert plan["agents"]["updated"] == ["helper"] and plan["datasets"]["updated"] == ["golden"]
    assert plan["cases"] == {"created": 1, "unchanged": 4}
    assert plan["integrations"]["kept"] == ["unused-api"]
    assert Agent.objects.get(organization=fresh, slug="helper").name == "Helper v2"
    assert Case.objects.filter(pk=local.pk).exists()
    assert Integration.objects.get(organization=fresh, slug="unused-api").config == {"baseUrl": "https://prod.example"}


def test_import_needs_an_owner_and_the_org_write_scope(stage, fresh):
    document = export(stage)
    editor = f.member(fresh, "editor", "eddie-fresh")
    assert import_into(Api.as_user(editor), "fresh", document).status_code == 403
    _, read_key = f.api_key(fresh, scopes=["org:read"])
    assert import_into(Api.as_key(read_key), "fresh", document).status_code == 403
    _, write_key = f.api_key(fresh, scopes=["org:write"])
    response = import_into(Api.as_key(write_key), "fresh", document, "?dryRun=true")
    assert response.status_code == 200
    outsider = f.member(f.OrganizationFactory(slug="elsewhere"), "owner", "otto")
    assert import_into(Api.as_user(outsider), "fresh", document).status_code == 404


def test_import_command_applies_and_refuses(stage, fresh):
    path = _write(export(stage))
    out = io.StringIO()
    call_command("import_org", "fresh", path, stdout=out)
    assert json.loads(out.getvalue())["applied"] is True
    assert hashes_of(fresh, "support") == hashes_of(stage["org"], "support")
    bad = _write({"format": "fruxon.export/v9"})
    with pytest.raises(CommandError, match="fruxon.export/v9"):
        call_command("import_org", "fresh", bad, stdout=io.StringIO())


# --- promotion -------------------------------------------------------------------------------------
def promote(client, body, agent="support"):
    return client.post(f"/v1/stage/agents/{agent}:promote", body, format="json")


def test_promotion_deploys_the_same_content_in_the_target(stage, prod):
    provision(prod)
    response = promote(stage["client"], {"targetOrg": "prod"})
    assert response.status_code == 201, response.content[:800]
    body = response.json()
    target = Agent.objects.get(organization=prod, slug="support")
    assert target.deployed_revision.content_hash == stage["v2"].content_hash == body["contentHash"]
    assert body["revisionId"] == target.deployed_revision_id != stage["v2"].id
    assert target.deployed_revision.origin == {"org": "stage", "revisionId": stage["v2"].id}
    assert target.gating_dataset is None and not Budget.objects.filter(agent=target).exists()
    assert Deployment.objects.get(agent=target).kind == "import"
    assert AuditEvent.objects.filter(organization=stage["org"], action="agent.promoted").count() == 1
    # promoting it again: the target already runs it
    again = promote(stage["client"], {"targetOrg": "prod"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_deployed"
    # an earlier revision can be promoted on top: a new target revision, deployed
    response = promote(stage["client"], {"targetOrg": "prod", "revisionId": stage["v1"].id})
    assert response.status_code == 201
    target.refresh_from_db()
    assert target.deployed_revision.content_hash == stage["v1"].content_hash
    assert Revision.objects.filter(agent=target).count() == 2


def test_promotion_refused_when_the_target_lacks_a_secret(stage, prod):
    f.integration(prod, "shop-api")
    before = counts()
    response = promote(stage["client"], {"targetOrg": "prod"})
    assert response.status_code == 409, response.content[:500]
    error = response.json()["error"]
    assert error["code"] == "not_ready" and error["details"]["missingSecrets"] == ["SHOP_TOKEN"]
    assert error["details"]["plan"]["agents"]["created"] == ["support"]
    assert SHOP_TOKEN_VALUE not in response.content.decode()
    assert counts() == before


def test_promotion_refused_when_the_target_lacks_an_integration(stage, prod):
    f.secret(prod, "SHOP_TOKEN", "x")
    before = counts()
    response = promote(stage["client"], {"targetOrg": "prod"})
    assert response.status_code == 409 and response.json()["error"]["details"]["missingIntegrations"] == ["shop-api"]
    assert counts() == before


def test_promotion_follows_the_targets_gate_unless_forced(stage, prod):
    provision(prod)
    assert promote(stage["client"], {"targetOrg": "prod"}).status_code == 201
    target = Agent.objects.get(organization=prod, slug="support")
    gate = datasets.create_dataset(actor=SYSTEM, organization=prod, slug="prod-gate")
    agent_services.update_agent(actor=SYSTEM, agent=target, changes={"gating_dataset": gate})
    before = counts()
    response = promote(stage["client"], {"targetOrg": "prod", "revisionId": stage["v1"].id})
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "not_ready"
    assert next(c for c in error["details"]["checks"] if c["check"] == "evaluation")["status"] == "fail"
    assert counts() == before
    assert promote(stage["client"], {"targetOrg": "prod", "revisionId": stage["v1"].id, "force": True}).status_code == 400
    forced = promote(stage["client"], {"targetOrg": "prod", "revisionId": stage["v1"].id, "force": True,
                                       "reason": "evaluated in staging"})
    assert forced.status_code == 201 and forced.json()["forced"] is True


def test_promotion_to_an_org_you_are_not_a_member_of_is_404(stage):
    other = f.OrganizationFactory(slug="secret-prod")
    provision(other)
    before = counts()
    for slug in ("secret-prod", "no-such-org"):
        response = promote(stage["client"], {"targetOrg": slug})
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert counts() == before


def test_promotion_by_a_target_member_who_is_not_owner_is_403(stage, prod):
    provision(prod)
    dual = f.member(stage["org"], "owner", "dana")
    f.MembershipFactory(organization=prod, user=dual, role="editor")
    client = Api.as_user(dual)
    before = counts()
    response = promote(client, {"targetOrg": "prod"})
    assert response.status_code == 403 and response.json()["error"]["code"] == "forbidden"
    assert counts() == before


def test_promotion_needs_a_person_who_owns_the_source(stage, prod):
    provision(prod)
    _, key = f.api_key(stage["org"], preset="admin")
    assert promote(Api.as_key(key), {"targetOrg": "prod"}).status_code == 403
    editor = f.member(stage["org"], "editor", "eddie-stage")
    f.MembershipFactory(organization=prod, user=editor, role="owner")
    assert promote(Api.as_user(editor), {"targetOrg": "prod"}).status_code == 403
    assert promote(stage["client"], {"targetOrg": "stage"}).status_code == 400
    assert promote(stage["client"], {"targetOrg": "prod", "revisionId": "rev_nope"}).status_code == 404
    assert not Agent.objects.filter(organization=prod).exists()


# --- admin ------------------------------------------------------------------------------------------
def _admin(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_admin_export_download_for_owners_only(stage):
    client = _admin(stage["owner"])
    url = reverse("admin:deployments_transfer_export")
    assert client.get(url).status_code == 200
    response = client.post(url, {"organization": stage["org"].pk, "agents": "support", "history": "on"})
    assert response.status_code == 200 and "attachment" in response["Content-Disposition"]
    document = json.loads(response.content)
    assert [a["slug"] for a in document["agents"]] == ["support"] and len(document["agents"][0]["revisions"]) == 3
    assert SHOP_TOKEN_VALUE.encode() not in response.content
    editor = f.member(stage["org"], "editor", "eddie-stage")
    refused = _admin(editor).post(url, {"organization": stage["org"].pk})
    assert refused.status_code in (200, 403) and b"attachment" not in refused.content
    assert not refused.has_header("Content-Disposition")


def test_admin_import_shows_the_plan_before_applying(stage, fresh):
    client = _admin(stage["owner"])
    url = reverse("admin:deployments_transfer_import")
    assert client.get(url).status_code == 200
    upload = io.BytesIO(json.dumps(export(stage)).encode())
    upload.name = "stage.json"
    before = counts()
    preview = client.post(url, {"organization": fresh.pk, "document": upload})
    assert preview.status_code == 200, preview.content[:500]
    page = preview.content.decode()
    assert "support" in page and "SHOP_TOKEN" in page and 'name="_apply"' in page
    assert counts() == before
    payload = preview.context["apply_form"].initial["payload"]
    applied = client.post(url, {"organization": fresh.pk, "payload": payload, "_apply": "1"})
    assert applied.status_code == 302
    assert hashes_of(fresh, "support") == hashes_of(stage["org"], "support")
    bad = io.BytesIO(b'{"format": "fruxon.export/v1", "value": 1}')
    bad.name = "bad.json"
    refused = client.post(url, {"organization": fresh.pk, "document": bad})
    assert refused.status_code == 200 and "$.value" in refused.content.decode() and "invalid_export" in refused.content.decode()
