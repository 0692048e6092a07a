"""Isolation and role sweeps over every API route (DESIGN rules 1 and 2).

Generated from the URL resolver: for each tenant route and each HTTP method,
- isolation: org B's owner and org B's all-scope API key get 404 on org A's slug
  and on org A's object ids under their own slug; lists never show A's rows;
- roles: no credentials 401; a person one role short 403; the exact role is let
  through; a key with every scope but the needed one 403, with only it let through.
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest
from django.urls import reverse

from agents.models import Agent
from orgs.models import ApiKey, AuditEvent, Membership, Organization, Secret, SecretVersion
from orgs.roles import ALL_SCOPES, RANK

from datetime import timedelta

from django.utils import timezone

from agents import grants
from agents.services import create_revision
from decimal import Decimal

from agents import services as agent_services
from monitoring import budgets
from deployments import scheduling, shadow
from evaluations.services import datasets
from evaluations.services import runs as evaluation_runs
from evaluations.services import scheduled as eval_schedules
from deployments import services as deployments

from . import factories as f
from .builders import SYSTEM, agent_with_revision, local_spec, run_once
from .conftest import Api
from .sweep import NON_API_ROUTES, OBJECTS, PRINCIPAL_ROUTES, TENANT_BASES, api_routes, tenant_routes

CASES = [(r.name, m) for r in tenant_routes() for m in r.methods]
ROUTES = {r.name: r for r in tenant_routes()}
MARKER = "alpha"


@dataclass
class World:
    a: Organization
    b: Organization
    a_users: dict
    b_owner: object
    a_key: ApiKey
    a_viewer_membership: Membership
    b_key_plain: str
    a_revision: object
    a_run: object
    a_deployment: object = None
    a_schedule: object = None
    a_case: object = None
    a_evaluation: object = None
    a_narrow_key: ApiKey = None  # runs:read only: what a key with keys:write and runs:read may rotate


@pytest.fixture
def world(db) -> World:
    a = f.OrganizationFactory(slug="alpha", name="Alpha")
    b = f.OrganizationFactory(slug="beta", name="Beta")
    a_users = {role: f.member(a, role, f"alpha-{role}") for role in ("owner", "editor", "viewer")}
    b_owner = f.member(b, "owner", "beta-owner")
    f.secret(a, "ALPHA_SECRET", "alpha-secret-value")
    f.integration(a, "alpha-int", name="alpha integration")
    a_key, _ = f.api_key(a, preset="admin", name="alpha key")
    _, b_plain = f.api_key(b, preset="admin", name="beta key")
    f.secret(b, "BETA_SECRET", "beta-secret-value")
    f.integration(b, "beta-int")
    a_agent, a_revision = agent_with_revision(a, "alpha-agent", deploy=False)
    a_deployment = deployments.deploy(actor=SYSTEM, agent=a_agent, revision_id=a_revision.id, reason="alpha first")
    candidate = create_revision(actor=SYSTEM, agent=a_agent, spec=local_spec("alpha candidate"), message="candidate")
    shadow.configure(actor=SYSTEM, agent=a_agent, revision_id=candidate.id, sample_rate=0.0)
    a_dataset = datasets.create_dataset(actor=SYSTEM, organization=a, slug="alpha-data", name="alpha data")
    a_case = datasets.add_case(actor=SYSTEM, dataset=a_dataset, input={"question": "alpha?"}, expected="alpha")
    a_evaluation = evaluation_runs.start(actor=SYSTEM, agent=a_agent, revision_id=a_revision.id, dataset=a_dataset)
    agent_services.update_agent(actor=SYSTEM, agent=a_agent, changes={"gating_dataset": a_dataset})
    a_agent.refresh_from_db()
    eval_schedules.set_schedule(actor=SYSTEM, agent=a_agent, every_hours=24)
    budgets.put_budget(actor=SYSTEM, agent=a_agent, period="month", amount_usd=Decimal("50"), enforce=True,
                       alert_thresholds=[0.8], alert_webhook="", alert_emails=[])
    a_schedule = scheduling.schedule(actor=SYSTEM, agent=a_agent, revision_id=a_revision.id,
                                     run_at=timezone.now() + timedelta(days=1), reason="alpha later")
    a_run = run_once(a_agent, "alpha question", conversation_key="alpha-conversation")
    agent_with_revision(b, "beta-agent")
    # an agent admin: an org editor with the admin grant on alpha-agent
    a_users["admin"] = f.member(a, "editor", "alpha-agent-admin")
    grants.set_grant(actor=SYSTEM, agent=a_agent, username="alpha-agent-admin", role="admin")
    grants.set_grant(actor=SYSTEM, agent=a_agent, username="alpha-viewer", role="viewer")
    a_narrow_key, _ = f.api_key(a, scopes=["runs:read"], name="alpha narrow key")
    return World(a, b, a_users, b_owner, a_key,
                 Membership.objects.get(organization=a, user=a_users["viewer"]), b_plain, a_revision, a_run,
                 a_deployment, a_schedule, a_case, a_evaluation, a_narrow_key)


def _call(client, method: str, url: str):
    return getattr(client, method.lower())(url, {}, format="json") if method != "GET" else client.get(url)


def _url(name: str, slug: str, world: World) -> str:
    return reverse(name, kwargs={"tenant": slug, **OBJECTS[name].kwargs(world)})


def _assert_error(response, status: int, code: str | None = None):
    assert response.status_code == status, (response.status_code, response.content[:300])
    body = response.json()
    assert set(body) == {"error"} and {"code", "message", "details"} <= set(body["error"])
    if code:
        assert body["error"]["code"] == code


# --- coverage: a new route cannot slip through --------------------------------------------
def test_every_tenant_route_is_covered():
    missing = sorted(r.name for r in tenant_routes() if r.name not in OBJECTS)
    assert not missing, f"Routes without sweep coverage (add them to tests/sweep.py OBJECTS): {missing}"
    stale = sorted(set(OBJECTS) - set(ROUTES))
    assert not stale, f"OBJECTS entries for routes that no longer exist: {stale}"


def test_every_api_route_uses_the_scoped_base():
    for route in api_routes():
        if route.name in PRINCIPAL_ROUTES or route.name in NON_API_ROUTES:
            continue
        assert issubclass(route.view_class, TENANT_BASES), f"{route.name} bypasses the tenancy base class"
        assert "<name:tenant>" in route.pattern, route.pattern
        for method in route.methods:
            assert method in route.view_class.access, f"{route.name} {method} has no access declaration"


# --- isolation -------------------------------------------------------------------------------
@pytest.mark.parametrize("name,method", CASES)
def test_other_org_member_and_key_get_404(world, name, method):
    clients = {"member": Api.as_user(world.b_owner), "key": Api.as_key(world.b_key_plain)}
    before = list(SecretVersion.objects.filter(organization=world.a).values_list("pk", "ciphertext"))
    for who, client in clients.items():
        # org A's slug: B's people and keys do not even learn that it exists
        _assert_error(_call(client, method, _url(name, world.a.slug, world)), 404, "not_found")
        # B's own slug with A's object ids
        target = OBJECTS[name]
        if target.kwargs(world):
            response = _call(client, method, _url(name, world.b.slug, world))
            if method in target.upsert_methods:
                assert response.status_code in (200, 201, 400), (who, response.status_code)
            else:
                _assert_error(response, 404, "not_found")
    assert list(SecretVersion.objects.filter(organization=world.a).values_list("pk", "ciphertext")) == before
    assert Secret.objects.get(organization=world.a, name="ALPHA_SECRET").current_version == 1


@pytest.mark.parametrize("name", sorted(n for n, r in ROUTES.items() if "GET" in r.methods))
def test_reads_never_show_another_orgs_rows(world, name):
    for client in (Api.as_user(world.b_owner), Api.as_key(world.b_key_plain)):
        response = client.get(_url(name, world.b.slug, world)) if not OBJECTS[name].kwargs(world) else None
        if response is None:
            continue
        assert response.status_code == 200, response.content[:300]
        assert MARKER not in response.content.decode().lower(), response.content[:500]


# --- roles and scopes --------------------------------------------------------------------------
@pytest.mark.parametrize("name,method", CASES)
def test_no_credentials_is_401(world, name, method):
    _assert_error(_call(Api.anonymous(), method, _url(name, world.a.slug, world)), 401, "unauthenticated")


@pytest.mark.parametrize("name,method", CASES)
def test_roles_below_the_required_one_get_403(world, name, method):
    required = ROUTES[name].view_class.access[method].role
    lower = [role for role in ("viewer", "editor", "admin") if RANK[role] < RANK[required]]
    for role in lower:
        _assert_error(_call(Api.as_user(world.a_users[role]), method, _url(name, world.a.slug, world)), 403, "forbidden")
    if method in ("POST", "PUT", "PATCH", "DELETE"):
        assert required != "viewer", f"{name} {method} lets viewers change things"


@pytest.mark.parametrize("name,method", CASES)
def test_the_required_role_is_let_through(world, name, method):
    required = ROUTES[name].view_class.access[method].role
    response = _call(Api.as_user(world.a_users[required]), method, _url(name, world.a.slug, world))
    assert response.status_code not in (401, 403, 404, 405), (response.status_code, response.content[:300])


@pytest.mark.parametrize("name,method", CASES)
def test_keys_need_the_exact_scope(world, name, method):
    scope = ROUTES[name].view_class.access[method].scope
    url = _url(name, world.a.slug, world)
    if scope is None:
        _, everything = f.api_key(world.a, scopes=list(ALL_SCOPES))
        _assert_error(_call(Api.as_key(everything), method, url), 403, "forbidden")
        return
    _, all_but = f.api_key(world.a, scopes=[s for s in ALL_SCOPES if s != scope])
    _assert_error(_call(Api.as_key(all_but), method, url), 403, "forbidden")
    # Routes that hand out rights also need the rights handed out (test_keys_give_only_what_they_hold).
    holds = OBJECTS[name].holds(world) if OBJECTS[name].holds and method in ("POST", "PUT", "PATCH", "DELETE") else ()
    _, only = f.api_key(world.a, scopes=sorted({scope, *holds}), name="only")
    response = _call(Api.as_key(only, header="bearer"), method, url)
    assert response.status_code not in (401, 403, 404, 405), (response.status_code, response.content[:300])


# --- routes outside a tenant --------------------------------------------------------------------
def test_principal_routes(world):
    _assert_error(Api.anonymous().get("/v1/orgs"), 401, "unauthenticated")
    _assert_error(Api.as_key(world.b_key_plain).get("/v1/orgs"), 403, "forbidden")
    _assert_error(Api.anonymous().delete("/v1/auth/token"), 401, "unauthenticated")
    slugs = [o["slug"] for o in Api.as_user(world.b_owner).get("/v1/orgs").json()["results"]]
    assert slugs == ["beta"]


# --- a key's agent list and sub-agent rights (issue 12, item 6) ---------------------------------
def _gamma_key(world: World, scopes=ALL_SCOPES) -> str:
    """A key of org A with ``scopes``, limited to gamma-agent (a second agent of A)."""
    if not Agent.objects.filter(organization=world.a, slug="gamma-agent").exists():
        agent_with_revision(world.a, "gamma-agent")
    return f.api_key(world.a, scopes=list(scopes), agents=["gamma-agent"], name="gamma key")[1]


# Objects of the org that belong to no agent: the key's scopes decide, not its agent list.
ORG_LEVEL_OBJECTS = ("apikey-", "case-", "dataset-", "integration-", "member-", "secret-")


@pytest.mark.parametrize("name", sorted(n for n, r in ROUTES.items() if "GET" in r.methods))
def test_agent_limited_key_reads_nothing_of_other_agents(world, name):
    """A key with every scope, limited to gamma-agent: alpha-agent's routes refuse it, and no
    org-wide read (lists, export, audit events, metrics) names alpha-agent or its objects."""
    client = Api.as_key(_gamma_key(world))
    kwargs = OBJECTS[name].kwargs(world)
    response = client.get(reverse(name, kwargs={"tenant": world.a.slug, **kwargs}))
    if kwargs and not name.startswith(ORG_LEVEL_OBJECTS):
        assert response.status_code in (403, 404), (name, response.status_code, response.content[:300])
        return
    assert response.status_code == 200, (name, response.content[:300])
    text = response.content.decode()
    for leak in ('"alpha-agent"', world.a_revision.id, world.a_run.id):
        assert leak not in text, (name, leak, text[:500])


def test_agent_limited_key_imports_only_its_agents(world):
    document = Api.as_user(world.a_users["owner"]).get("/v1/alpha/export?history=true").json()
    client = Api.as_key(_gamma_key(world))
    before = AuditEvent.objects.filter(organization=world.a).count()
    for query in ("", "?dryRun=true"):
        _assert_error(client.post(f"/v1/alpha/import{query}", document, format="json"), 403, "forbidden")
    assert AuditEvent.objects.filter(organization=world.a).count() == before
    mine = {**document, "agents": [a for a in document["agents"] if a["slug"] == "gamma-agent"]}
    assert client.post("/v1/alpha/import?dryRun=true", mine, format="json").status_code == 200


def _router_on_gamma(world: World) -> dict:
    spec = local_spec("routed")
    spec["steps"][0]["subAgents"] = [{"agent": "alpha-agent"}]
    return {"spec": spec, "message": "calls alpha-agent"}


@pytest.mark.parametrize("who,allowed", [
    ("owner", True), ("editor", True), ("admin", True),  # admin: an editor with the admin grant on alpha-agent
    ("viewer", False),  # alpha-viewer, given an editor grant on gamma, only views alpha-agent
    ("key:all", True), ("key:gamma-only", False), ("key:no-execute", False),
])
def test_subagent_needs_the_right_to_execute_it(world, who, allowed):
    _gamma_key(world)  # creates gamma-agent
    gamma = Agent.objects.get(organization=world.a, slug="gamma-agent")
    if who.startswith("key:"):
        plain = {"key:all": lambda: f.api_key(world.a, scopes=list(ALL_SCOPES))[1],
                 "key:gamma-only": lambda: _gamma_key(world),
                 "key:no-execute": lambda: f.api_key(world.a, scopes=[s for s in ALL_SCOPES
                                                                      if s != "agents:execute"])[1]}[who]()
        client = Api.as_key(plain)
    else:
        user = world.a_users[who]
        grants.set_grant(actor=SYSTEM, agent=gamma, username=user.username, role="editor")
        client = Api.as_user(user)
    before = gamma.revisions.count()
    response = client.post("/v1/alpha/agents/gamma-agent/revisions", _router_on_gamma(world), format="json")
    if allowed:
        assert response.status_code == 201, (who, response.content[:300])
        assert gamma.revisions.count() == before + 1
    else:
        _assert_error(response, 403, "forbidden")
        assert response.json()["error"]["details"]["subAgent"] == "alpha-agent"
        assert gamma.revisions.count() == before


# --- no escalation: keys mint, add and grant only what they hold (issue 12, item 1) --------------
BOUNDED = sorted((n, m) for n, t in OBJECTS.items() if t.holds for m in ROUTES[n].methods if m != "GET")
BOUNDED_BODIES = {("member-detail", "PATCH"): {"role": "viewer"}, ("grant-detail", "PUT"): {"role": "viewer"},
                  ("apikey-detail", "PATCH"): {"rateLimits": {"requestsPerMinute": 10}}}


def _rights_snapshot(world: World):
    return (sorted(Membership.objects.filter(organization=world.a).values_list("pk", "role")),
            sorted(ApiKey.objects.filter(organization=world.a).values_list("pk", "expires_at", "requests_per_minute")),
            grants.list_grants(agent=world.a_revision.agent))


@pytest.mark.parametrize("name,method", BOUNDED)
def test_keys_give_only_what_they_hold(world, name, method):
    """The route's scope alone is not enough where rights change hands: 403 naming the missing scopes, nothing written."""
    scope = ROUTES[name].view_class.access[method].scope
    _, only = f.api_key(world.a, scopes=[scope], name="only the route's scope")
    before = _rights_snapshot(world)
    url = _url(name, world.a.slug, world)
    body = BOUNDED_BODIES.get((name, method), {})
    response = getattr(Api.as_key(only), method.lower())(url, body, format="json")
    _assert_error(response, 403, "forbidden")
    missing = set(OBJECTS[name].holds(world)) - {scope}
    assert set(response.json()["error"]["details"]["missingScopes"]) == missing
    assert _rights_snapshot(world) == before


def _limited_keys_writer(world: World, expires_at) -> tuple[ApiKey, str]:
    return f.api_key(world.a, scopes=["keys:read", "keys:write", "runs:read"], agents=["alpha-agent"],
                     expires_at=expires_at, name="limited keys writer")


@pytest.mark.parametrize("beyond,missing", [
    ({"preset": "admin", "scopes": None, "agents": None}, {"missingScopes", "agents"}),
    ({"scopes": ["runs:read", "agents:read"]}, {"missingScopes"}),
    ({"agents": None}, {"agents"}),  # no agent list: every agent
    ({"agents": ["alpha-agent", "beta-agent"]}, {"agents"}),
    ({"expiresAt": None}, {"expiresAt"}),  # never ends, from a key that does
    ({"expiresAt": "later"}, {"expiresAt"}),
])
def test_limited_key_cannot_mint_a_broader_key(world, beyond, missing):
    """keys:write limited to alpha-agent, ending tomorrow: it mints keys within that, and nothing broader."""
    ends = timezone.now() + timedelta(days=1)
    _, plain = _limited_keys_writer(world, ends)
    within = {"name": "minted", "scopes": ["runs:read"], "agents": ["alpha-agent"],
              "expiresAt": (ends - timedelta(hours=1)).isoformat()}
    body = {**within, **beyond}
    if body["expiresAt"] == "later":
        body["expiresAt"] = (ends + timedelta(hours=1)).isoformat()
    body = {k: v for k, v in body.items() if v is not None or k == "expiresAt"}
    before = ApiKey.objects.count()
    response = Api.as_key(plain).post("/v1/alpha/api-keys", body, format="json")
    _assert_error(response, 403, "forbidden")
    assert set(response.json()["error"]["details"]) == missing
    assert ApiKey.objects.count() == before
    assert Api.as_key(plain).post("/v1/alpha/api-keys", within, format="json").status_code == 201


def test_limited_key_cannot_rotate_a_broader_key(world):
    _, plain = _limited_keys_writer(world, timezone.now() + timedelta(days=1))
    client = Api.as_key(plain)
    for broader in (world.a_key, world.a_narrow_key):  # every scope; runs:read that never expires
        before = ApiKey.objects.count()
        response = client.post(f"/v1/alpha/api-keys/{broader.pk}:rotate", {"overlapSeconds": 0}, format="json")
        _assert_error(response, 403, "forbidden")
        assert ApiKey.objects.count() == before
        broader.refresh_from_db()
        assert broader.expires_at is None  # the old key was not cut short either
    own = ApiKey.objects.get(name="limited keys writer")
    assert client.post(f"/v1/alpha/api-keys/{own.pk}:rotate", {"overlapSeconds": 60}, format="json").status_code == 201
