"""Issue 12 item 8: a $0 call settles cleanly, and no secret reaches a log line, a run or a row.

The review saw it together: on a budgeted agent, a call costing $0 made the Redis settle script send
``HINCRBY ... -0`` (refused by Redis), so every such call logged a traceback; when the provider's error
had quoted the API key, that traceback (its chained ProviderError) carried the plaintext. And a
provider error cut at 300 characters BEFORE redaction left the start of a key in runs and rows.
"""
from __future__ import annotations

import io
import json
import logging
import os
import secrets as pysecrets
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
import redis
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from agents.engine.errors import ProviderError
from agents.engine.templating import Redactor
from agents.engine.testing import StubReply, start_json_server
from fruxon import log_redaction
from monitoring.ledger import BudgetState, ledger
from monitoring.ledger.redis_ledger import OPEN
from monitoring.models import Budget, BudgetReservation, Run
from monitoring.pricing import set_overrides
from orgs.services.secrets import put_secret

from . import factories as f
from .builders import SYSTEM, agent_with_revision, local_spec

REDIS_URL = os.environ.get("FRUXON_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
LEDGERS = [pytest.param({"FRUXON_LEDGER": "database"}, id="database"),
           pytest.param({"FRUXON_LEDGER": "redis", "FRUXON_LEDGER_REDIS_URL": REDIS_URL}, id="redis")]
ROOT = Path(__file__).resolve().parent.parent


def _free_price(org, agent, provider="fruxon-local") -> None:
    set_overrides(actor=SYSTEM, organization=org, agent=agent, rows=[{
        "provider": provider, "model": "*", "inputPerMillion": Decimal(0), "outputPerMillion": Decimal(0)}])


@pytest.mark.parametrize("ledger_settings", LEDGERS)
def test_item8_zero_cost_settle(org, api, ledger_settings, caplog):
    """A budgeted agent whose model costs $0: reservations of 0 reserve, settle and release without an error,
    no traceback is logged, and nothing stays open (Redis open set, database reservations)."""
    store = redis.Redis.from_url(REDIS_URL)
    store.flushdb()
    caplog.set_level(logging.WARNING)
    with override_settings(**ledger_settings):
        agent, _ = agent_with_revision(org, "support", local_spec())
        _free_price(org, agent)
        budget = Budget.objects.create(organization=org, agent=agent, period="day", amount_usd=Decimal("1"),
                                       enforce=True)
        _, key = f.api_key(org, preset="runner")
        client = api.as_key(key)
        answers = [client.post("/v1/acme/agents/support:execute", {"input": {"question": "q"}}, format="json")
                   for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 200]
        assert all(Decimal(a.json()["usage"]["costUsd"]) == 0 for a in answers)
        state = BudgetState.of(budget, timezone.now())
        assert ledger().usage(state) == (0, 0)
        assert store.zcard(OPEN) == 0 and not BudgetReservation.objects.exists()
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "settle" in r.getMessage()], \
            caplog.text

        # The ledger itself, both scripts that give a reservation back: settle and the stale sweep.
        reservation = ledger().reserve(state, 0)
        assert reservation is not None and ledger().settle(reservation, 0) == 0
        stale = ledger().reserve(state, 0)
        assert stale is not None and ledger().release_stale(timezone.now() + timezone.timedelta(hours=1)) == 1
        assert ledger().usage(state) == (0, 0)
        assert store.zcard(OPEN) == 0 and not BudgetReservation.objects.exists()


def _fragments(key: str) -> set[str]:
    return {key[i:i + 8] for i in range(len(key) - 7)}


def _leaks(text: str, key: str) -> list[str]:
    return sorted(fragment for fragment in _fragments(key) if fragment in text)


def _database_text() -> str:
    """Every row of every table of the test database, as text: what a dump would show."""
    chunks = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f"SELECT t::text FROM {connection.ops.quote_name(table)} t")
            chunks.extend(row[0] for row in cursor.fetchall())
    return "\n".join(chunks)


@pytest.fixture
def console():
    """The root logger's handlers from settings.LOGGING, writing to a buffer for the test."""
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler)
                and type(h).__module__ == "logging"]
    assert handlers, "settings.LOGGING configures a console handler on the root logger"
    buffer = io.StringIO()
    previous = [h.setStream(buffer) for h in handlers]
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)
    yield buffer
    root.setLevel(level)
    for handler, stream in zip(handlers, previous):
        handler.setStream(stream)


def test_item8_no_secret_in_logs_or_rows(org, api, caplog, console):
    """A provider answers 401 quoting the key it was sent (around the 300th character of its message):
    on a budgeted $0 agent, neither the API answer, the run, any database row nor any log line (in-process,
    through the configured handlers, and in a Celery worker's) holds 8 characters of the key."""
    key = "sk-proj-" + pysecrets.token_urlsafe(40)
    redis.Redis.from_url(REDIS_URL).flushdb()
    log_redaction.forget_all()
    caplog.set_level(logging.INFO)
    prefix = "Incorrect API key provided: "
    padding = "x" * (300 - len("model provider answered HTTP 401: ") - len(prefix) - 20)

    def provider(request):
        return StubReply(401, {"error": {"message": f"{prefix}{padding}{key}. You can find your API key at {key}",
                                         "type": "invalid_request_error"}})

    base_url, stub = start_json_server(provider)
    try:
        host = base_url.split("//", 1)[1]
        put_secret(actor=SYSTEM, organization=org, name="OPENAI_KEY", value=key, allowed_agents=["*"],
                   allowed_hosts=[host])
        log_redaction.forget_all()  # only what the run itself resolves counts below
        spec = {"inputs": {"question": {"type": "string", "required": True}},
                "steps": [{"name": "answer", "prompt": "{{input.question}}",
                           "model": {"provider": "openai", "name": "gpt-x", "baseUrl": f"{base_url}/v1",
                                     "apiKey": "{{secret.OPENAI_KEY}}", "maxTokens": 16}}],
                "output": "{{steps.answer.output}}"}
        agent, _ = agent_with_revision(org, "support", spec)
        _free_price(org, agent, provider="openai")
        Budget.objects.create(organization=org, agent=agent, period="day", amount_usd=Decimal("1"), enforce=True)
        _, api_key = f.api_key(org, preset="runner")
        with override_settings(FRUXON_LEDGER="redis", FRUXON_LEDGER_REDIS_URL=REDIS_URL):
            answer = api.as_key(api_key).post("/v1/acme/agents/support:execute", {"input": {"question": "q"}},
                                              format="json")
        assert stub.requests and stub.requests[0].headers.get("Authorization") == f"Bearer {key}", answer.content
    finally:
        stub.close()

    assert answer.status_code == 502, answer.content
    error = answer.json()["error"]
    assert error["code"] == "provider_error"
    run = Run.objects.get(pk=error["details"]["runId"])
    assert run.error["code"] == "provider_error" and "401" in run.error["message"]
    assert len(run.error["message"]) <= 300 + len("{{secret.OPENAI_KEY}}")
    detail = api.as_user(f.member(org, "viewer", "vera")).get(f"/v1/acme/runs/{run.id}")
    assert detail.status_code == 200
    for where, text in [("execute answer", answer.content.decode()), ("run error", json.dumps(run.error)),
                        ("GET /runs/{id}", detail.content.decode()), ("database rows", _database_text()),
                        ("log records", caplog.text), ("console handler", console.getvalue())]:
        assert not _leaks(text, key), f"{where} holds part of the key"

    # The run resolved the key, so this process's log filter knows it: whatever logs it, with its
    # arguments or in a traceback, through the handlers settings.LOGGING configured, shows none of it.
    logger = logging.getLogger("fruxon.tests.redaction")
    try:
        raise ProviderError(f"model provider answered HTTP 401: {prefix}{key}")
    except ProviderError:
        logger.exception("call failed for %s", key[:20] + key[20:])
    logger.warning("headers %s", {"Authorization": "Bearer fx_live_" + "A" * 40, "X-Other": "fxu_" + "b" * 40,
                                  "api-key": "sk-ant-" + "c" * 30})
    logged = console.getvalue()
    assert "call failed for [REDACTED]" in logged and "Traceback" in logged and "ProviderError" in logged
    assert not _leaks(logged, key)
    for credential in ("A" * 40, "b" * 40, "c" * 30):
        assert credential not in logged
    assert "Bearer [REDACTED]" in logged

    # The engine cuts after redacting: a key straddling the cut leaves nothing of itself.
    redactor = Redactor()
    redactor.add("OPENAI_KEY", key)
    text = "y" * 290 + key + " and more"
    clipped = redactor.clip(text, 300)
    assert clipped == "y" * 290 + "{{secret.OPENAI_KEY}}" and not _leaks(clipped, key)
    partial = "y" * 290 + key[:30] + " (the provider quoted only part of it)"  # a piece at the cut
    assert not _leaks(redactor.clip(partial, 300), key)

    # A Celery worker sets up its own handlers: they redact too.
    script = (
        "import logging, django; django.setup()\n"
        "from fruxon.celery import app\n"
        "from orgs import crypto\n"
        "app.log.setup(loglevel='INFO')\n"
        f"crypto.decrypt(crypto.encrypt({key!r}))\n"
        f"logging.getLogger('celery.worker').error('provider said %s', {key!r})\n"
        "try:\n"
        f"    raise RuntimeError({key!r})\n"
        "except RuntimeError:\n"
        "    logging.getLogger('fruxon.tasks').exception('task failed')\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "fruxon.settings", "FRUXON_TESTING": "1"}
    worker = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    output = worker.stdout + worker.stderr
    assert worker.returncode == 0, output
    assert "provider said [REDACTED]" in output and "task failed" in output and "RuntimeError" in output, output
    assert not _leaks(output, key)
