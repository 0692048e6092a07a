"""The monitoring API: run list (filters, cursor pages, agent-limited keys), pin / unpin with
audit, conversations with their turns in order, metrics equal to a pure-Python computation
over ~200 seeded runs, bad parameters answering 400, and the audited run delete service.
"""
from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal
from urllib.parse import parse_qs, urlparse

import pytest
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from agents.services import create_revision
from monitoring import services
from monitoring.api import views
from monitoring.models import RUN_SOURCES, RUN_STATUSES, Conversation, Run, Span
from orgs.actor import Actor
from orgs.models import AuditEvent

from . import factories as f
from .builders import SYSTEM, agent_with_revision, local_spec

UTC = dt.timezone.utc
HOUR = dt.timedelta(hours=1)


# --- seeding ------------------------------------------------------------------------------------------
class Fleet:
    """Two agents in org acme: support (revisions s1, s2) and sales (t1)."""

    def __init__(self, org):
        self.org = org
        self.support, self.s1 = agent_with_revision(org, "support")
        self.s2 = create_revision(actor=SYSTEM, agent=self.support, spec=local_spec("v2"), message="v2")
        self.sales, self.t1 = agent_with_revision(org, "sales")

    def run(self, revision, *, at: dt.datetime, **fields) -> Run:
        return Run(organization=self.org, agent_id=revision.agent_id, revision=revision, created_at=at,
                   status=fields.pop("status", "ok"), **fields)


@pytest.fixture
def fleet(org) -> Fleet:
    return Fleet(org)


@pytest.fixture
def viewer_client(viewer, api):
    return api.as_user(viewer)


@pytest.fixture
def editor_client(editor, api):
    return api.as_user(editor)


def _ids(response) -> list[str]:
    assert response.status_code == 200, response.content[:500]
    return [item["id"] for item in response.json()["results"]]


def _assert_400(response, parameter: str):
    assert response.status_code == 400, response.content[:500]
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert parameter in error["details"]["fields"], error
    assert parameter in error["message"]


# --- run list -------------------------------------------------------------------------------------------
@pytest.fixture
def runs(fleet):
    """Five runs a minute apart, each with distinct agent / revision / status / source values."""
    t0 = timezone.now() - dt.timedelta(hours=2)
    conversation = Conversation.objects.create(organization=fleet.org, agent=fleet.support, key="sess:1")
    rows = [
        fleet.run(fleet.s1, at=t0, status="ok", source="api"),
        fleet.run(fleet.s2, at=t0 + dt.timedelta(minutes=1), status="error", source="canary", conversation=conversation),
        fleet.run(fleet.t1, at=t0 + dt.timedelta(minutes=2), status="timeout", source="shadow"),
        fleet.run(fleet.s1, at=t0 + dt.timedelta(minutes=3), status="budget_exceeded", source="evaluation",
                  conversation=conversation),
        fleet.run(fleet.t1, at=t0 + dt.timedelta(minutes=4), status="max_tool_calls", source="studio"),
    ]
    Run.objects.bulk_create(rows)
    return rows


def test_run_list_is_newest_first_without_spans(runs, viewer_client):
    response = viewer_client.get("/v1/acme/runs")
    assert _ids(response) == [r.id for r in reversed(runs)]
    first = response.json()["results"][0]
    assert "spans" not in first
    assert first["agent"] == "sales" and first["status"] == "max_tool_calls" and first["source"] == "studio"
    assert first["revisionId"] == runs[4].revision_id and first["conversationId"] is None
    assert response.json()["results"][3]["conversationId"] == "sess:1"


@pytest.mark.parametrize("query,expected", [
    ("agent=support", [3, 1, 0]),
    ("agent=nobody", []),
    ("revisionId={s2}", [1]),
    ("status=error", [1]),
    ("status=timeout", [2]),
    ("source=evaluation", [3]),
    ("source=api", [0]),
    ("conversationId=sess:1", [3, 1]),
    ("since={t2}", [4, 3, 2]),
    ("until={t2}", [1, 0]),
    ("since={t1}&until={t3}", [2, 1]),
    ("agent=sales&status=timeout", [2]),
    ("agent=&status=", [4, 3, 2, 1, 0]),
])
def test_run_list_filters(runs, fleet, viewer_client, query, expected):
    moments = {f"t{i}": run.created_at.isoformat().replace("+00:00", "Z") for i, run in enumerate(runs)}
    response = viewer_client.get("/v1/acme/runs", dict(
        pair.split("=", 1) for pair in query.format(s2=fleet.s2.id, **moments).split("&")))
    assert _ids(response) == [runs[i].id for i in expected]


@pytest.mark.parametrize("query,parameter", [
    ({"status": "exploded"}, "status"),
    ({"source": "cron"}, "source"),
    ({"since": "yesterday"}, "since"),
    ({"until": "2024-13-45T99:00:00Z"}, "until"),
    ({"since": "2024-06-02T00:00:00Z", "until": "2024-06-01T00:00:00Z"}, "until"),
])
def test_run_list_bad_parameters_are_400(runs, viewer_client, query, parameter):
    _assert_400(viewer_client.get("/v1/acme/runs", query), parameter)


def test_run_list_pages_with_a_next_cursor(fleet, viewer_client):
    at = timezone.now() - HOUR
    # Seven runs, three of them sharing one timestamp: the order is (-created_at, -id), stable across pages.
    moments = [at, at + dt.timedelta(seconds=1), at + dt.timedelta(seconds=1), at + dt.timedelta(seconds=1),
               at + dt.timedelta(seconds=2), at + dt.timedelta(seconds=3), at + dt.timedelta(seconds=4)]
    Run.objects.bulk_create([fleet.run(fleet.s1, at=moment) for moment in moments])
    expected = list(Run.objects.order_by("-created_at", "-id").values_list("id", flat=True))

    seen, url, pages = [], "/v1/acme/runs?limit=3", 0
    while url:
        response = viewer_client.get(url)
        seen += _ids(response)
        pages += 1
        url = response.json()["next"]
        if url:
            assert "cursor" in parse_qs(urlparse(url).query)
    assert pages == 3
    assert seen == expected


def test_run_detail_has_the_span_tree(runs, fleet, viewer_client):
    run = runs[0]
    Span.objects.bulk_create([
        Span(id="sp_root", organization=fleet.org, run=run, position=0, kind="step", name="answer", started_at=run.created_at),
        Span(id="sp_llm", organization=fleet.org, run=run, parent_id="sp_root", position=1, kind="llm", name="local",
             started_at=run.created_at),
    ])
    body = viewer_client.get(f"/v1/acme/runs/{run.id}").json()
    assert [s["id"] for s in body["spans"]] == ["sp_root"]
    assert [c["id"] for c in body["spans"][0]["children"]] == ["sp_llm"]


def test_a_key_limited_to_agents_sees_only_their_runs(runs, fleet, api):
    _, plaintext = f.api_key(fleet.org, scopes=["runs:read"], agents=["support"])
    client = api.as_key(plaintext)
    assert _ids(client.get("/v1/acme/runs")) == [runs[3].id, runs[1].id, runs[0].id]
    assert _ids(client.get("/v1/acme/runs", {"agent": "sales"})) == []
    assert client.get(f"/v1/acme/runs/{runs[0].id}").status_code == 200
    assert client.get(f"/v1/acme/runs/{runs[2].id}").json()["error"]["code"] == "not_found"


# --- pin ------------------------------------------------------------------------------------------------------
def test_pin_and_unpin_are_audited(runs, editor, editor_client):
    run = runs[0]
    response = editor_client.post(f"/v1/acme/runs/{run.id}:pin", format="json")
    assert response.status_code == 200, response.content
    assert response.json()["pinned"] is True and response.json()["id"] == run.id
    assert Run.objects.get(pk=run.id).pinned is True
    event = AuditEvent.objects.get(action="run.pinned")
    assert (event.target_type, event.target_id, event.actor_user) == ("run", run.id, editor)
    assert event.data == {"agent": "support", "revisionId": run.revision_id}

    # Pinning a pinned run changes nothing and writes no second event.
    assert editor_client.post(f"/v1/acme/runs/{run.id}:pin", {"pinned": True}, format="json").json()["pinned"] is True
    assert AuditEvent.objects.filter(action="run.pinned").count() == 1

    response = editor_client.post(f"/v1/acme/runs/{run.id}:pin", {"pinned": False}, format="json")
    assert response.status_code == 200 and response.json()["pinned"] is False
    assert Run.objects.get(pk=run.id).pinned is False
    assert AuditEvent.objects.get(action="run.unpinned").target_id == run.id


def test_viewers_cannot_pin(runs, viewer_client):
    response = viewer_client.post(f"/v1/acme/runs/{runs[0].id}:pin", format="json")
    assert response.status_code == 403 and response.json()["error"]["code"] == "forbidden"
    assert Run.objects.filter(pinned=True).count() == 0
    assert not AuditEvent.objects.filter(action__startswith="run.").exists()


def test_a_key_with_runs_write_pins_as_itself(runs, fleet, api):
    key, plaintext = f.api_key(fleet.org, scopes=["runs:write"])
    assert api.as_key(plaintext).post(f"/v1/acme/runs/{runs[1].id}:pin", format="json").status_code == 200
    assert AuditEvent.objects.get(action="run.pinned").actor_key == key


@pytest.mark.parametrize("body,field", [({"pinned": "yes"}, "pinned"), ({"pinned": True, "why": "x"}, "why"),
                                        (["pinned"], "body")])
def test_pin_refuses_a_bad_body(runs, editor_client, body, field):
    _assert_400(editor_client.post(f"/v1/acme/runs/{runs[0].id}:pin", body, format="json"), field)
    assert not Run.objects.filter(pinned=True).exists()


def test_delete_run_service_is_audited(runs, fleet):
    run = runs[0]
    Span.objects.create(organization=fleet.org, run=run, kind="llm", name="local", started_at=run.created_at)
    services.delete_run(actor=Actor(system=True), run=Run.objects.select_related("agent", "organization").get(pk=run.id))
    assert not Run.objects.filter(pk=run.id).exists() and not Span.objects.filter(run_id=run.id).exists()
    event = AuditEvent.objects.get(action="run.deleted")
    assert event.target_id == run.id and event.actor_label == "system"


# --- conversations ------------------------------------------------------------------------------------------
@pytest.fixture
def conversations(fleet):
    now = timezone.now()
    chat = Conversation.objects.create(organization=fleet.org, agent=fleet.support, key="chat:7", turns=3,
                                       created_at=now - 3 * HOUR, updated_at=now - HOUR)
    deal = Conversation.objects.create(organization=fleet.org, agent=fleet.sales, key="deal-1", turns=1,
                                       created_at=now - 2 * HOUR, updated_at=now - dt.timedelta(minutes=5))
    # Inserted out of order: the turns come back by created_at.
    turns = [
        fleet.run(fleet.s2, at=now - HOUR - dt.timedelta(minutes=1), conversation=chat, input={"question": "third"},
                  output="3", status="error"),
        fleet.run(fleet.s1, at=now - 3 * HOUR, conversation=chat, input={"question": "first"}, output="1"),
        fleet.run(fleet.s1, at=now - 2 * HOUR, conversation=chat, input={"question": "second"}, output="2",
                  cost_usd=Decimal("0.00012345"), latency_ms=42),
    ]
    Run.objects.bulk_create(turns + [fleet.run(fleet.t1, at=now - dt.timedelta(minutes=5), conversation=deal)])
    return chat, deal, turns


def test_conversations_list_newest_updated_first(conversations, viewer_client):
    response = viewer_client.get("/v1/acme/conversations")
    assert _ids(response) == ["deal-1", "chat:7"]
    chat = response.json()["results"][1]
    assert (chat["id"], chat["agent"], chat["turnCount"]) == ("chat:7", "support", 3)
    assert parse_datetime(chat["updatedAt"]) == conversations[0].updated_at
    assert _ids(viewer_client.get("/v1/acme/conversations", {"agent": "support"})) == ["chat:7"]


def test_a_conversation_lists_its_turns_in_order(conversations, viewer_client):
    chat, _, turns = conversations
    body = viewer_client.get("/v1/acme/conversations/chat:7").json()
    assert body["id"] == "chat:7" and body["agent"] == "support" and body["truncated"] is False
    assert [t["input"]["question"] for t in body["turns"]] == ["first", "second", "third"]
    second = body["turns"][1]
    assert second == {"runId": turns[2].id, "revisionId": turns[2].revision_id, "status": "ok",
                      "input": {"question": "second"}, "output": "2", "error": None, "latencyMs": 42,
                      "costUsd": "0.00012345", "createdAt": second["createdAt"]}
    assert parse_datetime(second["createdAt"]) == turns[2].created_at
    assert body["turns"][2]["status"] == "error" and body["turns"][2]["revisionId"] == turns[0].revision_id


def test_a_long_conversation_is_truncated(conversations, viewer_client, monkeypatch):
    monkeypatch.setattr(views, "TURNS_LISTED", 2)
    body = viewer_client.get("/v1/acme/conversations/chat:7").json()
    assert body["truncated"] is True
    assert [t["input"]["question"] for t in body["turns"]] == ["first", "second"]


def test_unknown_conversation_is_404(conversations, viewer_client):
    assert viewer_client.get("/v1/acme/conversations/nope").json()["error"]["code"] == "not_found"


def test_a_key_limited_to_agents_sees_only_their_conversations(conversations, fleet, api):
    _, plaintext = f.api_key(fleet.org, scopes=["runs:read"], agents=["sales"])
    client = api.as_key(plaintext)
    assert _ids(client.get("/v1/acme/conversations")) == ["deal-1"]
    assert client.get("/v1/acme/conversations/chat:7").status_code == 404
    assert len(client.get("/v1/acme/conversations/deal-1").json()["turns"]) == 1


# --- metrics -----------------------------------------------------------------------------------------------------
def _floor(moment: dt.datetime, bucket: str) -> dt.datetime:
    moment = moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return moment.replace(hour=0) if bucket == "day" else moment


def _nearest_rank(latencies: list[int], fraction: float) -> int | None:
    """The smallest recorded latency with at least ``fraction`` of all latencies at or below it."""
    for value in sorted(latencies):
        if sum(1 for x in latencies if x <= value) >= fraction * len(latencies):
            return value
    return None


def _expected_stats(rows: list[Run]) -> dict:
    latencies = [r.latency_ms for r in rows]
    errors = sum(1 for r in rows if r.status != "ok")
    return {
        "runs": len(rows), "errors": errors, "errorRate": errors / len(rows) if rows else None,
        "p50LatencyMs": _nearest_rank(latencies, 0.5), "p95LatencyMs": _nearest_rank(latencies, 0.95),
        "inputTokens": sum(r.input_tokens for r in rows), "outputTokens": sum(r.output_tokens for r in rows),
        "cachedInputTokens": sum(r.cached_input_tokens for r in rows),
        "reasoningTokens": sum(r.reasoning_tokens for r in rows),
        "costUsd": f"{sum((r.cost_usd for r in rows), Decimal('0')):.8f}",
    }


def _expected(rows: list[Run], since: dt.datetime, until: dt.datetime, bucket: str) -> dict:
    step = HOUR if bucket == "hour" else dt.timedelta(days=1)
    inside = [r for r in rows if since <= r.created_at < until]
    buckets, start = [], _floor(since, bucket)
    while start < until:
        buckets.append({"start": start, **_expected_stats([r for r in inside if _floor(r.created_at, bucket) == start])})
        start += step
    return {"bucket": bucket, "buckets": buckets, "totals": _expected_stats(inside)}


def _actual(response) -> dict:
    assert response.status_code == 200, response.content[:500]
    body = response.json()
    return {"bucket": body["bucket"], "totals": body["totals"],
            "buckets": [b | {"start": parse_datetime(b["start"])} for b in body["buckets"]]}


@pytest.fixture
def seeded(fleet) -> tuple[list[Run], dt.datetime]:
    """~200 runs over three hours from ``base`` with varied statuses, sources, latencies, tokens and costs."""
    rng = random.Random(20240601)
    base = _floor(timezone.now(), "hour") - 3 * HOUR
    revisions = [fleet.s1, fleet.s2, fleet.t1]
    rows = []
    for _ in range(200):
        tokens = rng.randint(0, 4000)
        rows.append(fleet.run(
            rng.choice(revisions), at=base + dt.timedelta(microseconds=rng.randrange(3 * 3600 * 10**6)),
            status=rng.choices(RUN_STATUSES, weights=[70, 12, 6, 6, 6, 3])[0], source=rng.choice(RUN_SOURCES),
            latency_ms=rng.choice([rng.randint(20, 9000), 250, 1200]),  # repeated values make ties
            input_tokens=tokens, cached_input_tokens=rng.randint(0, tokens), output_tokens=rng.randint(0, 2000),
            reasoning_tokens=rng.choice([0, rng.randint(0, 800)]),
            cost_usd=Decimal(rng.randint(0, 5 * 10**6)) / Decimal(10**8),
        ))
    # On the edges: the first instant of the second hour is in it; ``until`` itself is outside.
    rows.append(fleet.run(fleet.s1, at=base + HOUR, latency_ms=7, cost_usd=Decimal("0.00000001")))
    rows.append(fleet.run(fleet.s1, at=base + 3 * HOUR, latency_ms=9, status="error"))
    rows.append(fleet.run(fleet.s1, at=base - dt.timedelta(microseconds=1), latency_ms=11))
    Run.objects.bulk_create(rows)
    return rows, base


def _iso(moment: dt.datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize("filters,keep", [
    ({}, lambda r, fl: True),
    ({"agent": "support"}, lambda r, fl: r.agent_id == fl.support.pk),
    ({"revisionId": "s2"}, lambda r, fl: r.revision_id == fl.s2.id),
    ({"source": "api"}, lambda r, fl: r.source == "api"),
    ({"agent": "sales", "source": "shadow"}, lambda r, fl: r.agent_id == fl.sales.pk and r.source == "shadow"),
])
def test_hourly_metrics_equal_a_python_computation(seeded, fleet, viewer_client, filters, keep):
    rows, base = seeded
    query = {name: fleet.s2.id if value == "s2" else value for name, value in filters.items()}
    since, until = base - HOUR + dt.timedelta(minutes=30), base + 3 * HOUR  # a partial first bucket
    response = viewer_client.get("/v1/acme/metrics", {**query, "since": _iso(since), "until": _iso(until)})
    actual, expected = _actual(response), _expected([r for r in rows if keep(r, fleet)], since, until, "hour")
    assert [b["start"] for b in actual["buckets"]] == [base - HOUR, base, base + HOUR, base + 2 * HOUR]
    assert actual == expected
    assert expected["totals"]["runs"] >= 5  # a real sample, not an empty match


def test_daily_metrics_equal_a_python_computation(seeded, viewer_client):
    rows, base = seeded
    since = _floor(base, "day") - dt.timedelta(days=2)
    until = _floor(base, "day") + dt.timedelta(days=2)
    actual = _actual(viewer_client.get("/v1/acme/metrics", {"bucket": "day", "since": _iso(since), "until": _iso(until)}))
    assert actual == _expected(rows, since, until, "day")
    assert len(actual["buckets"]) == 4 and actual["totals"]["runs"] == 203


def test_metrics_default_to_the_last_24_hours_by_hour(seeded, viewer_client):
    rows, base = seeded
    body = viewer_client.get("/v1/acme/metrics").json()
    assert body["bucket"] == "hour"
    until, since = parse_datetime(body["until"]), parse_datetime(body["since"])
    assert until - since == dt.timedelta(hours=24) and abs(until - timezone.now()) < dt.timedelta(minutes=1)
    starts = [parse_datetime(b["start"]) for b in body["buckets"]]
    assert starts[0] == _floor(since, "hour") and all(b - a == HOUR for a, b in zip(starts, starts[1:]))
    assert body["totals"]["runs"] == sum(b["runs"] for b in body["buckets"]) == 203


def test_metrics_for_a_key_limited_to_agents(seeded, fleet, api):
    rows, base = seeded
    _, plaintext = f.api_key(fleet.org, scopes=["runs:read"], agents=["sales"])
    since, until = base, base + 3 * HOUR
    response = api.as_key(plaintext).get("/v1/acme/metrics", {"since": _iso(since), "until": _iso(until)})
    assert _actual(response) == _expected([r for r in rows if r.agent_id == fleet.sales.pk], since, until, "hour")


def test_nearest_rank_matches_the_definition():
    from monitoring.metrics import nearest_rank

    rng = random.Random(5)
    for n in range(1, 120):
        values = sorted(rng.randint(0, 50) for _ in range(n))
        for fraction in (0.5, 0.95, 0.99, 0.0, 1.0):
            assert nearest_rank(values, fraction) == _nearest_rank(values, fraction), (n, fraction)
    assert nearest_rank([], 0.5) is None
    assert nearest_rank(list(range(1, 21)), 0.95) == 19  # rank ceil(0.95 x 20) = 19, no interpolation


@pytest.mark.parametrize("query,parameter", [
    ({"bucket": "week"}, "bucket"),
    ({"source": "cron"}, "source"),
    ({"since": "not-a-date"}, "since"),
    ({"until": "31/12/2024"}, "until"),
    ({"since": "2024-06-02T00:00:00Z", "until": "2024-06-01T00:00:00Z"}, "until"),
    ({"since": "2024-01-01T00:00:00Z", "until": "2024-02-01T00:00:01Z"}, "since"),
    ({"since": "2023-01-01T00:00:00Z", "until": "2024-01-02T00:00:01Z", "bucket": "day"}, "since"),
    ({"since": "2999-01-01T00:00:00Z"}, "since"),
])
def test_metrics_bad_parameters_are_400(org, viewer_client, query, parameter):
    _assert_400(viewer_client.get("/v1/acme/metrics", query), parameter)


def test_metrics_longest_windows_are_accepted(org, viewer_client):
    hourly = viewer_client.get("/v1/acme/metrics", {"since": "2024-01-01T00:00:00Z", "until": "2024-02-01T00:00:00Z"})
    assert hourly.status_code == 200 and len(hourly.json()["buckets"]) == 31 * 24
    daily = viewer_client.get("/v1/acme/metrics", {"bucket": "day", "since": "2024-01-01T00:00:00Z",
                                                   "until": "2025-01-01T00:00:00Z"})
    assert daily.status_code == 200 and len(daily.json()["buckets"]) == 366
    assert daily.json()["totals"] == {"runs": 0, "errors": 0, "errorRate": None, "p50LatencyMs": None,
                                      "p95LatencyMs": None, "inputTokens": 0, "outputTokens": 0,
                                      "cachedInputTokens": 0, "reasoningTokens": 0, "costUsd": "0.00000000"}
