"""Issue 12 item 9: inputs that answered 500 now answer a clear JSON 4xx and write nothing.

NUL (``%00``) in any path part or query value of an API URL, an edited cursor,
``?limit=²``, JSON nested 10,000 deep, a 2,000-step dependency chain and a body
over 2.5 MB. Each is tried through the test client (every tenant route, from
the URL resolver as the sweeps do) and against a live gunicorn server.
"""
from __future__ import annotations

import base64
import json
import re
from urllib.parse import quote

import httpx
import pytest
from django.test import override_settings
from django.urls import reverse

from agents import engine
from agents.models import Agent, Revision
from evaluations.models import Dataset, EvaluationRun
from monitoring.models import Run, Span
from orgs.models import ApiKey, AuditEvent, Membership, Secret

from . import factories as f
from .server import gunicorn
from .sweep import OBJECTS, PRINCIPAL_ROUTES, api_routes, tenant_routes
from .test_sweep import world  # noqa: F401  (the sweeps' org A with one object of every kind)

MODELS = (AuditEvent, Agent, Revision, Run, Span, ApiKey, Membership, Secret, Dataset, EvaluationRun)


def _written() -> dict:
    return {model.__name__: model.objects.count() for model in MODELS}


def _assert_error(response, status: int, code: str, field: str | None = None) -> dict:
    assert response.status_code == status, (response.status_code, response.content[:400])
    assert response["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code, error
    if field is not None:
        assert field in error["details"]["fields"], error
    return error


def _call(client, method: str, url: str):
    if method == "GET":
        return client.get(url)
    return getattr(client, method.lower())(url, {}, format="json")


@pytest.fixture
def owner_a(world, api):
    return api.as_user(world.a_users["owner"])


# --- NUL in path parts ------------------------------------------------------------------------------------
ROUTES = {route.name: route for route in api_routes()}
PATH_ROUTES = sorted(route.name for route in tenant_routes()) + sorted(PRINCIPAL_ROUTES)


def _path_parts(route) -> list[str]:
    return re.findall(r"<(?:\w+:)?(\w+)>", route.pattern)


def test_item9_path_routes_come_from_the_resolver():
    assert {"run-detail", "run-spans", "agent-detail", "evaluation-compare", "revision-diff"} <= set(PATH_ROUTES)
    assert sum(len(_path_parts(ROUTES[name])) for name in PATH_ROUTES) > 100


@pytest.fixture
def admin_key_a(world, api):
    _, plaintext = f.api_key(world.a, preset="admin", name="nul probe")
    return api.as_key(plaintext)


@pytest.mark.parametrize("name", PATH_ROUTES)
def test_item9_nul_in_path_parts(world, owner_a, admin_key_a, name):
    """Each URL kwarg of each route set to NUL (the others aimed at org A's real objects), for every method
    and both kinds of caller: 400 invalid_request, nothing written."""
    route = ROUTES[name]
    urls = []
    for part in _path_parts(route):
        kwargs = {"tenant": world.a.slug, **OBJECTS[name].kwargs(world), part: "\x00"}
        # Built from the pattern, not reverse(): an integer part cannot hold NUL (it would match no route).
        urls.append("/" + re.sub(r"<(?:\w+:)?(\w+)>", lambda m: quote(str(kwargs[m.group(1)]), safe=""),
                                 route.pattern))
        assert "%00" in urls[-1]
    if not urls:  # routes outside a tenant have no path parts: a NUL in their query instead
        urls.append(reverse(name) + "?x=%00")
    before = _written()
    for url in urls:
        for method in route.methods:
            for client in (owner_a, admin_key_a):
                error = _assert_error(_call(client, method, url), 400, "invalid_request")
                assert "NUL" in error["message"]
    assert _written() == before


def test_item9_nul_in_path_parts_of_unknown_routes_and_the_admin(world, owner_a):
    for path in ("/v1/acme/runs/%00", "/v1/%00/agents", "/v1/alpha/%00", "/v1/alpha/agents/%00/nothing-here"):
        _assert_error(owner_a.get(path), 400, "invalid_request")
    from django.test import Client

    admin = Client()
    admin.force_login(world.a_users["owner"])
    before = _written()
    for path in ("/admin/monitoring/run/%00/change/", f"/admin/monitoring/run/{world.a_run.id}%00/delete/",
                 "/admin/agents/agent/%00/change/", "/admin/monitoring/run/?q=%00"):
        _assert_error(admin.get(path), 400, "invalid_request")
    _assert_error(admin.post("/admin/monitoring/run/%00/delete/", {"post": "yes"}), 400, "invalid_request")
    assert _written() == before


# --- NUL in query filters ---------------------------------------------------------------------------------
def test_item9_nul_in_query_filters(world, owner_a, admin_key_a):
    a, rev, evaluation = world.a.slug, world.a_revision.id, world.a_evaluation.id
    urls = [
        f"/v1/{a}/evaluations?agent=%00", f"/v1/{a}/evaluations?status=%00", f"/v1/{a}/evaluations?dataset=%00",
        f"/v1/{a}/audit-events?action=%00", f"/v1/{a}/audit-events?since=%00", f"/v1/{a}/audit-events?agent=%00",
        f"/v1/{a}/agents/alpha-agent/readiness?revisionId=%00",
        f"/v1/{a}/export?agents=%00", f"/v1/{a}/export?agents=alpha-agent,%00", f"/v1/{a}/export?includeCases=%00",
        f"/v1/{a}/evaluations/{evaluation}:compare?baseline=%00",
        f"/v1/{a}/agents/alpha-agent/revisions/{rev}:diff?against=%00",
        f"/v1/{a}/runs?agent=%00", f"/v1/{a}/runs?conversationId=a%00b", f"/v1/{a}/metrics?agent=%00",
        f"/v1/{a}/agents/alpha-agent/deployments?revisionId=%00",
        f"/v1/{a}/runs?%00=1", f"/v1/{a}/runs?agent=alpha-agent&agent=%00",
    ]
    before = _written()
    for url in urls:
        for client in (owner_a, admin_key_a):
            error = _assert_error(client.get(url), 400, "invalid_request")
            assert error["details"]["fields"], url
    # A write with a NUL in its query is refused before it acts.
    _assert_error(owner_a.post(f"/v1/{a}/agents/alpha-agent:execute?x=%00", {"input": {"question": "q"}},
                               format="json"), 400, "invalid_request")
    _assert_error(owner_a.delete(f"/v1/{a}/agents/alpha-agent/shadow?x=%00"), 400, "invalid_request")
    assert _written() == before


# --- cursors and limits -----------------------------------------------------------------------------------
def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


EDITED_CURSORS = {
    "o=0&p=abc": _b64("o=0&p=abc"),  # the issue's: a position that is no date
    "bad date": _b64("o=0&p=2020-13-45 10:00:00"),
    "NUL in position": _b64("o=0&p=a\x00b"),
    "reverse flag": _b64("o=0&r=x&p=2020-01-01"),
    "unicode offset": base64.b64encode("o=²".encode()).decode(),
    "not ascii": "é",
    "binary": base64.b64encode(b"\xff\xfe\x00").decode(),
}


@pytest.mark.parametrize("why", EDITED_CURSORS)
def test_item9_edited_cursor(world, owner_a, why):
    a = world.a.slug
    cursor = EDITED_CURSORS[why]
    lists = [f"/v1/{a}/runs", f"/v1/{a}/evaluations", f"/v1/{a}/audit-events",
             f"/v1/{a}/agents/alpha-agent/revisions", f"/v1/{a}/runs/{world.a_run.id}/spans",
             f"/v1/{a}/api-keys", f"/v1/{a}/agents/alpha-agent/deployments"]
    before = _written()
    for url in lists:
        response = owner_a.get(url, {"cursor": cursor})
        _assert_error(response, 400, "invalid_request", field="cursor")
    assert _written() == before
    # Integer orderings check the position too (api-keys order by id).
    _assert_error(owner_a.get(f"/v1/{a}/api-keys", {"cursor": _b64("o=0&p=abc")}), 400, "invalid_request", "cursor")
    # The cursors the lists hand out keep working.
    first = owner_a.get(f"/v1/{a}/audit-events?limit=1").json()
    assert owner_a.get(first["next"]).status_code == 200


@pytest.mark.parametrize("limit", ["²", "١٢", "٣", "1²", "⁵", "0", "-1", "501", "1.5", " 5", "5 ", "99999999999999999999"])
def test_item9_unicode_digit_limit(world, owner_a, limit):
    for url in (f"/v1/{world.a.slug}/runs", f"/v1/{world.a.slug}/agents", "/v1/orgs"):
        response = owner_a.get(url, {"limit": limit})
        if url == "/v1/orgs" and response.status_code == 200:
            continue  # the org list is not paginated
        error = _assert_error(response, 400, "invalid_request", field="limit")
        assert "limit" in error["message"]
    assert owner_a.get(f"/v1/{world.a.slug}/runs", {"limit": "5"}).status_code == 200


# --- deep JSON --------------------------------------------------------------------------------------------
def test_item9_deep_json(world, owner_a):
    a = world.a.slug
    before = _written()
    deep_array = "[" * 10_000 + "]" * 10_000
    deep_in_field = '{"slug": "deep", "name": "d", "description": ' + "[" * 10_000 + "]" * 10_000 + "}"
    deep_input = '{"input": {"question": ' + '{"a": ' * 10_000 + "1" + "}" * 10_001 + "}"
    for path, body in [(f"/v1/{a}/agents", deep_array), (f"/v1/{a}/agents", deep_in_field),
                       (f"/v1/{a}/agents/alpha-agent:execute", deep_input), ("/v1/orgs", deep_array),
                       (f"/v1/{a}/agents/alpha-agent/revisions", '{"spec": ' + deep_array + "}"),
                       (f"/v1/{a}/import", deep_array)]:
        error = _assert_error(owner_a.post(path, body, content_type="application/json"), 400, "invalid_request")
        assert "deep" in error["message"], error
    # Past FRUXON_MAX_JSON_DEPTH (64) but well within Python's own limit: refused the same way.
    nested = {"question": "q"}
    for _ in range(70):
        nested = {"n": nested}
    error = _assert_error(owner_a.post(f"/v1/{a}/agents/alpha-agent:execute", {"input": nested}, format="json"),
                          400, "invalid_request")
    assert "64" in error["message"]
    assert _written() == before
    # Within the limit: an ordinary body is parsed (the execute then judges its input).
    shallow = {"input": {"question": json.dumps({"n": {"n": 1}})}}
    assert owner_a.post(f"/v1/{a}/agents/alpha-agent:execute", shallow, format="json").status_code == 200


def test_item9_deep_spec_refused_by_the_engine():
    """Specs reach the engine from places no request parser guards (the admin's JSON field, stored rows):
    validate_spec bounds their nesting itself, without recursing."""
    output: object = "x"
    for _ in range(5000):
        output = [output]
    spec = {"steps": [{"name": "s", "model": {"provider": "fruxon-local"}, "prompt": "p"}], "output": output}
    problems = engine.validate_spec(spec)
    assert [p.path for p in problems] == ["$"] and "deeper than 64" in problems[0].message


# --- dependency chains ------------------------------------------------------------------------------------
def _chain(steps: int, *, cycle: bool = False) -> dict:
    """Step i uses step i+1's output (listed against dependency order, so a depth-first walk goes deep)."""
    model = {"provider": "fruxon-local", "name": "local", "script": [{"reply": "ok"}]}
    spec = {"steps": [{"name": f"s{i}", "model": model, "prompt": f"{{{{steps.s{i + 1}.output}}}}"}
                      for i in range(steps - 1)]}
    spec["steps"].append({"name": f"s{steps - 1}", "model": model, "prompt": "{{steps.s0.output}}" if cycle else "go"})
    return spec


def test_item9_long_dependency_chain(world, owner_a):
    # The engine's cycle check walks a 2,000-step chain without recursing (no RecursionError)...
    assert engine.validate_spec(_chain(2000)) == []
    problems = engine.validate_spec(_chain(2000, cycle=True))
    assert len(problems) == 1 and problems[0].message.startswith("dependency cycle between steps: s0 -> s1 -> s2")
    # ...and the API answers 400 invalid_spec for it, writing nothing: over the step limit by default,
    url = f"/v1/{world.a.slug}/agents/alpha-agent/revisions"
    before = _written()
    error = _assert_error(owner_a.post(url, {"spec": _chain(2000, cycle=True)}, format="json"), 400, "invalid_spec")
    assert "FRUXON_MAX_STEPS" in error["message"]
    # and for its cycle where the operator allows that many steps.
    with override_settings(FRUXON_MAX_STEPS=5000):
        error = _assert_error(owner_a.post(url, {"spec": _chain(2000, cycle=True)}, format="json"), 400,
                              "invalid_spec")
        assert "dependency cycle" in error["message"]
        assert _written() == before
        # The same chain without the cycle is a valid spec, and runs.
        created = owner_a.post(url, {"spec": _chain(150)}, format="json")
        assert created.status_code == 201, created.content[:300]
    executed = owner_a.post(f"/v1/{world.a.slug}/agents/alpha-agent:execute",
                            {"input": {}, "revisionId": created.json()["id"]}, format="json")
    assert executed.status_code == 200, executed.content[:300]


# --- body size --------------------------------------------------------------------------------------------
def test_item9_body_too_large_413(world, owner_a, settings):
    a = world.a.slug
    big = json.dumps({"slug": "big", "name": "big", "description": "x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1)})
    before = _written()
    for path in (f"/v1/{a}/agents", f"/v1/{a}/agents/alpha-agent:execute", "/v1/orgs",
                 f"/v1/{a}/agents/alpha-agent/revisions", f"/v1/{a}/import", "/v1/auth/token"):
        error = _assert_error(owner_a.post(path, big, content_type="application/json"), 413, "payload_too_large")
        assert error["details"]["limitBytes"] == settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    _assert_error(owner_a.put(f"/v1/{a}/secrets/BIG", big, content_type="application/json"), 413,
                  "payload_too_large")
    assert _written() == before


# --- the same against a live server -----------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_item9_live_server():
    """Through gunicorn (DEBUG off), as the review found them: every one a JSON 4xx, nothing written."""
    org = f.OrganizationFactory(slug="acme")
    f.member(org, "owner", "olivia")
    from .builders import agent_with_revision, run_once

    agent, revision = agent_with_revision(org, "support")
    run = run_once(agent)
    _, key = f.api_key(org, preset="admin")
    headers = {"X-API-KEY": key}
    before = _written()
    deep = "[" * 10_000 + "]" * 10_000
    cases = [
        ("GET", "/v1/acme/runs/%00", None, 400, "invalid_request"),
        ("GET", "/v1/acme/agents/%00", None, 400, "invalid_request"),
        ("GET", "/v1/%00/agents", None, 400, "invalid_request"),
        ("GET", f"/v1/acme/runs/{run.id}/spans?cursor=%00", None, 400, "invalid_request"),
        ("DELETE", "/v1/acme/agents/%00", None, 400, "invalid_request"),
        ("GET", "/v1/acme/evaluations?agent=%00", None, 400, "invalid_request"),
        ("GET", "/v1/acme/audit-events?action=%00", None, 400, "invalid_request"),
        ("GET", "/v1/acme/agents/support/readiness?revisionId=%00", None, 400, "invalid_request"),
        ("GET", "/v1/acme/export?agents=%00", None, 400, "invalid_request"),
        ("GET", "/v1/acme/evaluations/x:compare?baseline=%00", None, 400, "invalid_request"),
        ("GET", f"/v1/acme/agents/support/revisions/{revision.id}:diff?against=%00", None, 400, "invalid_request"),
        ("GET", "/v1/acme/runs?cursor=" + _b64("o=0&p=abc"), None, 400, "invalid_request"),
        ("GET", "/v1/acme/runs?limit=%C2%B2", None, 400, "invalid_request"),
        ("POST", "/v1/acme/agents", deep, 400, "invalid_request"),
        ("POST", "/v1/acme/agents/support/revisions", json.dumps({"spec": _chain(2000, cycle=True)}), 400,
         "invalid_spec"),
        ("POST", "/v1/acme/agents", json.dumps({"slug": "big", "name": "x" * 3_000_000}), 413, "payload_too_large"),
        ("POST", "/v1/acme/agents/support:execute", json.dumps({"input": {"question": "x" * 3_000_000}}), 413,
         "payload_too_large"),
    ]
    with gunicorn(workers=1, threads=4) as base, httpx.Client(base_url=base, headers=headers, timeout=60) as client:
        for method, path, body, status, code in cases:
            response = client.request(method, path, content=body,
                                      headers={"Content-Type": "application/json"} if body else None)
            assert (response.status_code, response.json()["error"]["code"]) == (status, code), (path, response.text[:300])
    assert _written() == before


def test_item9_deep_json_from_outside_a_run():
    """JSON a run did not write (a provider's answer, an integration's result) is parsed no deeper than 64
    levels: too deep, a provider's answer is a provider_error and a tool's result is kept as text; never an
    internal error, never a RecursionError while redacting or recording it."""
    import httpx as _httpx

    from agents.engine.testing import StaticRuntime, StaticSecret, StubReply, start_json_server

    for depth in (10_000, 500):
        deep = ("[" * depth + "]" * depth).encode()
        tool_url, tool_server = start_json_server(lambda request: StubReply(200, deep))
        model_url, model_server = start_json_server(lambda request: StubReply(200, deep))
        try:
            with _httpx.Client(trust_env=False) as client:
                runtime = StaticRuntime(integrations={"shop": engine.IntegrationInfo("shop", tool_url)},
                                        secrets={"KEY": StaticSecret("sk-0123456789", allowed_hosts=("127.0.0.1",))},
                                        http_client=client)
                local = {"provider": "fruxon-local", "name": "local", "script": [
                    {"toolCalls": [{"name": "lookup", "arguments": {}}]}, {"reply": "done"}]}
                spec = {"steps": [{"name": "s", "model": local, "prompt": "go",
                                   "tools": [{"name": "lookup", "integration": "shop"}]}]}
                result = engine.run(spec, {}, context=engine.RunContext(agent="a"), runtime=runtime)
                assert result.status == "ok", result.error
                tool_span = next(span for span in result.spans if span.kind == "tool")
                assert isinstance(tool_span.output, str) and tool_span.output.startswith("[[[")

                remote = {"provider": "openai", "name": "m", "baseUrl": model_url, "apiKey": "{{secret.KEY}}"}
                spec = {"steps": [{"name": "s", "model": remote, "prompt": "go"}]}
                result = engine.run(spec, {}, context=engine.RunContext(agent="a"), runtime=runtime,
                                    providers={"openai": engine_openai(client)})
                assert (result.status, result.error["code"]) == ("error", "provider_error"), result.error
        finally:
            tool_server.close()
            model_server.close()


def engine_openai(client):
    from agents.engine.providers import OpenAIProvider

    return OpenAIProvider(client, backoff_base=0.01)


def test_item9_deep_json_in_admin_forms(world):
    """The admin's JSON fields (a revision's spec, here) answer a form error for JSON nested too deep."""
    from django.test import Client

    client = Client()
    client.force_login(world.a_users["editor"])
    agent = Agent.objects.get(organization=world.a, slug="alpha-agent")
    before = _written()
    for depth in (10_000, 70):
        spec = "[" * depth + "]" * depth
        response = client.post(reverse("admin:agents_revision_add"),
                               {"agent": str(agent.pk), "message": "deep", "spec": spec})
        assert response.status_code == 200, response.status_code
        errors = response.context["adminform"].form.errors["spec"]
        assert errors == ["Enter a valid JSON."], errors
    assert _written() == before
