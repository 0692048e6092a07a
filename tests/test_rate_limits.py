"""Issue 14 item 1: rate limits per org and per API key (requests, executions and tokens per minute).

The limiter's clock is injected: ``FRUXON_RATELIMIT_CLOCK_KEY`` names a Redis key holding "now" in ms,
read inside the limiter's script, so the test drives the time of this process and of every server
process at once. Redis is the suite's (``FRUXON_TEST_REDIS_URL``).
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket

import httpx
import pytest
import redis
from django.db import connection
from django.test.utils import CaptureQueriesContext

from fruxon import ratelimit
from monitoring.models import Run
from orgs.models import ApiKey, AuditEvent

from . import factories as f
from .builders import agent_with_revision, local_spec
from .race_clients import fire_from_processes
from .server import gunicorn
from .test_budget_race import require_postgresql

REDIS_URL = os.environ.get("FRUXON_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
CLOCK_KEY = "fx:rl-test:clock"
T0 = 1_800_000_000_000  # ms
RATE_HEADERS = ("Retry-After", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")


class Clock:
    """The limiter's time, in every process: a Redis key in ms."""

    def __init__(self, client: redis.Redis):
        self.client = client
        self.now = T0
        client.set(CLOCK_KEY, T0)

    def advance(self, seconds: float) -> None:
        self.now += round(seconds * 1000)
        self.client.set(CLOCK_KEY, self.now)


def _clear(client: redis.Redis) -> None:
    for name in client.scan_iter("fx:rl:*"):
        client.delete(name)


@pytest.fixture
def clock(settings):
    client = redis.Redis.from_url(REDIS_URL)
    _clear(client)
    settings.FRUXON_RATELIMIT_REDIS_URL = REDIS_URL
    settings.FRUXON_RATELIMIT_CLOCK_KEY = CLOCK_KEY
    # Exactness is under test, not the outage path: a loaded CI box may answer after the 50 ms default,
    # which fails open by design (tests below use a closed port for that).
    settings.FRUXON_RATELIMIT_TIMEOUT_MS = 5000
    yield Clock(client)
    _clear(client)
    client.delete(CLOCK_KEY)


def _set_org(org, **limits) -> None:
    for name, value in limits.items():
        setattr(org, name, value)
    org.save(update_fields=list(limits))


def _set_key(key_id, **limits) -> None:
    ApiKey.objects.filter(pk=key_id).update(**limits)


def _error(response, status: int, code: str) -> dict:
    assert response.status_code == status, (response.status_code, response.content[:400])
    body = response.json()
    assert body["error"]["code"] == code, body
    return body["error"]


def _execute(client, agent="support"):
    return client.post(f"/v1/acme/agents/{agent}:execute", {"input": {"question": "q"}}, format="json")


# --- the race: 200 concurrent requests, limit 50 a minute, two server processes -------------------

# A generous limiter timeout: this test is about exactness, and on a loaded two-core machine a starved server
# thread can read Redis's answer after the 50 ms default, which fails open (admits) by design.
SERVER_ENV = {"DB_POOL_MAX_SIZE": "10", "DB_POOL_MIN_SIZE": "2", "DB_POOL_TIMEOUT": "30", "LOG_LEVEL": "ERROR",
              "FRUXON_RATELIMIT_REDIS_URL": REDIS_URL, "FRUXON_RATELIMIT_CLOCK_KEY": CLOCK_KEY,
              "FRUXON_RATELIMIT_TIMEOUT_MS": "5000"}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("kind", ["requests", "executions"])
def test_200_concurrent_against_50_per_minute_across_two_processes_exactly_50_pass(clock, kind):
    """Requests per minute on the org, executions per minute on the key: 200 executes at once from two
    client processes against two gunicorn workers; exactly 50 pass, 150 get 429 rate_limited with Retry-After
    and RateLimit-*; the 51st passes only once the window has moved on (the clock advanced 60 s)."""
    require_postgresql()
    org = f.OrganizationFactory(slug="acme")
    agent_with_revision(org, "support", local_spec())
    key, plain = f.api_key(org, preset="runner")
    if kind == "requests":
        _set_org(org, requests_per_minute=50)
    else:
        _set_key(key.pk, executions_per_minute=50)

    with gunicorn(workers=2, threads=64, extra_env=SERVER_ENV) as base:
        results = fire_from_processes(base, plain, "/v1/acme/agents/support:execute", processes=2, threads=100,
                                      headers=RATE_HEADERS)
        codes = sorted((row[0], row[3]) for row in results)
        assert len(results) == 200
        assert codes.count((200, "")) == 50, sorted(set(codes))
        assert codes.count((429, "rate_limited")) == 150, sorted(set(codes))
        for status, _, _, _, headers in results:
            assert headers["RateLimit-Limit"] == "50"
            if status == 429:  # the clock stands still: all 50 were counted at T0, so room comes back in 60 s
                assert headers == {"Retry-After": "60", "RateLimit-Limit": "50", "RateLimit-Remaining": "0",
                                   "RateLimit-Reset": "60"}
            else:
                assert headers["Retry-After"] is None and 0 <= int(headers["RateLimit-Remaining"]) < 50

        with httpx.Client(base_url=base, headers={"X-API-KEY": plain}, timeout=30) as client:
            clock.advance(59.999)
            early = client.post("/v1/acme/agents/support:execute", json={"input": {"question": "51st"}})
            assert early.status_code == 429 and early.headers["Retry-After"] == "1"
            clock.advance(0.001)
            on_time = client.post("/v1/acme/agents/support:execute", json={"input": {"question": "51st"}})
            assert on_time.status_code == 200, on_time.text
            assert on_time.headers["RateLimit-Limit"] == "50" and on_time.headers["RateLimit-Remaining"] == "49"
    assert Run.objects.filter(agent__slug="support").count() == 51  # refused executes ran nothing


# --- executions and tokens per minute, in process ----------------------------------------------------

@pytest.mark.django_db
def test_executions_per_minute_refuse_before_running(clock, org, api):
    agent_with_revision(org, "support", local_spec())
    _set_org(org, executions_per_minute=2)
    _, plain = f.api_key(org, preset="runner")
    client = api.as_key(plain)
    assert [_execute(client).status_code for _ in range(2)] == [200, 200]
    refused = _execute(client)
    error = _error(refused, 429, "rate_limited")
    assert error["details"] == {"limit": "executions", "scope": "organization", "perMinute": 2, "retryAfter": 60}
    assert refused["Retry-After"] == "60" and refused["RateLimit-Limit"] == "2"
    assert Run.objects.count() == 2  # nothing ran, nothing recorded
    # An invalid execute is a 400 and spends no execution.
    clock.advance(60)
    assert client.post("/v1/acme/agents/support:execute", {"input": {}}, format="json").status_code == 400
    assert [_execute(client).status_code for _ in range(3)] == [200, 200, 429]


def _token_agent(org, actual_in: int, actual_out: int, max_tokens: int):
    spec = local_spec("0123456789", prompt="fixed prompt")
    model = spec["steps"][0]["model"]
    model["maxTokens"] = max_tokens
    model["script"][0]["usage"] = {"inputTokens": actual_in, "outputTokens": actual_out}
    return agent_with_revision(org, "support", spec)[0]


@pytest.mark.django_db
def test_tokens_per_minute_reserve_the_upper_bound_and_settle_to_the_actual(clock, org, api):
    """Each model call reserves its upper bound (input bound + maxTokens) and settles to its usage: with a limit
    of bound + actual, a second run fits only because the first one's settle freed (bound - actual)."""
    from agents.engine.tokens import input_token_bound

    bound = input_token_bound([{"role": "user", "content": "fixed prompt"}], []) + 500
    actual = 3 + 7
    _token_agent(org, 3, 7, max_tokens=500)
    key, plain = f.api_key(org, preset="runner")
    _set_key(key.pk, tokens_per_minute=bound + actual)
    client = api.as_key(plain)

    assert _execute(client).status_code == 200
    totals = clock.client.get(f"fx:rl:k{key.pk}:t:sum")
    assert int(totals) == actual  # reserved `bound`, settled to the usage
    assert _execute(client).status_code == 200  # actual + bound fits: without the settle it would not
    stopped = _execute(client)
    error = _error(stopped, 429, "rate_limited")
    assert stopped["Retry-After"] == "60" and stopped["RateLimit-Limit"] == str(bound + actual)
    run = Run.objects.get(pk=stopped["X-Fruxon-Run-Id"])  # the run is recorded, stopped before the call
    assert run.status == "error" and run.error["code"] == "rate_limited" and run.input_tokens == 0
    assert "tokens" in error["message"]
    assert int(clock.client.get(f"fx:rl:k{key.pk}:t:sum")) == 2 * actual
    clock.advance(60)
    assert _execute(client).status_code == 200


@pytest.mark.django_db
def test_tokens_refusal_releases_the_budget_reservation(clock, org, api, settings):
    """A call the token limit refuses leaves no budget reservation open (the ledger's reserved is back to 0)."""
    from decimal import Decimal

    from django.utils import timezone

    from monitoring.ledger import BudgetState, ledger
    from monitoring.models import Budget

    from .test_budgets import price

    settings.FRUXON_LEDGER = "database"
    agent = _token_agent(org, 3, 7, max_tokens=500)
    price(org, agent)
    budget = Budget.objects.create(organization=org, agent=agent, period="day", amount_usd=Decimal(1000),
                                   enforce=True)
    _set_org(org, tokens_per_minute=100)  # below one call's upper bound: never admitted
    _, plain = f.api_key(org, preset="runner")
    error = _error(_execute(api.as_key(plain)), 429, "rate_limited")
    assert "more than" in error["message"]
    assert ledger().usage(BudgetState.of(budget, timezone.now())) == (0, 0)


# --- which limits apply ----------------------------------------------------------------------------------

@pytest.mark.django_db
def test_key_limited_tighter_than_the_org_is_limited_by_its_own(clock, org, owner, api):
    _set_org(org, requests_per_minute=5)
    tight, tight_plain = f.api_key(org, preset="readonly", name="tight")
    _, other_plain = f.api_key(org, preset="readonly", name="other")
    _set_key(tight.pk, requests_per_minute=2)
    tight_client, other, person = api.as_key(tight_plain), api.as_key(other_plain), api.as_user(owner)

    first = tight_client.get("/v1/acme/agents")
    assert first.status_code == 200 and first["RateLimit-Limit"] == "2" and first["RateLimit-Remaining"] == "1"
    assert tight_client.get("/v1/acme/agents").status_code == 200
    error = _error(tight_client.get("/v1/acme/agents"), 429, "rate_limited")
    assert error["details"]["scope"] == "apiKey" and error["details"]["perMinute"] == 2
    # The org had 2 of its 5 used by that key; another key and a person share the other 3.
    assert other.get("/v1/acme/agents")["RateLimit-Remaining"] == "2"
    assert person.get("/v1/acme/agents").status_code == 200
    assert other.get("/v1/acme/agents").status_code == 200
    error = _error(person.get("/v1/acme/agents"), 429, "rate_limited")
    assert error["details"]["scope"] == "organization"
    # Raising the key's limit over the API takes effect at once (its cached row is dropped) ...
    clock.advance(60)
    assert person.patch(f"/v1/acme/api-keys/{tight.pk}", {"rateLimits": {"requestsPerMinute": 3}},
                        format="json").status_code == 200
    assert tight_client.get("/v1/acme/agents")["RateLimit-Limit"] == "3"


@pytest.mark.django_db
def test_key_limit_within_org_limit(clock, org, owner, api):
    client = api.as_user(owner)
    assert client.put("/v1/acme/rate-limits", {"requestsPerMinute": 100, "tokensPerMinute": 5000},
                      format="json").status_code == 200
    above = client.post("/v1/acme/api-keys", {"name": "k", "preset": "runner",
                                              "rateLimits": {"requestsPerMinute": 101}}, format="json")
    error = _error(above, 400, "invalid_request")
    assert list(error["details"]["fields"]) == ["rateLimits.requestsPerMinute"]
    assert not ApiKey.objects.filter(name="k").exists()

    created = client.post("/v1/acme/api-keys", {"name": "k", "preset": "runner",
                                                "rateLimits": {"requestsPerMinute": 100, "executionsPerMinute": 7}},
                          format="json")
    assert created.status_code == 201
    assert created.json()["rateLimits"] == {"requestsPerMinute": 100, "executionsPerMinute": 7, "tokensPerMinute": None}
    key_id = created.json()["id"]
    error = _error(client.patch(f"/v1/acme/api-keys/{key_id}", {"rateLimits": {"tokensPerMinute": 5001}},
                                format="json"), 400, "invalid_request")
    assert list(error["details"]["fields"]) == ["rateLimits.tokensPerMinute"]
    _error(client.patch(f"/v1/acme/api-keys/{key_id}", {"rateLimits": {"requestsPerMinute": 0}}, format="json"),
           400, "invalid_request")
    patched = client.patch(f"/v1/acme/api-keys/{key_id}", {"rateLimits": {"tokensPerMinute": 4000}}, format="json")
    assert patched.status_code == 200
    assert patched.json()["rateLimits"] == {"requestsPerMinute": 100, "executionsPerMinute": 7, "tokensPerMinute": 4000}
    assert client.get(f"/v1/acme/api-keys/{key_id}").json()["rateLimits"]["tokensPerMinute"] == 4000
    event = AuditEvent.objects.get(action="key.rate_limits_changed")
    assert event.target_id == str(key_id) and event.actor_user == owner
    assert event.data["before"]["tokensPerMinute"] is None and event.data["after"]["tokensPerMinute"] == 4000


@pytest.mark.django_db
def test_a_key_gives_no_looser_limits_than_its_own(clock, org, api):
    """No one gives more than they hold: a rate-limited keys:write key cannot create or patch keys to looser
    limits (or none), and cannot touch a key with rights it lacks."""
    writer, writer_plain = f.api_key(org, preset="admin", name="writer")
    _set_key(writer.pk, requests_per_minute=10)
    target, _ = f.api_key(org, preset="runner", name="target")
    client = api.as_key(writer_plain)

    error = _error(client.patch(f"/v1/acme/api-keys/{target.pk}", {"rateLimits": {"requestsPerMinute": 11}},
                                format="json"), 403, "forbidden")
    assert error["details"]["rateLimits"] == {"requestsPerMinute": {"held": 10, "wanted": 11}}
    _error(client.patch(f"/v1/acme/api-keys/{target.pk}", {"rateLimits": {"requestsPerMinute": None}},
                        format="json"), 403, "forbidden")
    _error(client.post("/v1/acme/api-keys", {"name": "free", "preset": "runner"}, format="json"), 403, "forbidden")
    assert client.patch(f"/v1/acme/api-keys/{target.pk}", {"rateLimits": {"requestsPerMinute": 10}},
                        format="json").status_code == 200
    assert client.post("/v1/acme/api-keys", {"name": "bounded", "preset": "runner",
                                             "rateLimits": {"requestsPerMinute": 5}}, format="json").status_code == 201

    _, narrow_plain = f.api_key(org, scopes=["keys:read", "keys:write"], name="narrow")
    error = _error(api.as_key(narrow_plain).patch(f"/v1/acme/api-keys/{writer.pk}",
                                                  {"rateLimits": {"requestsPerMinute": 1}}, format="json"),
                   403, "forbidden")
    assert "agents:execute" in error["details"]["missingScopes"]
    assert ApiKey.objects.get(pk=writer.pk).requests_per_minute == 10


# --- setting limits: API and admin, audited, owners only ------------------------------------------------

@pytest.mark.django_db
def test_api_sets_org_limits_audited_viewers_cannot(clock, org, owner, editor, viewer, api):
    assert api.as_user(viewer).get("/v1/acme/rate-limits").json() == {
        "requestsPerMinute": None, "executionsPerMinute": None, "tokensPerMinute": None}
    body = {"requestsPerMinute": 600, "executionsPerMinute": 60, "tokensPerMinute": 100000}
    for person in (viewer, editor):
        _error(api.as_user(person).put("/v1/acme/rate-limits", body, format="json"), 403, "forbidden")
    _, reader = f.api_key(org, scopes=["org:read"])
    _error(api.as_key(reader).put("/v1/acme/rate-limits", body, format="json"), 403, "forbidden")
    assert not AuditEvent.objects.filter(action="org.rate_limits_changed").exists()

    answer = api.as_user(owner).put("/v1/acme/rate-limits", body, format="json")
    assert answer.status_code == 200 and answer.json() == body
    assert api.as_key(reader).get("/v1/acme/rate-limits").json() == body
    _error(api.as_user(owner).put("/v1/acme/rate-limits", {"requestsPerMinute": "many"}, format="json"),
           400, "invalid_request")
    # PUT replaces: a missing limit becomes unlimited.
    assert api.as_user(owner).put("/v1/acme/rate-limits", {"executionsPerMinute": 5},
                                  format="json").json()["requestsPerMinute"] is None
    first, second = AuditEvent.objects.filter(action="org.rate_limits_changed").order_by("at", "id")
    assert first.actor_user == owner and first.data["after"] == body
    assert second.data["before"] == body and second.data["after"]["executionsPerMinute"] == 5


@pytest.mark.django_db
def test_admin_sets_org_and_key_limits_audited_viewers_cannot(clock, org, owner, viewer, client):
    from django.urls import reverse

    key, _ = f.api_key(org, preset="runner")
    org_url = reverse("admin:orgs_organization_change", args=[org.pk])
    form = {"name": org.name, "retention_days": org.retention_days, "requests_per_minute": "120",
            "executions_per_minute": "", "tokens_per_minute": "9000", "_save": "Save"}

    client.force_login(viewer)
    assert client.post(org_url, form).status_code == 403
    org.refresh_from_db()
    assert org.requests_per_minute is None

    client.force_login(owner)
    assert client.post(org_url, form).status_code == 302
    org.refresh_from_db()
    assert (org.requests_per_minute, org.executions_per_minute, org.tokens_per_minute) == (120, None, 9000)
    event = AuditEvent.objects.get(action="org.rate_limits_changed")
    assert event.actor_user == owner and event.data["after"]["requestsPerMinute"] == 120

    key_url = reverse("admin:orgs_apikey_change", args=[key.pk])
    page = client.get(key_url)
    assert b'name="requests_per_minute"' in page.content
    above = client.post(key_url, {"requests_per_minute": "121", "executions_per_minute": "",
                                  "tokens_per_minute": "", "_save": "Save"}, follow=True)
    assert b"within the organization" in above.content
    assert ApiKey.objects.get(pk=key.pk).requests_per_minute is None
    assert client.post(key_url, {"requests_per_minute": "30", "executions_per_minute": "",
                                 "tokens_per_minute": "", "_save": "Save"}).status_code == 302
    assert ApiKey.objects.get(pk=key.pk).requests_per_minute == 30
    assert AuditEvent.objects.get(action="key.rate_limits_changed").data["after"]["requestsPerMinute"] == 30


# --- fail open, no query, the async limiter, the schema ------------------------------------------------------

def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once the socket is closed


@pytest.mark.django_db
def test_fail_open_when_redis_is_unreachable_logged_once(org, owner, api, settings, caplog):
    settings.FRUXON_RATELIMIT_REDIS_URL = f"redis://127.0.0.1:{_closed_port()}/0"
    settings.FRUXON_RATELIMIT_BREAKER_SECONDS = 0  # try Redis on every request: the log still says it once
    settings.FRUXON_RATELIMIT_LOG_INTERVAL_SECONDS = 3600
    _set_org(org, requests_per_minute=1, executions_per_minute=1, tokens_per_minute=1)
    agent_with_revision(org, "support", local_spec())
    client = api.as_user(owner)
    with caplog.at_level(logging.ERROR, logger="fruxon.ratelimit"):
        answers = [client.get("/v1/acme/agents") for _ in range(5)] + [_execute(client) for _ in range(3)]
    assert [a.status_code for a in answers] == [200] * 8
    assert all("RateLimit-Limit" not in a for a in answers)
    outage = [r for r in caplog.records if "not enforced" in r.getMessage()]
    assert len(outage) == 1, [r.getMessage() for r in caplog.records]


def test_fail_open_costs_little_with_the_breaker():
    """After one failure, the breaker skips Redis: later checks cost no connection attempt."""
    import time

    limiter = ratelimit.RateLimiter(f"redis://127.0.0.1:{_closed_port()}/0", breaker_seconds=5, timeout=0.05)
    limits = (ratelimit.Limit("o1:r", 1, "organization", "requests"),)
    assert limiter.check(limits).allowed
    started = time.perf_counter()
    assert all(limiter.check(limits).allowed for _ in range(1000))
    assert time.perf_counter() - started < 0.5  # 1000 checks, no socket touched (each is a comparison)


def test_breaker_opens_on_a_refused_connection_or_three_timeouts_in_a_row():
    """A busy process may read one answer late: one timeout fails that check open but keeps using Redis."""
    breaker = ratelimit._FailOpen(breaker_seconds=5, log_interval=60)
    breaker.failed(redis.TimeoutError())
    breaker.failed(redis.TimeoutError())
    assert not breaker.open()
    breaker.succeeded()
    breaker.failed(redis.TimeoutError())
    breaker.failed(redis.TimeoutError())
    assert not breaker.open()
    breaker.failed(redis.TimeoutError())
    assert breaker.open()
    refused = ratelimit._FailOpen(breaker_seconds=5, log_interval=60)
    refused.failed(redis.ConnectionError())
    assert refused.open()


@pytest.mark.django_db
def test_limits_add_no_database_query(clock, org, api):
    agent_with_revision(org, "support", local_spec())
    _, plain = f.api_key(org, preset="runner")
    client = api.as_key(plain)
    _execute(client)  # warm: the key is cached, prices loaded

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert _execute(client).status_code == 200
        return len(captured)

    unlimited = queries()
    _set_org(org, requests_per_minute=1000, executions_per_minute=1000, tokens_per_minute=10**9)
    key = ApiKey.objects.get(name="test key")
    _set_key(key.pk, requests_per_minute=1000)
    from fruxon.api.authentication import forget_key

    forget_key(key)
    _execute(client)  # re-cache the key with its limits
    assert queries() == unlimited


def test_async_limiter_shares_the_script_and_semantics(settings):
    client = redis.Redis.from_url(REDIS_URL)
    _clear(client)
    now = [T0 / 1000]
    limits = (ratelimit.Limit("k9:t", 10, "apiKey", "tokens"),)
    sync = ratelimit.RateLimiter(REDIS_URL, clock=lambda: now[0], timeout=5)

    async def scenario():
        limiter = ratelimit.AsyncRateLimiter(REDIS_URL, clock=lambda: now[0], timeout=5)
        try:
            first = await limiter.check(limits, 6)
            assert first.allowed and first.remaining == 4
            assert not sync.check(limits, 6).allowed  # one window, whichever client asks
            await limiter.settle(first, 2)
            assert sync.check(limits, 6).allowed  # the settle freed 4
            refused = await limiter.check(limits, 3)
            assert not refused.allowed and refused.retry_after == 60 and refused.headers()["Retry-After"] == "60"
            now[0] += 60
            assert (await limiter.check(limits, 10)).allowed
        finally:
            await limiter.aclose()

    asyncio.run(scenario())
    _clear(client)


def test_sliding_window_holds_at_most_n_in_any_60_seconds():
    """Spread uses: after any 60 s, only what left the window comes back, one use at a time."""
    client = redis.Redis.from_url(REDIS_URL)
    _clear(client)
    now = [T0 / 1000]
    limiter = ratelimit.RateLimiter(REDIS_URL, clock=lambda: now[0], timeout=5)
    limits = (ratelimit.Limit("o77:r", 3, "organization", "requests"),)
    admitted = []
    for step in range(240):  # every 0.5 s for 2 minutes, always asking
        if limiter.check(limits).allowed:
            admitted.append(now[0])
        now[0] += 0.5
    for index, at in enumerate(admitted):
        assert sum(1 for other in admitted[index:] if other - at < 60) <= 3
    assert len(admitted) == 6  # 3 at the start, 3 exactly 60 s later
    _clear(client)


@pytest.mark.django_db
def test_openapi_documents_rate_limits(api, owner):
    schema = api.as_user(owner).get("/v1/schema", HTTP_ACCEPT="application/json").json()
    paths = schema["paths"]
    assert set(paths["/v1/{tenant}/rate-limits"]) >= {"get", "put"}
    assert "patch" in paths["/v1/{tenant}/api-keys/{id}"]
    assert "rateLimits" in schema["components"]["schemas"]["ApiKey"]["properties"]
    for path, item in paths.items():
        if "{tenant}" not in path:
            continue
        for method, operation in item.items():
            if method not in {"get", "put", "post", "patch", "delete"}:
                continue
            too_many = operation["responses"]["429"]
            assert "rate_limited" in too_many["description"], (path, method)
            assert set(too_many["headers"]) >= set(RATE_HEADERS), (path, method)


@pytest.mark.django_db
def test_refusals_are_counted_for_metrics(clock, org, api, settings):
    """Every refusal passes the one call site of the /metrics counter, labelled by limit and org."""
    from monitoring import observability

    settings.FRUXON_METRICS_TOKEN = "t"
    def counted() -> float:
        return observability.REGISTRY.get_sample_value(
            "fruxon_rate_limited_total", {"scope": "key:requests", "org": "acme"}) or 0.0

    before = counted()
    key, plain = f.api_key(org, preset="readonly")
    _set_key(key.pk, requests_per_minute=1)
    client = api.as_key(plain)
    assert [client.get("/v1/acme/agents").status_code for _ in range(4)] == [200, 429, 429, 429]
    assert counted() - before == 3


def test_execute_refusals_after_the_request_count_carry_its_headers(clock, org, api):
    """As on every endpoint (the DRF base's finalize_response): a 400 or 404 answered after the
    requests-per-minute check still says where the caller stands."""
    agent_with_revision(org, "support", local_spec())
    _set_org(org, requests_per_minute=10)
    _, plain = f.api_key(org, preset="runner")
    client = api.as_key(plain)
    invalid = client.post("/v1/acme/agents/support:execute", {"input": {}}, format="json")
    assert invalid.status_code == 400 and invalid["RateLimit-Limit"] == "10"
    assert invalid["RateLimit-Remaining"] == "9"
    missing = client.post("/v1/acme/agents/support:execute", {"input": {"question": "q"}, "revisionId": "rev_nope"},
                          format="json")
    assert missing.status_code == 404 and missing["RateLimit-Remaining"] == "8"
