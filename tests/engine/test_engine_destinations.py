"""Issue 12 item 2 in the engine alone: host entries, URL hosts, spec destinations and the call-time refusal."""

from __future__ import annotations

import json

import pytest

from agents.engine import IntegrationInfo, RunContext, run
from agents.engine.destinations import (
    HostError,
    host_allowed,
    hosts_by_secret,
    normalize_host_entry,
    secret_destinations,
    secret_misuses,
    url_host,
)
from agents.engine.testing import StaticRuntime, StaticSecret, StubReply

VALUE = "sk-engine-item2-value"


@pytest.mark.parametrize("entry,canonical", [
    ("api.openai.com", "api.openai.com"), ("API.OpenAI.COM", "api.openai.com"), ("api.openai.com.", "api.openai.com"),
    ("llm.internal:8443", "llm.internal:8443"), ("bücher.example", "xn--bcher-kva.example"),
    ("10.0.0.7:80", "10.0.0.7:80"), ("[::1]", "[::1]"), ("::1", "[::1]"), ("[0:0::1]:8080", "[::1]:8080"),
])
def test_item2_host_entries_are_stored_canonical(entry, canonical):
    assert normalize_host_entry(entry) == canonical


@pytest.mark.parametrize("entry", ["*", "*.openai.com", "https://api.openai.com", "api.openai.com/v1", "user@host",
                                   "host:0", "host:65536", "host:http", "a b", "", "-bad.example", "[::1", "[zz]",
                                   "a..b", 7, None])
def test_item2_bad_host_entries_are_refused(entry):
    with pytest.raises(HostError):
        normalize_host_entry(entry)


def test_item2_url_hosts_match_exactly_with_ports_when_given():
    https = url_host("https://API.openai.com/v1")
    assert str(https) == "api.openai.com" and https.port == 443
    assert host_allowed(https, ["api.openai.com"]) and host_allowed(https, ["api.openai.com:443"])
    assert not host_allowed(https, ["api.openai.com:80"]) and not host_allowed(https, ["openai.com"])
    assert not host_allowed(url_host("https://api.openai.com.evil.example/v1"), ["api.openai.com"])
    assert host_allowed(url_host("https://api.openai.com:8443/v1"), ["api.openai.com"])  # no port: any port
    assert not host_allowed(url_host("https://api.openai.com:8443/v1"), ["api.openai.com:443"])
    assert str(url_host("http://llm.internal:8080/v1")) == "llm.internal:8080"
    assert host_allowed(url_host("http://bücher.example/"), ["bücher.example"])
    assert host_allowed(url_host("http://[::1]:8080/v1"), ["[::1]:8080"])
    # httpx's reading decides: the host after the user info, not before it.
    assert str(url_host("http://api.openai.com@evil.example/")) == "evil.example"
    assert not host_allowed(url_host("ftp://api.openai.com/"), ["api.openai.com"])
    assert not host_allowed(None, ["api.openai.com"]) and not host_allowed(https, [])
    assert not host_allowed(https, ["*", "https://api.openai.com"])  # a malformed stored entry allows nothing


def test_item2_spec_destinations_and_misuses():
    spec = {"steps": [
        {"name": "a", "prompt": "x {{secret.IN_PROMPT}}",
         "model": {"provider": "openai", "name": "m", "apiKey": "{{secret.KEY}}",
                   "headers": {"X-Org": "org {{secret.ORG}}"}}},
        {"name": "b", "prompt": "x", "model": {"provider": "openai", "name": "m", "baseUrl": "https://{{input.h}}/v1",
                                               "apiKey": "{{secret.KEY}}"}},
        {"name": "c", "prompt": "x", "model": {"provider": "openai", "name": "m",
                                               "baseUrl": "http://llm.internal:8080/{{input.path}}",
                                               "apiKey": "{{secret.LOCAL}}"}},
    ], "output": "{{secret.OUT}}"}
    assert [use.to_dict() for use in secret_destinations(spec)] == [
        {"secret": "KEY", "path": "$.steps[0].model.apiKey", "host": "api.openai.com"},
        {"secret": "ORG", "path": '$.steps[0].model.headers["X-Org"]', "host": "api.openai.com"},
        {"secret": "KEY", "path": "$.steps[1].model.apiKey", "host": None},  # the input decides: never allowed
        {"secret": "LOCAL", "path": "$.steps[2].model.apiKey", "host": "llm.internal:8080"},
    ]
    assert secret_misuses(spec) == [("IN_PROMPT", "$.steps[0].prompt"), ("OUT", "$.output")]
    assert hosts_by_secret([spec]) == {"KEY": {"api.openai.com"}, "ORG": {"api.openai.com"},
                                       "LOCAL": {"llm.internal:8080"}}


def _spec(base_url, **model):
    return {"inputs": {"host": {"type": "string"}},
            "steps": [{"name": "answer", "prompt": "hi",
                       "model": {"provider": "openai", "name": "gpt-4o-mini", "baseUrl": base_url,
                                 "apiKey": "{{secret.KEY}}", **model}}]}


def test_item2_engine_refuses_before_sending(openai_stub, http_client):
    base_url, server = openai_stub()
    port = base_url.rsplit(":", 1)[1].split("/")[0]
    allowed = StaticRuntime(secrets={"KEY": StaticSecret(VALUE, allowed_hosts=(f"127.0.0.1:{port}",))},
                            http_client=http_client)
    ok = run(_spec(base_url), {}, context=RunContext(agent="a"), runtime=allowed)
    assert ok.status == "ok" and server.requests[0].headers["Authorization"] == f"Bearer {VALUE}"

    for runtime, spec, inputs in (
        (StaticRuntime(secrets={"KEY": StaticSecret(VALUE, allowed_hosts=("127.0.0.1:1",))},
                       http_client=http_client), _spec(base_url), {}),
        (StaticRuntime(secrets={"KEY": VALUE}, http_client=http_client), _spec(base_url), {}),  # no hosts: nowhere
        # A templated base URL is checked as rendered: the input cannot steer the key elsewhere.
        (allowed, _spec(base_url.replace("127.0.0.1", "{{input.host}}")), {"host": "localhost"}),
    ):
        result = run(spec, inputs, context=RunContext(agent="a"), runtime=runtime)
        assert result.status == "error" and result.error["code"] == "secret_destination", result.error
        assert "KEY" in result.error["message"] and VALUE not in json.dumps(result.to_dict())
    assert len(server.requests) == 1  # only the allowed call went out


def test_item2_integration_credentials_go_to_the_integration_only(json_server, http_client):
    base_url, server = json_server(lambda request: StubReply(200, {"ok": True}))
    spec = {"steps": [{"name": "answer", "prompt": "go", "tools": [{"name": "lookup", "integration": "shop"}],
                       "model": {"provider": "fruxon-local", "name": "local",
                                 "script": [{"toolCalls": [{"name": "lookup", "arguments": {}}]}, {"reply": "done"}]}}]}
    runtime = StaticRuntime(secrets={"TOKEN": VALUE}, http_client=http_client,
                            integrations={"shop": IntegrationInfo("shop", base_url, {}, "TOKEN")})
    result = run(spec, {}, context=RunContext(agent="a"), runtime=runtime)
    assert result.status == "ok" and server.requests[0].headers["Authorization"] == f"Bearer {VALUE}"
    # The same secret as a model's key, to a host that is not the integration's: refused.
    model_spec = _spec("https://api.openai.com/v1", apiKey="{{secret.TOKEN}}")
    refused = run(model_spec, {}, context=RunContext(agent="a"), runtime=runtime)
    assert refused.error["code"] == "secret_destination" and len(server.requests) == 1
