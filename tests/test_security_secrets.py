"""Issue 12, item 2: a secret goes only to the hosts its owner allowed, only from credential positions.

Before: an editor's revision with ``"baseUrl": "http://<their host>/v1", "apiKey": "{{secret.NAME}}"``,
executed pinned, sent the plaintext to that host; a custom header and a prompt carried it too.
Now ``allowedHosts`` on the secret (plus the hosts of the integrations whose credentials it is) decides
where it may go: checked when a revision is created (400 ``secret_destination``) and by the engine at
every call (the run fails with ``secret_destination``, nothing sent).
"""
from __future__ import annotations

import importlib
import json

import pytest
from django.apps import apps as global_apps
from django.db.migrations.recorder import MigrationRecorder

from agents.engine.testing import start_openai_stub
from agents.models import Agent, Revision
from monitoring.models import Run
from orgs.models import AuditEvent, Integration, Secret

from . import factories as f
from .builders import SYSTEM, agent_with_revision, local_spec, run_once, send_secrets

pytestmark = pytest.mark.django_db

VALUE = "sk-live-item2-0123456789abcdef"
BACKFILL = "orgs.migrations.0004_secret_allowed_hosts_backfill"


def openai_spec(base_url: str | None = None, *, api_key: str = "{{secret.OPENAI_KEY}}", **model_extra) -> dict:
    model = {"provider": "openai", "name": "gpt-4o-mini", "apiKey": api_key, **model_extra}
    if base_url is not None:
        model["baseUrl"] = base_url
    return {"inputs": {"question": {"type": "string", "required": True}},
            "steps": [{"name": "answer", "model": model, "prompt": "{{input.question}}"}],
            "output": "{{steps.answer.output}}"}


def post_revision(client, spec: dict, agent: str = "support"):
    return client.post(f"/v1/acme/agents/{agent}/revisions", {"spec": spec}, format="json")


def execute(client, revision_id: str, agent: str = "support"):
    return client.post(f"/v1/acme/agents/{agent}:execute", {"input": {"question": "hi"}, "revisionId": revision_id},
                       format="json")


def carried(requests, value: str = VALUE) -> list:
    """The requests whose headers or body bytes hold ``value``."""
    return [r for r in requests if value in json.dumps(r.headers) or value.encode() in r.raw]


@pytest.fixture
def support(org):
    return Agent.objects.create(organization=org, slug="support", name="support")


# --- the secrets API ------------------------------------------------------------------------------
def test_item2_allowed_hosts_put_validated_listed_and_audited(org, owner_client, editor, api):
    url = "/v1/acme/secrets/OPENAI_KEY"
    created = owner_client.put(url, {"value": VALUE, "allowedHosts": ["API.OpenAI.com", "bücher.example:8443",
                                                                      "[::1]:8080", "10.0.0.7"]}, format="json")
    assert created.status_code == 201, created.content
    stored = ["10.0.0.7", "[::1]:8080", "api.openai.com", "xn--bcher-kva.example:8443"]  # canonical, sorted
    assert created.json()["allowedHosts"] == stored
    assert owner_client.get(url).json()["allowedHosts"] == stored
    listed = api.as_user(editor).get("/v1/acme/secrets").json()["results"]
    assert [s["allowedHosts"] for s in listed if s["name"] == "OPENAI_KEY"] == [stored]
    for bad in (["*"], ["*.openai.com"], ["https://api.openai.com"], ["api.openai.com/v1"], ["user@host"],
                ["host:0"], ["host:99999"], ["a b"], [""], ["exa_mple..com"], "api.openai.com"):
        response = owner_client.put(url, {"allowedHosts": bad}, format="json")
        assert response.status_code == 400, bad
        error = response.json()["error"]
        assert error["code"] == "invalid_request" and any(k.startswith("allowedHosts") for k in error["details"]["fields"])
    assert Secret.objects.get(name="OPENAI_KEY").allowed_hosts == stored  # nothing written by the refusals
    narrowed = owner_client.put(url, {"allowedHosts": ["api.openai.com"]}, format="json")
    assert narrowed.status_code == 200 and narrowed.json()["allowedHosts"] == ["api.openai.com"]
    event = AuditEvent.objects.filter(action="secret.updated", target_id="OPENAI_KEY").latest("id")
    assert event.data["changed"] == ["allowedHosts"] and event.data["allowedHosts"] == ["api.openai.com"]
    assert event.data["allowedHostsBefore"] == stored
    assert VALUE not in json.dumps([e.data for e in AuditEvent.objects.all()])
    # Only an owner sets them.
    assert api.as_user(editor).put(url, {"allowedHosts": ["evil.example"]}, format="json").status_code == 403
    assert Secret.objects.get(name="OPENAI_KEY").allowed_hosts == ["api.openai.com"]


def test_item2_admin_secret_form_edits_allowed_hosts(owner, org):
    from .test_admin_orgs import login, url

    client = login(owner)
    response = client.post(url("secret", "add"), {
        "organization": org.pk, "name": "OPENAI_KEY", "description": "", "allowed_agents": "*",
        "allowed_hosts": "API.openai.com, llm.internal:8443", "value": VALUE, "_save": "Save"})
    assert response.status_code == 302, response.content
    secret = Secret.objects.get(organization=org, name="OPENAI_KEY")
    assert secret.allowed_hosts == ["api.openai.com", "llm.internal:8443"]
    change = url("secret", "change", secret.pk)
    refused = client.post(change, {"description": "", "allowed_agents": "*", "allowed_hosts": "*", "value": ""})
    assert refused.status_code == 200 and b"wildcards are not allowed" in refused.content
    assert client.post(change, {"description": "", "allowed_agents": "*", "allowed_hosts": "api.openai.com",
                                "value": ""}).status_code == 302
    secret.refresh_from_db()
    assert secret.allowed_hosts == ["api.openai.com"] and secret.current_version == 1
    event = AuditEvent.objects.filter(action="secret.updated", target_id="OPENAI_KEY").latest("id")
    assert event.data["allowedHosts"] == ["api.openai.com"] and event.actor_user_id == owner.pk


# --- creation time ------------------------------------------------------------------------------
def test_item2_secret_to_foreign_host_refused_at_creation(org, support, editor, api):
    f.secret(org, "OPENAI_KEY", VALUE, allowed_hosts=["api.openai.com"])
    client = api.as_user(editor)
    for base_url, host in (("http://evil.example/v1", "evil.example"),
                           ("https://api.openai.com.evil.example/v1", "api.openai.com.evil.example"),
                           ("https://evil.example:443/v1", "evil.example")):
        response = post_revision(client, openai_spec(base_url))
        assert response.status_code == 400, base_url
        error = response.json()["error"]
        assert error["code"] == "secret_destination"
        assert error["details"]["secret"] == "OPENAI_KEY" and error["details"]["host"] == host
        assert error["details"]["path"] == "$.steps[0].model.apiKey"
        assert "OPENAI_KEY" in error["message"] and host in error["message"] and VALUE not in response.content.decode()
    # A host decided by the caller's input is never allowed.
    templated = post_revision(client, openai_spec("https://{{input.question}}/v1"))
    assert templated.status_code == 400 and templated.json()["error"]["details"]["host"] is None
    assert not Revision.objects.exists() and not AuditEvent.objects.filter(action="revision.created").exists()
    # The allowed host, and the provider's default base URL (api.openai.com), are fine.
    assert post_revision(client, openai_spec("https://api.openai.com/v1")).status_code == 201
    assert post_revision(client, openai_spec()).status_code == 201
    # A port in the allowed entry must match; without one, the scheme's default port is what a URL has.
    Secret.objects.filter(name="OPENAI_KEY").update(allowed_hosts=["llm.internal:8443"])
    assert post_revision(client, openai_spec("https://llm.internal:8443/v1")).status_code == 201
    assert post_revision(client, openai_spec("https://llm.internal/v1")).status_code == 400
    assert Revision.objects.count() == 3


def test_item2_secret_to_foreign_host_refused_in_the_admin(org, support, editor):
    from .test_admin_agents import login, revision_form, url

    f.secret(org, "OPENAI_KEY", VALUE, allowed_hosts=["api.openai.com"])
    response = login(editor).post(url("agents.revision", "add"),
                                  revision_form(support, openai_spec("http://evil.example/v1")))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors["spec"]
    assert any("OPENAI_KEY" in e and "evil.example" in e and "$.steps[0].model.apiKey" in e for e in errors), errors
    assert not Revision.objects.exists() and not AuditEvent.objects.filter(action="revision.created").exists()
    saved = login(editor).post(url("agents.revision", "add"), revision_form(support, openai_spec()))
    assert saved.status_code == 302 and Revision.objects.count() == 1


def test_item2_secret_to_foreign_host_refused_on_import(org, support, owner, owner_client):
    """Import (and so promotion, which imports) creates revisions through the same check; nothing is written."""
    source = f.OrganizationFactory(slug="source")
    f.MembershipFactory(organization=source, user=owner, role="owner")
    f.secret(source, "OPENAI_KEY", "source-value", allowed_hosts=["evil.example"])
    leaky = Agent.objects.create(organization=source, slug="support", name="support")
    from agents.services import create_revision
    from deployments import services as deployments

    revision = create_revision(actor=SYSTEM, agent=leaky, spec=openai_spec("http://evil.example/v1"))
    deployments.deploy(actor=SYSTEM, agent=leaky, revision_id=revision.id, reason="the source org allows it")
    document = owner_client.get("/v1/source/export").json()
    f.secret(org, "OPENAI_KEY", VALUE, allowed_hosts=["api.openai.com"])
    before = Revision.objects.filter(organization=org).count(), AuditEvent.objects.filter(organization=org).count()
    dry = owner_client.post("/v1/acme/import?dryRun=true", document, format="json")
    assert dry.status_code == 200, dry.content
    assert any("would send secret OPENAI_KEY ($.steps[0].model.apiKey) to evil.example" in w
               for w in dry.json()["plan"]["warnings"])
    response = owner_client.post("/v1/acme/import", document, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == "secret_destination"
    assert response.json()["error"]["details"]["host"] == "evil.example"
    after = Revision.objects.filter(organization=org).count(), AuditEvent.objects.filter(organization=org).count()
    assert after == before


def test_item2_secret_in_prompt_refused(org, support, editor, api):
    f.secret(org, "OPENAI_KEY", VALUE, allowed_hosts=["api.openai.com"])
    client = api.as_user(editor)
    for place, change in (
        ("$.steps[0].prompt", lambda s: s["steps"][0].update(prompt="{{input.question}} {{secret.OPENAI_KEY}}")),
        ("$.steps[0].systemPrompt", lambda s: s["steps"][0].update(systemPrompt="Key: {{secret.OPENAI_KEY}}")),
        ("$.steps[0].model.baseUrl", lambda s: s["steps"][0]["model"].update(
            baseUrl="https://api.openai.com/{{secret.OPENAI_KEY}}")),
        ("$.output", lambda s: s.update(output="{{secret.OPENAI_KEY}}")),
    ):
        spec = openai_spec()
        change(spec)
        response = post_revision(client, spec)
        assert response.status_code == 400, place
        problems = response.json()["error"]["details"]["problems"]
        assert {"path": place, "message": "{{secret.OPENAI_KEY}}: secrets cannot be used here"} in problems, place
    assert not Revision.objects.exists()


def test_item2_secret_in_custom_header_to_foreign_host_refused(org, support, editor, api):
    f.secret(org, "OPENAI_KEY", VALUE, allowed_hosts=["api.openai.com"])
    f.secret(org, "TENANT_TOKEN", "tenant-value", allowed_hosts=["api.openai.com"])
    client = api.as_user(editor)
    spec = openai_spec("http://evil.example/v1", api_key="",
                       headers={"X-Anything": "prefix {{secret.TENANT_TOKEN}}"})
    del spec["steps"][0]["model"]["apiKey"]
    response = post_revision(client, spec)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "secret_destination" and error["details"]["secret"] == "TENANT_TOKEN"
    assert error["details"]["path"] == '$.steps[0].model.headers["X-Anything"]'
    assert error["details"]["host"] == "evil.example"
    assert not Revision.objects.exists()
    spec["steps"][0]["model"]["baseUrl"] = "https://api.openai.com/v1"
    assert post_revision(client, spec).status_code == 201


# --- call time ---------------------------------------------------------------------------------------
def test_item2_call_time_check_after_hosts_narrowed(org, support, owner_client, editor, api):
    client = api.as_user(editor)
    base_url, stub = start_openai_stub(script=[{"content": "fine"}])
    try:
        port = int(base_url.rsplit(":", 1)[1].split("/")[0])
        f.secret(org, "OPENAI_KEY", VALUE, allowed_hosts=[f"127.0.0.1:{port}"])
        spec = openai_spec(base_url, headers={"X-Extra": "also {{secret.OPENAI_KEY}}"})
        created = post_revision(client, spec)
        assert created.status_code == 201, created.content
        revision_id = created.json()["id"]
        first = execute(client, revision_id)  # pinned: no deploy, no readiness
        assert first.status_code == 200, first.content
        assert len(carried(stub.requests)) == 1  # it really went, to the allowed host
        # The owner narrows the hosts: the same pinned revision may no longer send it there.
        assert owner_client.put("/v1/acme/secrets/OPENAI_KEY", {"allowedHosts": ["api.openai.com"]},
                                format="json").status_code == 200
        seen = len(stub.requests)
        refused = execute(client, revision_id)
        assert refused.status_code == 422, refused.content
        error = refused.json()["error"]
        assert error["code"] == "secret_destination" and "OPENAI_KEY" in error["message"]
        assert f"127.0.0.1:{port}" in error["message"] and VALUE not in refused.content.decode()
        assert len(stub.requests) == seen  # nothing was sent at all
        run = Run.objects.get(pk=error["details"]["runId"])
        assert run.status == "error" and run.error["code"] == "secret_destination"
        assert VALUE not in json.dumps(run.error)
    finally:
        stub.close()
    assert len(carried(stub.requests)) == 1


def test_item2_call_time_check_after_integration_moved(org, support, owner_client, editor, api):
    """A model may send an integration's credentials to that integration's host; once the integration
    moves, the old host is no longer allowed and the engine refuses before sending."""
    client = api.as_user(editor)
    base_url, stub = start_openai_stub(script=[{"content": "fine"}])
    try:
        f.secret(org, "SHOP_TOKEN", VALUE)  # no allowedHosts of its own
        f.integration(org, "shop-api", credentials_secret="SHOP_TOKEN", config={"baseUrl": base_url, "headers": {}})
        created = post_revision(client, openai_spec(base_url, api_key="{{secret.SHOP_TOKEN}}"))
        assert created.status_code == 201, created.content
        assert execute(client, created.json()["id"]).status_code == 200
        moved = owner_client.patch("/v1/acme/integrations/shop-api",
                                   {"config": {"baseUrl": "https://shop.example/api"}}, format="json")
        assert moved.status_code == 200, moved.content
        seen = len(stub.requests)
        refused = execute(client, created.json()["id"])
        assert refused.status_code == 422 and refused.json()["error"]["code"] == "secret_destination"
        assert len(stub.requests) == seen
    finally:
        stub.close()
    assert len(carried(stub.requests)) == 1


def test_item2_integration_host_allowed(org, support, editor, api):
    """An integration's credentials go to the integration (its host counts as allowed), and a model may
    send them there too; anywhere else is refused."""
    from agents.engine.testing import StubReply, start_json_server

    shop_url, shop = start_json_server(lambda request: StubReply(200, {"status": "shipped"}))
    try:
        f.secret(org, "SHOP_TOKEN", VALUE)  # no allowedHosts: only its integration's host
        f.integration(org, "shop-api", credentials_secret="SHOP_TOKEN", config={"baseUrl": shop_url, "headers": {}})
        spec = local_spec("done")
        spec["steps"][0]["model"]["script"] = [{"toolCalls": [{"name": "lookup", "arguments": {"id": "42"}}]},
                                               {"reply": "done"}]
        spec["steps"][0]["tools"] = [{"name": "lookup", "integration": "shop-api",
                                      "parameters": {"type": "object"}}]
        _agent, revision = agent_with_revision(org, "shop-agent", spec)
        run = run_once(Agent.objects.get(slug="shop-agent"))
        assert run.status == "ok", run.error
        assert shop.requests[0].headers["Authorization"] == f"Bearer {VALUE}"
    finally:
        shop.close()
    client = api.as_user(editor)
    assert post_revision(client, openai_spec(shop_url, api_key="{{secret.SHOP_TOKEN}}")).status_code == 201
    refused = post_revision(client, openai_spec("https://api.openai.com/v1", api_key="{{secret.SHOP_TOKEN}}"))
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "secret_destination"
    assert refused.json()["error"]["details"]["host"] == "api.openai.com"


def test_item2_llm_judge_secret_to_foreign_host_refused(org, editor, api):
    """An llmJudge metric's model is a model like an agent's: its secrets go only to allowed hosts."""
    from evaluations.models import Dataset

    f.secret(org, "OPENAI_KEY", VALUE, allowed_hosts=["api.openai.com"])
    client = api.as_user(editor)

    def judge(base_url):
        return {"slug": "golden", "metrics": [{"type": "exact"}, {
            "type": "llmJudge", "rubric": "Polite.", "threshold": 0.5,
            "model": {"provider": "openai", "name": "gpt-4o-mini", "baseUrl": base_url,
                      "apiKey": "{{secret.OPENAI_KEY}}"}}]}

    refused = client.post("/v1/acme/datasets", judge("http://evil.example/v1"), format="json")
    assert refused.status_code == 400, refused.content
    error = refused.json()["error"]
    assert error["code"] == "secret_destination" and error["details"]["host"] == "evil.example"
    assert error["details"]["path"] == "$.metrics[1].model.apiKey"
    assert not Dataset.objects.exists()
    assert client.post("/v1/acme/datasets", judge("https://api.openai.com/v1"), format="json").status_code == 201
    patched = client.patch("/v1/acme/datasets/golden", {"metrics": judge("http://evil.example/v1")["metrics"]},
                           format="json")
    assert patched.status_code == 400 and patched.json()["error"]["code"] == "secret_destination"
    assert Dataset.objects.get(slug="golden").metrics[1]["model"]["baseUrl"] == "https://api.openai.com/v1"


# --- upgrade ---------------------------------------------------------------------------------------
def test_item2_backfill_migration_keeps_deployed_agents_working(org):
    migration = importlib.import_module(BACKFILL)
    assert ("orgs", "0003_security_fields") in migration.Migration.dependencies
    assert MigrationRecorder.Migration.objects.filter(app="orgs", name=BACKFILL.rsplit(".", 1)[1]).exists()
    base_url, stub = start_openai_stub(script=[{"content": "still working"}])
    try:
        port = int(base_url.rsplit(":", 1)[1].split("/")[0])
        # Revisions written before allowedHosts existed (the secrets did not exist yet, so nothing was checked).
        live, deployed = agent_with_revision(org, "live", openai_spec(base_url))  # deployed
        router, _ = agent_with_revision(org, "router", send_secrets(local_spec(), "ROUTER_KEY"), deploy=True)
        pinned_agent, pinned = agent_with_revision(
            org, "pinned", openai_spec("https://llm.internal:8443/v1", api_key="{{secret.PINNED_KEY}}"), deploy=False)
        from agents.services import create_revision

        router_v2 = create_revision(actor=SYSTEM, agent=router, spec={
            **local_spec(), "steps": [{**local_spec()["steps"][0], "subAgents": [
                {"agent": "pinned", "revisionId": pinned.id}]}]})
        Agent.objects.filter(pk=router.pk).update(deployed_revision=router_v2)
        agent_with_revision(org, "draft", openai_spec("http://evil.example/v1", api_key="{{secret.DRAFT_ONLY}}"),
                            deploy=False)
        for name in ("OPENAI_KEY", "ROUTER_KEY", "PINNED_KEY", "DRAFT_ONLY"):
            f.secret(org, name, VALUE)  # as the schema migration left them: no allowedHosts
        f.secret(org, "KEPT", VALUE, allowed_hosts=["own.example"])
        assert run_once(live).error["code"] == "secret_destination"  # what upgrading without the backfill does

        migration.backfill(global_apps, None)

        hosts = dict(Secret.objects.filter(organization=org).values_list("name", "allowed_hosts"))
        assert hosts == {"OPENAI_KEY": [f"127.0.0.1:{port}"], "ROUTER_KEY": [],  # the router's v1 is no longer deployed
                         "PINNED_KEY": ["llm.internal:8443"],  # pinned by a deployed revision
                         "DRAFT_ONLY": [],  # a draft's host is not trusted
                         "KEPT": ["own.example"]}
        assert run_once(live).status == "ok"
        assert len(carried(stub.requests)) == 1
    finally:
        stub.close()
    assert deployed.id == Agent.objects.get(pk=live.pk).deployed_revision_id


# --- readiness and diff --------------------------------------------------------------------------
def test_item2_readiness_and_diff_show_destinations(org, support, owner_client, editor, api):
    client = api.as_user(editor)
    f.secret(org, "OPENAI_KEY", VALUE, allowed_hosts=["api.openai.com", "llm.internal"])
    f.secret(org, "SHOP_TOKEN", "shop-value")
    f.integration(org, "shop-api", credentials_secret="SHOP_TOKEN",
                  config={"baseUrl": "https://shop.example/api", "headers": {}})
    v1 = post_revision(client, openai_spec()).json()["id"]
    spec = openai_spec("https://llm.internal/v1", headers={"X-Org": "{{secret.OPENAI_KEY}}"})
    spec["steps"][0]["tools"] = [{"name": "lookup", "integration": "shop-api", "parameters": {"type": "object"}}]
    v2 = post_revision(client, spec).json()["id"]

    checks = {c["check"]: c for c in client.get(f"/v1/acme/agents/support/readiness?revisionId={v2}").json()["checks"]}
    secrets = checks["secrets"]
    assert secrets["status"] == "pass"
    assert secrets["data"]["destinations"] == [
        {"secret": "OPENAI_KEY", "path": "$.steps[0].model.apiKey", "host": "llm.internal", "allowed": True},
        {"secret": "OPENAI_KEY", "path": '$.steps[0].model.headers["X-Org"]', "host": "llm.internal", "allowed": True},
        {"secret": "SHOP_TOKEN", "path": "integration shop-api", "host": "shop.example", "allowed": True},
    ]
    assert "OPENAI_KEY -> llm.internal" in secrets["detail"] and "SHOP_TOKEN -> shop.example" in secrets["detail"]

    diff = client.get(f"/v1/acme/agents/support/revisions/{v2}:diff?against={v1}").json()
    assert diff["secretDestinations"] == {
        "before": [{"secret": "OPENAI_KEY", "path": "$.steps[0].model.apiKey", "host": "api.openai.com"}],
        "after": [{"secret": "OPENAI_KEY", "path": "$.steps[0].model.apiKey", "host": "llm.internal"},
                  {"secret": "OPENAI_KEY", "path": '$.steps[0].model.headers["X-Org"]', "host": "llm.internal"}],
    }

    # The owner narrows the hosts: readiness fails and says which host, and deploy is refused.
    owner_client.put("/v1/acme/secrets/OPENAI_KEY", {"allowedHosts": ["api.openai.com"]}, format="json")
    checks = {c["check"]: c for c in client.get(f"/v1/acme/agents/support/readiness?revisionId={v2}").json()["checks"]}
    secrets = checks["secrets"]
    assert secrets["status"] == "fail"
    assert "OPENAI_KEY at $.steps[0].model.apiKey would go to llm.internal" in secrets["detail"]
    assert [u["host"] for u in secrets["data"]["hostNotAllowed"]] == ["llm.internal", "llm.internal"]
    assert [d["allowed"] for d in secrets["data"]["destinations"]] == [False, False, True]
    deploy = client.post("/v1/acme/agents/support:deploy", {"revisionId": v2, "reason": "ship"}, format="json")
    assert deploy.status_code == 409 and deploy.json()["error"]["code"] == "not_ready"
    assert Integration.objects.get(slug="shop-api").credentials_secret == "SHOP_TOKEN"
    assert VALUE not in json.dumps(checks)
