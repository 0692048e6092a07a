"""Issue 12 item 3: calls to internal addresses (SSRF).

Outbound URLs (model baseUrl, integration baseUrl, budget and evaluation-schedule
webhooks) are refused when written if they name localhost or an internal address;
every product HTTP client checks the *resolved* address at connect time (so a
host name that resolves to loopback, or a redirect, gets nowhere); errors say
"could not be reached" / "not allowed by the egress policy", never the upstream
body, the transport error, the address or the port's state.

The suite allows 127.0.0.1 for its stub servers (tests/conftest.py); these tests
take that away (``no_allow``) or narrow it to one port, through the setting.
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from agents.engine import egress
from agents.engine.testing import StubReply, StubServer, start_openai_stub
from agents.models import Agent, Revision
from monitoring.alerts import deliver, raise_alert, webhook_client
from monitoring.models import Budget, Run, Span
from orgs.models import Integration

from . import factories as f
from .builders import agent_with_revision, local_spec

ROOT = Path(__file__).resolve().parent.parent
# What an internal service might answer: none of it may reach a run, an API answer or an alert row.
INTERNAL_BODY = "redis_version:7.2.4 role:master connected_clients:3"
REFUSED = egress.DENIED_MESSAGE
# Names this machine's resolver need not know (refused when written; unresolvable names reach nothing).
WRITE_TIME_ONLY = {"LocalHost.", "app.localhost"}


class CountingStub(StubServer):
    """A loopback stub that counts TCP connections it accepts (not only requests)."""

    def __init__(self, handler):
        super().__init__(handler)
        self.connections = 0

    def verify_request(self, request, client_address) -> bool:
        with self.lock:
            self.connections += 1
        return True


@pytest.fixture
def stubs():
    started: list[CountingStub] = []

    def start(handler=lambda request: StubReply(200, {"ok": True})) -> CountingStub:
        server = CountingStub(handler)
        server.thread.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


@pytest.fixture
def no_allow(settings):
    """The production default: nothing internal is allowed."""
    settings.FRUXON_EGRESS_ALLOW = ""
    assert egress.current_policy().allow == ()


@pytest.fixture
def fake_dns(monkeypatch):
    """Resolve chosen names to chosen addresses at the socket.getaddrinfo level (what every resolver call uses).

    ``lookups`` records every host asked for, in order.
    """
    real = socket.getaddrinfo
    table: dict[str, list[str]] = {}
    lookups: list[str] = []

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        name = host.decode() if isinstance(host, bytes) else host
        lookups.append(name)
        if name in table:
            return [(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                     (ip, port, 0, 0) if ":" in ip else (ip, port)) for ip in table[name]]
        return real(host, port, family, type, proto, flags)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return table, lookups


def openai_spec(base_url: str) -> dict:
    return {"inputs": {"question": {"type": "string", "required": True}},
            "steps": [{"name": "answer", "model": {"provider": "openai", "name": "gpt-4o-mini", "baseUrl": base_url},
                       "prompt": "{{input.question}}"}],
            "output": "{{steps.answer.output}}"}


def _new_agent(client, slug="support"):
    response = client.post("/v1/acme/agents", {"slug": slug, "name": slug}, format="json")
    assert response.status_code == 201, response.content


def _post_revision(client, base_url, slug="support"):
    return client.post(f"/v1/acme/agents/{slug}/revisions", {"spec": openai_spec(base_url)}, format="json")


def _execute(client, slug="support"):
    return client.post(f"/v1/acme/agents/{slug}:execute", {"input": {"question": "hi"}}, format="json")


def _assert_egress_denied(response, field):
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "egress_denied", error
    assert field in error["details"]["fields"], error
    return error


# --- write time -----------------------------------------------------------------------------------
def test_item3_model_baseurl_loopback_refused_at_creation(org, owner_client, no_allow):
    _new_agent(owner_client)
    response = _post_revision(owner_client, "http://127.0.0.1:6379/v1")
    error = _assert_egress_denied(response, "spec.steps[0].model.baseUrl")
    assert "FRUXON_EGRESS_ALLOW" in error["message"]
    assert not Revision.objects.filter(agent__slug="support").exists()
    # A public host name is accepted (names are not resolved at write time).
    assert _post_revision(owner_client, "https://api.openai.com/v1").status_code == 201


@pytest.mark.parametrize("host", [
    "127.0.0.1", "127.0.0.2", "localhost", "LocalHost.", "2130706433", "0x7f.1", "0x7f000001", "[::1]",
    "169.254.169.254", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[fd00:ec2::254]", "10.0.0.5", "172.16.3.4",
    "192.168.1.1", "100.64.0.1", "0.0.0.0", "[::]", "[fe80::1]", "224.0.0.1", "app.localhost",
])
def test_item3_forms_of_loopback(host, org, owner, api, no_allow, stubs):
    """Every spelling is refused when written, and (the guarantee) at connect time by the product's client."""
    client = api.as_user(owner)
    if not Agent.objects.filter(slug="support").exists():
        _new_agent(client)
    stub = stubs()
    port = stub.server_address[1]
    _assert_egress_denied(_post_revision(client, f"http://{host}:{port}/v1"), "spec.steps[0].model.baseUrl")
    assert not Revision.objects.exists()
    if host in WRITE_TIME_ONLY:
        return
    with pytest.raises(httpx.ConnectError) as caught:
        egress.client().post(f"http://{host}:{port}/v1/chat/completions", json={})
    assert egress.is_denied(caught.value) and str(caught.value) == REFUSED
    assert stub.connections == 0


def test_item3_templated_host_is_checked_at_connect_time(org, owner_client, no_allow, stubs):
    """A baseUrl whose host comes from the input cannot be judged when written; the call is refused."""
    stub = stubs()
    _new_agent(owner_client)
    spec = openai_spec("http://{{input.question}}/v1")
    response = owner_client.post("/v1/acme/agents/support/revisions", {"spec": spec}, format="json")
    assert response.status_code == 201, response.content
    Agent.objects.filter(slug="support").update(deployed_revision_id=response.json()["id"])
    answer = owner_client.post("/v1/acme/agents/support:execute",
                               {"input": {"question": f"127.0.0.1:{stub.server_address[1]}"}}, format="json")
    assert answer.status_code == 502 and answer.json()["error"]["message"] == REFUSED
    assert stub.connections == 0


# --- connect time ---------------------------------------------------------------------------------
def test_item3_connect_time_check_on_resolved_address(org, owner_client, no_allow, stubs, fake_dns, settings):
    """A name is not judged by its spelling: ``internal.example.test`` resolving to 127.0.0.1 passes the
    write-time check, and the connect-time check on the resolved address refuses it; the stub sees nothing."""
    table, lookups = fake_dns
    table["internal.example.test"] = ["127.0.0.1"]
    table["mixed.example.test"] = ["93.184.216.34", "127.0.0.1"]  # one public answer does not launder the other
    stub = stubs()
    port = stub.server_address[1]
    _new_agent(owner_client)
    created = _post_revision(owner_client, f"http://internal.example.test:{port}/v1")
    assert created.status_code == 201, created.content
    Agent.objects.filter(slug="support").update(deployed_revision_id=created.json()["id"])

    answer = _execute(owner_client)
    assert answer.status_code == 502, answer.content
    error = answer.json()["error"]
    assert error["code"] == "provider_error" and error["message"] == REFUSED
    assert "127.0.0.1" not in json.dumps(answer.json()) and str(port) not in error["message"]
    run = Run.objects.get(pk=answer["X-Fruxon-Run-Id"])
    assert run.status == "error" and run.error["message"] == REFUSED
    assert stub.connections == 0 and lookups.count("internal.example.test") == 1  # refused at once: no retries

    with pytest.raises(httpx.ConnectError) as caught:
        egress.client().get(f"http://mixed.example.test:{port}/")
    assert egress.is_denied(caught.value) and stub.connections == 0

    # Allowed, the same name works, and it is resolved once: the connection goes to the checked
    # address (later lookups are only of the literal), while Host stays the name.
    settings.FRUXON_EGRESS_ALLOW = f"127.0.0.1:{port}"
    lookups.clear()
    reply = egress.client().get(f"http://internal.example.test:{port}/ping")
    assert reply.status_code == 200 and stub.connections == 1
    assert lookups.count("internal.example.test") == 1 and set(lookups) <= {"internal.example.test", "127.0.0.1"}
    assert stub.requests[-1].headers["Host"] == f"internal.example.test:{port}"


def test_item3_redirect_to_internal_refused(org, owner_client, settings, stubs):
    """The product's clients follow no redirect; a client that did would be refused at the next hop."""
    inner = stubs(lambda request: StubReply(200, {"choices": [{"message": {"content": INTERNAL_BODY}}]}))
    target = f"http://127.0.0.1:{inner.server_address[1]}/v1/chat/completions"
    outer = stubs(lambda request: StubReply(307, {"moved": True}, headers={"Location": target}))
    settings.FRUXON_EGRESS_ALLOW = f"127.0.0.1:{outer.server_address[1]}"  # only the first hop
    _new_agent(owner_client)
    created = _post_revision(owner_client, f"http://127.0.0.1:{outer.server_address[1]}/v1")
    assert created.status_code == 201, created.content
    Agent.objects.filter(slug="support").update(deployed_revision_id=created.json()["id"])

    answer = _execute(owner_client)
    assert answer.status_code == 502
    assert answer.json()["error"]["message"] == "the model provider answered HTTP 307"
    assert outer.connections == 1 and inner.connections == 0

    following = egress.client(follow_redirects=True)
    with pytest.raises(httpx.ConnectError) as caught:
        following.post(f"http://127.0.0.1:{outer.server_address[1]}/v1/chat/completions", json={})
    assert egress.is_denied(caught.value) and inner.connections == 0


def test_item3_async_client_built_the_products_way_is_refused(no_allow, stubs, fake_dns, settings):
    stub = stubs()
    port = stub.server_address[1]
    table, _ = fake_dns
    table["internal.example.test"] = ["127.0.0.1"]

    async def call(url):
        async with egress.async_client() as client:
            return await client.get(url)

    for url in (f"http://127.0.0.1:{port}/", f"http://internal.example.test:{port}/", f"http://[::1]:{port}/"):
        with pytest.raises(httpx.ConnectError) as caught:
            asyncio.run(call(url))
        assert egress.is_denied(caught.value), url
    assert stub.connections == 0
    settings.FRUXON_EGRESS_ALLOW = f"127.0.0.1:{port}"
    assert asyncio.run(call(f"http://internal.example.test:{port}/")).json() == {"ok": True}
    assert stub.connections == 1


# --- integrations and webhooks --------------------------------------------------------------------
def test_item3_integration_and_webhooks_validated(org, owner_client, no_allow, stubs, fake_dns,
                                                  django_capture_on_commit_callbacks):
    agent_with_revision(org, "support", local_spec())
    bad = ["http://127.0.0.1:6379/", "http://localhost/", "http://[::1]/", "http://169.254.169.254/latest/meta-data",
           "http://10.1.2.3/hook", "http://user:pass@hooks.example.com/"]
    for url in bad:
        response = owner_client.post("/v1/acme/integrations", {"slug": "crm", "config": {"baseUrl": url}},
                                     format="json")
        _assert_egress_denied(response, "config.baseUrl")
    ftp = owner_client.post("/v1/acme/integrations", {"slug": "crm", "config": {"baseUrl": "ftp://hooks.example.com/"}},
                            format="json")
    assert ftp.status_code == 400  # the serializer's URL check already refuses other schemes
    assert not Integration.objects.filter(slug="crm").exists()
    created = owner_client.post("/v1/acme/integrations", {"slug": "crm", "config": {"baseUrl": "https://crm.example.com"}},
                                format="json")
    assert created.status_code == 201, created.content
    patched = owner_client.patch("/v1/acme/integrations/crm", {"config": {"baseUrl": "http://192.168.0.10/api"}},
                                 format="json")
    _assert_egress_denied(patched, "config.baseUrl")
    assert Integration.objects.get(slug="crm").config["baseUrl"] == "https://crm.example.com"

    for url in ("http://169.254.169.254/latest", "http://localhost:6379/", "http://user:pw@hooks.example.com/x"):
        budget = owner_client.put("/v1/acme/agents/support/budget", {"amountUsd": "10", "alertWebhook": url},
                                  format="json")
        _assert_egress_denied(budget, "alertWebhook")
        schedule = owner_client.put("/v1/acme/agents/support/evaluation-schedule",
                                    {"everyHours": 24, "enabled": False, "alertWebhook": url}, format="json")
        _assert_egress_denied(schedule, "alertWebhook")
    assert not Budget.objects.exists()

    # Delivery is checked at connect time too: a hook whose name resolves to loopback is not called,
    # and the alert row records a generic reason.
    table, _ = fake_dns
    table["hooks.example.test"] = ["127.0.0.1"]
    stub = stubs(lambda request: StubReply(500, {"detail": INTERNAL_BODY}))
    alert = raise_alert(organization=org, kind="budget.threshold", subject="s", payload={},
                        webhook=f"http://hooks.example.test:{stub.server_address[1]}/h", dedupe_key="t1")
    deliver(alert.pk)  # the first attempt (raise_alert's own runs after commit, which this test never reaches)
    alert.refresh_from_db()
    assert alert.last_error == f"webhook: {REFUSED}" and not alert.webhook_sent and stub.connections == 0


def test_item3_judge_model_validated(org, owner_client, no_allow):
    """An llmJudge metric's model is called like an agent's: its baseUrl is checked when the dataset is written."""
    judge = {"type": "llmJudge", "rubric": "polite?",
             "model": {"provider": "openai", "name": "gpt-4o-mini", "baseUrl": "http://169.254.169.254/v1"}}
    response = owner_client.post("/v1/acme/datasets", {"slug": "judged", "metrics": [judge]}, format="json")
    _assert_egress_denied(response, "metrics[0].model.baseUrl")
    created = owner_client.post("/v1/acme/datasets", {"slug": "judged", "metrics": [{"type": "exact"}]}, format="json")
    assert created.status_code == 201, created.content
    patched = owner_client.patch("/v1/acme/datasets/judged", {"metrics": [judge]}, format="json")
    _assert_egress_denied(patched, "metrics[0].model.baseUrl")
    assert owner_client.get("/v1/acme/datasets/judged").json()["metrics"] == [{"type": "exact"}]


def test_item3_import_refuses_internal_integration(org, owner, api, no_allow):
    """Import (and promote, which applies the same document) checks what it creates like the API does."""
    client = api.as_user(owner)
    source = client.get("/v1/acme/export")
    assert source.status_code == 200, source.content
    document = source.json()
    document["integrations"] = [{"slug": "internal", "kind": "http", "config": {"baseUrl": "http://10.0.0.7/api"}}]
    response = client.post("/v1/acme/import", document, format="json")
    _assert_egress_denied(response, "integrations.internal.config.baseUrl")
    assert not Integration.objects.filter(slug="internal").exists()


# --- the allow list -------------------------------------------------------------------------------
def test_item3_allow_list_with_port(org, owner_client, settings, stubs):
    stub = stubs()
    port = stub.server_address[1]
    other = stubs()
    settings.FRUXON_EGRESS_ALLOW = f"10.0.0.0/8,127.0.0.1:{port},[::1]:{port}"
    _new_agent(owner_client)
    _assert_egress_denied(_post_revision(owner_client, f"http://127.0.0.1:{other.server_address[1]}/v1"),
                          "spec.steps[0].model.baseUrl")
    base_url, openai = start_openai_stub(script=[{"content": "fine"}])
    try:
        openai_port = int(base_url.rsplit(":", 1)[1].split("/")[0])
        settings.FRUXON_EGRESS_ALLOW = f"10.0.0.0/8,127.0.0.1:{port},127.0.0.1:{openai_port}"
        created = _post_revision(owner_client, base_url)
        assert created.status_code == 201, created.content
        Agent.objects.filter(slug="support").update(deployed_revision_id=created.json()["id"])
        answer = _execute(owner_client)
        assert answer.status_code == 200 and answer.json()["output"] == "fine"
    finally:
        openai.close()
    assert egress.client().get(f"http://127.0.0.1:{port}/").status_code == 200
    with pytest.raises(httpx.ConnectError) as caught:
        egress.client().get(f"http://127.0.0.1:{other.server_address[1]}/")
    assert egress.is_denied(caught.value) and other.connections == 0
    # A CIDR without a port allows every port of its range (written, not resolved).
    assert _post_revision(owner_client, "http://10.20.30.40:8080/v1").status_code == 201


def test_item3_bad_allow_value_fails_startup():
    for value, hint in (("127.0.0.1:99999", "port"), ("localhost:80", "host names"), ("10.0.0.1/8", "host bits"),
                        ("127.0.0.1,,10.0.0.0/8", "empty entry")):
        env = {**os.environ, "FRUXON_EGRESS_ALLOW": value, "DEBUG": "1"}
        done = subprocess.run([sys.executable, "-c", "import django; django.setup()"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60,)
        assert done.returncode != 0, value
        assert "ImproperlyConfigured: FRUXON_EGRESS_ALLOW" in done.stderr and hint in done.stderr, done.stderr


# --- generic errors -------------------------------------------------------------------------------
def test_item3_errors_are_generic(org, owner_client, settings, stubs):
    """Neither the upstream body nor the transport error (which tells open from closed ports) is shown."""
    def assert_clean(text: str, port: int):
        for leak in (INTERNAL_BODY, "redis_version", "Errno", "refused", "ConnectError", "127.0.0.1", str(port)):
            assert leak not in text, (leak, text)

    # 1. A provider answering an error with a body: the status, not the body.
    talker = stubs(lambda request: StubReply(401, {"error": {"message": INTERNAL_BODY}}))
    _new_agent(owner_client)
    created = _post_revision(owner_client, f"http://127.0.0.1:{talker.server_address[1]}/v1")
    Agent.objects.filter(slug="support").update(deployed_revision_id=created.json()["id"])
    answer = _execute(owner_client)
    assert answer.status_code == 502 and answer.json()["error"]["message"] == "the model provider answered HTTP 401"
    assert_clean(json.dumps(answer.json()), talker.server_address[1])
    run = Run.objects.get(pk=answer["X-Fruxon-Run-Id"])
    assert_clean(json.dumps([run.error, list(Span.objects.filter(run=run).values_list("error", "output"))],
                            default=str), talker.server_address[1])

    # 2. A closed port (allowed address): "could not be reached", nothing about why.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    _new_agent(owner_client, "closed")
    created = _post_revision(owner_client, f"http://127.0.0.1:{closed}/v1", slug="closed")
    Agent.objects.filter(slug="closed").update(deployed_revision_id=created.json()["id"])
    answer = _execute(owner_client, "closed")
    assert answer.status_code == 502
    assert answer.json()["error"]["message"].startswith("the model provider could not be reached")
    assert_clean(json.dumps(answer.json()), closed)

    # 3. A tool whose integration is unreachable, and one refused by the policy: generic span errors.
    f.integration(org, "shop", config={"baseUrl": f"http://127.0.0.1:{closed}/api", "headers": {}})
    tool_spec = {"inputs": {"question": {"type": "string", "required": True}},
                 "steps": [{"name": "answer", "prompt": "{{input.question}}",
                            "tools": [{"name": "lookup", "integration": "shop"}],
                            "model": {"provider": "fruxon-local", "name": "local",
                                      "script": [{"toolCalls": [{"name": "lookup", "arguments": {}}]},
                                                 {"reply": "done"}]}}],
                 "output": "{{steps.answer.output}}"}
    agent, _ = agent_with_revision(org, "tooling", tool_spec)
    answer = _execute(owner_client, "tooling")
    assert answer.status_code == 200, answer.content
    tool_span = Span.objects.get(run_id=answer["X-Fruxon-Run-Id"], kind="tool")
    assert tool_span.status == "error" and tool_span.output == {"error": {"message": "integration 'shop' could not be reached"}}
    settings.FRUXON_EGRESS_ALLOW = ""
    answer = _execute(owner_client, "tooling")
    tool_span = Span.objects.get(run_id=answer["X-Fruxon-Run-Id"], kind="tool")
    assert tool_span.output == {"error": {"message": REFUSED}}

    # 4. A webhook: the status it answered, never its body; a closed port: "could not be reached".
    settings.FRUXON_EGRESS_ALLOW = "127.0.0.1"
    for webhook, expected in ((f"http://127.0.0.1:{talker.server_address[1]}/h", "webhook answered HTTP 401"),
                              (f"http://127.0.0.1:{closed}/h", "webhook could not be reached")):
        alert = raise_alert(organization=org, kind="budget.threshold", subject="s", payload={},
                            webhook=webhook, dedupe_key=webhook)
        deliver(alert.pk)
        alert.refresh_from_db()
        assert alert.last_error == expected
    assert isinstance(webhook_client(), httpx.Client)


def test_item3_every_product_client_goes_through_the_policy(no_allow, stubs):
    """The engine's default sync client and the webhook client refuse loopback (the async one: the test above)."""
    from agents.engine.transport import default_client

    stub = stubs()
    for client in (default_client(), webhook_client()):
        with pytest.raises(httpx.ConnectError) as caught:
            client.get(f"{stub.base_url}/")
        assert egress.is_denied(caught.value)
        assert client.follow_redirects is False
    assert stub.connections == 0


def test_item3_openapi_documents_egress_denied():
    """Every operation that stores an outbound URL names egress_denied under its 400."""
    from .test_schema import _schema

    paths = _schema()["paths"]
    for path, method in (("/v1/{tenant}/agents/{agent}/revisions", "post"), ("/v1/{tenant}/integrations", "post"),
                         ("/v1/{tenant}/integrations/{slug}", "patch"), ("/v1/{tenant}/agents/{agent}/budget", "put"),
                         ("/v1/{tenant}/agents/{agent}/evaluation-schedule", "put"), ("/v1/{tenant}/import", "post"),
                         ("/v1/{tenant}/agents/{agent}:promote", "post"), ("/v1/{tenant}/datasets", "post"),
                         ("/v1/{tenant}/datasets/{dataset}", "patch")):
        assert "egress_denied" in paths[path][method]["responses"]["400"]["description"], (path, method)


def test_item3_admin_forms_refuse_internal_urls(org, owner, no_allow):
    """The admin writes through the same services and shows the refusal on the form (nothing written)."""
    from django.test import Client
    from django.urls import reverse

    agent, _ = agent_with_revision(org, "support", local_spec())
    admin = Client()
    admin.force_login(owner)
    integration = admin.post(reverse("admin:orgs_integration_add"), {
        "organization": org.pk, "slug": "crm", "name": "CRM", "kind": "http", "status": "connected",
        "config": json.dumps({"baseUrl": "http://127.0.0.1:6379/"})})
    assert integration.status_code == 200 and b"egress policy" in integration.content
    assert not Integration.objects.filter(slug="crm").exists()
    budget = admin.post(reverse("admin:monitoring_budget_add"), {
        "agent": agent.pk, "period": "month", "amount_usd": "10", "enforce": "on", "alert_thresholds": "0.5",
        "alert_webhook": "http://169.254.169.254/latest", "alert_emails": ""})
    assert budget.status_code == 200 and budget.context["adminform"].form.errors["alert_webhook"]
    assert not Budget.objects.exists()
    revisions = Revision.objects.count()
    revision = admin.post(reverse("admin:agents_revision_add"), {
        "agent": str(agent.pk), "message": "m", "spec": json.dumps(openai_spec("http://[::1]:11434/v1"))})
    assert revision.status_code == 200 and b"egress policy" in revision.content
    assert Revision.objects.count() == revisions
