"""The execute hot path's shortcuts keep their promises: cached prices follow every change,
the one-query tenant + agent resolution answers like the two-step one, and Run + spans are
still written all or nothing."""
from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import DataError

from agents.engine import RunResult, SpanRecord, Totals
from monitoring import pricing
from monitoring.models import ModelPrice, Run, Span
from monitoring.recording import record_run

from . import factories as f
from .builders import SYSTEM, agent_with_revision, local_spec, run_once


def _cost(run, input_price, output_price):
    return (Decimal(run.input_tokens) * input_price + Decimal(run.output_tokens) * output_price) / 1_000_000


def test_cached_prices_follow_overrides_and_direct_edits(org):
    agent, _ = agent_with_revision(org, "support")
    first = run_once(agent, "q")  # caches the built-in table and the org's (empty) overrides
    assert first.cost_usd == _cost(first, Decimal("1.00"), Decimal("2.00"))  # built-in fruxon-local row

    pricing.set_overrides(actor=SYSTEM, organization=org, rows=[
        {"provider": "fruxon-local", "model": "*", "inputPerMillion": Decimal("10"), "outputPerMillion": Decimal("20")}])
    second = run_once(agent, "q")
    assert second.cost_usd == _cost(second, Decimal(10), Decimal(20))

    pricing.set_overrides(actor=SYSTEM, organization=org, agent=agent, rows=[
        {"provider": "fruxon-local", "model": "*", "inputPerMillion": Decimal("100"), "outputPerMillion": Decimal("200")}])
    third = run_once(agent, "q")
    assert third.cost_usd == _cost(third, Decimal(100), Decimal(200))

    # A direct edit (the admin saves the model) drops the cache too, built-in rows included.
    row = ModelPrice.objects.get(agent=agent)
    row.input_per_million = Decimal("1000")
    row.save()
    assert run_once(agent, "q").cost_usd == _cost(third, Decimal(1000), Decimal(200))
    row.delete()
    builtin = ModelPrice.objects.get(organization__isnull=True, provider="fruxon-local", model="*")
    builtin.output_per_million = Decimal("3")
    builtin.save()
    ModelPrice.objects.filter(organization=org).delete()
    fourth = run_once(agent, "q")
    assert fourth.cost_usd == _cost(fourth, Decimal("1.00"), Decimal("3"))


def test_other_orgs_cached_prices_stay_apart(org):
    agent, _ = agent_with_revision(org, "support")
    other = f.OrganizationFactory(slug="other")
    other_agent, _ = agent_with_revision(other, "support")
    pricing.set_overrides(actor=SYSTEM, organization=other, rows=[
        {"provider": "fruxon-local", "model": "*", "inputPerMillion": Decimal("50"), "outputPerMillion": Decimal("50")}])
    run_once(other_agent, "q")
    mine = run_once(agent, "q")
    assert mine.cost_usd == _cost(mine, Decimal("1.00"), Decimal("2.00"))


def test_key_resolution_answers_like_the_two_step_one(org, api):
    agent_with_revision(org, "support")
    other = f.OrganizationFactory(slug="other")
    agent_with_revision(other, "billing")
    _, key = f.api_key(org, preset="runner")
    client = api.as_key(key)
    body = {"input": {"question": "q"}}
    missing_org = client.post("/v1/nope/agents/support:execute", body, format="json")
    foreign_org = client.post("/v1/other/agents/billing:execute", body, format="json")
    for response, org_slug in ((missing_org, "nope"), (foreign_org, "other")):
        assert response.status_code == 404, response.content
        assert response.json()["error"]["message"] == f"Organization '{org_slug}' not found."
    missing_agent = client.post("/v1/acme/agents/billing:execute", body, format="json")
    assert missing_agent.status_code == 404 and missing_agent.json()["error"]["message"] == "Agent 'billing' not found."
    _, limited = f.api_key(org, preset="runner", agents=["other-agent"])
    assert api.as_key(limited).post("/v1/acme/agents/support:execute", body, format="json").status_code == 403
    _, reader = f.api_key(org, scopes=["agents:read"])
    assert api.as_key(reader).post("/v1/acme/agents/support:execute", body, format="json").status_code == 403
    assert client.post("/v1/acme/agents/support:execute", body, format="json").status_code == 200


@pytest.mark.django_db(transaction=True)
def test_run_and_spans_are_all_or_nothing():
    org = f.OrganizationFactory(slug="acme")
    agent, revision = agent_with_revision(org, "support")
    run = run_once(agent, "q")
    assert Span.objects.filter(run=run).count() >= 2  # the statement wrote both tables

    from datetime import datetime, timezone

    now = datetime.now(timezone.utc)
    good = SpanRecord(id="spn_good", parent_id=None, kind="step", name="ok", status="ok", started_at=now)
    bad = SpanRecord(id="spn_bad", parent_id=None, kind="x" * 50, name="too long a kind", status="ok", started_at=now)
    result = RunResult(status="ok", output="x", error=None, spans=[good, bad], totals=Totals.of([good]),
                       started_at=now, latency_ms=1.0, provider_ms=0.0)
    runs_before = Run.objects.count()
    with pytest.raises(DataError):
        record_run(organization_id=org.pk, agent_id=agent.pk, revision_id=revision.id, result=result,
                   source="api", input={"question": "q"})
    assert Run.objects.count() == runs_before and not Span.objects.filter(id="spn_good").exists()


def test_prepared_key_lookup_builds_what_the_orm_builds(org):
    from agents.models import Agent
    from agents.scoping import _key_lookup

    agent, revision = agent_with_revision(org, "support")
    agent_with_revision(org, "billing")
    for related in ((), ("deployed_revision",)):
        prepared = _key_lookup(related).first(org.pk, "acme", "support")
        orm = Agent.objects.select_related("organization", "shadow_config", *related).get(pk=agent.pk)
        fields = [f.attname for f in Agent._meta.concrete_fields]
        assert [getattr(prepared, f) for f in fields] == [getattr(orm, f) for f in fields]
        assert prepared._state.adding is False and prepared._state.db == "default"
        assert prepared.organization == org and prepared.organization.slug == "acme"
        assert Agent.deployed_revision.is_cached(prepared) == bool(related)
        if related:
            assert prepared.deployed_revision.spec == revision.spec and prepared.deployed_revision.pk == revision.pk
    assert getattr(_key_lookup(()).first(org.pk, "acme", "support"), "shadow_config", None) is None
    from agents.services import create_revision
    from deployments import shadow

    candidate = create_revision(actor=SYSTEM, agent=agent, spec=local_spec("candidate"))
    shadow.configure(actor=SYSTEM, agent=agent, revision_id=candidate.id, sample_rate=0.5)
    config = _key_lookup(("deployed_revision",)).first(org.pk, "acme", "support").shadow_config
    assert config.revision_id == candidate.id and config.sample_rate == 0.5
    assert _key_lookup(()).first(org.pk, "acme", "nope") is None
    assert _key_lookup(()).first(org.pk, "other", "support") is None
    assert _key_lookup(()).first(org.pk + 1000, "acme", "support") is None


@pytest.mark.parametrize("body", [
    {"input": {"question": "q"}},
    {"input": {"question": "q"}, "revisionId": None, "conversationId": None},
    {"input": {"question": "q"}, "conversationId": "session-1"},
    {"input": {"question": "q"}, "conversationId": " padded "},
    {"input": {"question": "q"}, "conversationId": ""},
    {"input": {"question": "q"}, "conversationId": "x" * 65},
    {"input": {"question": "q"}, "conversationId": 5},
    {"input": None},
    {"input": {"question": "q"}, "colour": "red"},
    {"input": {"question": "q"}, "stream": True},
    {"input": {"question": "q"}, "stream": False, "conversationId": "c-1"},
    {"input": {"question": "q"}, "stream": "yes"},
    {"input": {"question": "q"}, "stream": None},
    {},
    [],
    "text",
])
def test_execute_request_fast_path_agrees_with_the_serializer(body):
    from rest_framework.exceptions import ValidationError

    from agents.api import serializers as s
    from agents.api.views import execute_request
    from fruxon.api.serializers import validated
    from fruxon.errors import InvalidRequest

    def outcome(function):
        try:
            return "ok", dict(function())
        except (ValidationError, InvalidRequest) as exc:
            return "error", str(getattr(exc, "detail", exc))

    assert outcome(lambda: execute_request(body)) == outcome(lambda: validated(s.ExecuteRequest, body))


def test_overhead_header_under_asgi_too():
    """The timer middleware is async-capable: under ASGI it stamps responses without thread hops."""
    from asgiref.sync import async_to_sync
    from django.test import AsyncClient

    from fruxon.middleware import RequestTimerMiddleware

    assert RequestTimerMiddleware.sync_capable and RequestTimerMiddleware.async_capable
    response = async_to_sync(AsyncClient().get)("/v1/no-such-route")
    assert response.status_code == 404 and float(response["X-Fruxon-Overhead-Ms"]) >= 0
