"""Issue 14 item 3: outages of Redis, PostgreSQL and the Celery broker, then recovery.

Each test runs its own Redis or PostgreSQL (started on a free port, stopped mid-test,
started again; the shared servers on 5432/6379 are never touched) and a live gunicorn
server (gthread, as production) on it:

* Redis down: an execute under an enforced budget answers 503 ``ledger_unavailable``
  within 200 ms (the ledger's circuit breaker), one without a budget answers 200, reads
  answer 200 with the key read from PostgreSQL (a key minted during the outage works, a
  key revoked during it is refused); Redis back: all works again, same processes.
* PostgreSQL down: requests answer 503 ``database_unavailable`` (Retry-After) within
  about 2 s, the admin a plain 503 page; an execute is refused before any model call
  (the loopback provider saw none); PostgreSQL back: 50 requests in a row all succeed,
  same processes (no stale pooled connection fails one), after an outage under traffic
  and after a restart with no request in between (every idle pooled connection dead).
* Broker down at enqueue: the outbox row exists; the sweep sends it once the broker is
  back, exactly once.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import redis
from django.test import override_settings

from agents.engine.testing import start_openai_stub
from monitoring.models import Budget

from . import factories as f
from .builders import agent_with_revision, local_spec
from .server import ROOT, _free_port, gunicorn
from .test_budgets import priced_agent

# --- servers of the test's own ---------------------------------------------------------------------

def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not happen within {timeout} s")
        time.sleep(0.05)


class RedisServer:
    """A redis-server on a free port; ``stop()`` shuts it down (saving its data), ``start()`` brings it back."""

    def __init__(self, directory: str):
        self.binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        assert os.path.exists(self.binary), "redis-server is needed for the outage tests"
        self.port = _free_port()
        self.directory = directory
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _ping(self) -> bool:
        try:
            return redis.Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5).ping()
        except redis.RedisError:
            return False

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.directory,
             "--save", "", "--appendonly", "no", "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(self._ping, 10, "redis-server start")

    def stop(self) -> None:
        try:
            redis.Redis(port=self.port).shutdown(save=True)  # keeps its data for start(), as a restart would
        except redis.ConnectionError:
            pass  # it closes the connection as it exits
        self.proc.wait(timeout=10)
        assert not self._ping()


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if not found:
        found = [shutil.which("initdb")] if shutil.which("initdb") else []
    assert found, "the PostgreSQL server binaries (initdb, pg_ctl) are needed for the outage tests"
    return Path(found[-1]).parent


class PostgresServer:
    """A PostgreSQL cluster of its own (trust auth) on a free port; run as ``postgres`` when we are root."""

    def __init__(self, directory: str):
        self.bin = _pg_bin()
        self.port = _free_port()
        self.directory = Path(directory)
        self.data = self.directory / "data"
        self.log = self.directory / "server.log"
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
            self.prefix = ["runuser", "-u", "postgres", "--"]
        else:
            self.prefix = []

    def _run(self, *args: str) -> None:
        subprocess.run([*self.prefix, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                       timeout=120)

    def init(self) -> None:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def url(self, name: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"


def _server_pids(port: int) -> set[int]:
    """The gunicorn master listening on ``port`` and its workers (forked: the same command line)."""
    parents = {}
    for cmdline in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            args = Path(cmdline).read_bytes().split(b"\0")
            pid = int(Path(cmdline).parent.name)
            parents[pid] = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if not (b"gunicorn" in args[2:3] and f"127.0.0.1:{port}".encode() in args):
            parents.pop(pid, None)
    masters = [pid for pid, parent in parents.items() if parent not in parents]
    assert len(masters) == 1 and len(parents) >= 2, parents
    return set(parents)


def _port(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


def _timed(client: httpx.Client, method: str, path: str, **kwargs) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = client.request(method, path, **kwargs)
    return response, time.monotonic() - started


# --- Redis -----------------------------------------------------------------------------------------

@pytest.mark.django_db(transaction=True)
def test_redis_outage_enforced_budget_fails_closed_fast_others_keep_working_then_recover():
    org = f.OrganizationFactory(slug="acme")
    agent_with_revision(org, "free", local_spec())
    capped = priced_agent(org, slug="capped")
    Budget.objects.create(organization=org, agent=capped, period="day", amount_usd=100, enforce=True)
    _, key = f.api_key(org, preset="admin")

    with tempfile.TemporaryDirectory() as directory:
        own = RedisServer(directory)
        own.start()
        env = {"REDIS_URL": own.url, "FRUXON_LEDGER": "redis", "FRUXON_LEDGER_REDIS_URL": own.url,
               "LOG_LEVEL": "ERROR"}
        try:
            with gunicorn(workers=2, threads=4, extra_env=env) as base, \
                    httpx.Client(base_url=base, headers={"X-API-KEY": key}, timeout=30) as client:
                execute = {"json": {"input": {"question": "q"}}}
                # Up: everything answers, and the key sits in the Redis cache of both workers.
                for _ in range(4):
                    response = client.post("/v1/acme/agents/free:execute", **execute)
                    assert response.status_code == 200, response.text
                    assert client.post("/v1/acme/agents/capped:execute", **execute).status_code == 200
                    assert client.get("/v1/acme/agents").status_code == 200
                pids = _server_pids(_port(base))

                own.stop()

                # An enforced budget cannot be checked: refused (fail closed), fast, every time.
                timings, server_ms = [], []
                for _ in range(10):
                    response, elapsed = _timed(client, "POST", "/v1/acme/agents/capped:execute", **execute)
                    assert response.status_code == 503, response.text
                    assert response.json()["error"]["code"] == "ledger_unavailable"
                    server_ms.append(float(response.headers["X-Fruxon-Overhead-Ms"]))
                    timings.append(elapsed)
                # Within 200 ms (the median: the two shared cores of CI can stall any single request).
                assert statistics.median(timings) < 0.2 and statistics.median(server_ms) < 200, (timings, server_ms)
                # No budget: runs as usual. Reads: the key is read from PostgreSQL.
                for _ in range(4):
                    response, elapsed = _timed(client, "POST", "/v1/acme/agents/free:execute", **execute)
                    assert response.status_code == 200, response.text
                    assert response.json()["status"] == "ok"
                    assert client.get("/v1/acme/agents").status_code == 200
                    assert client.get("/v1/acme/runs").status_code == 200
                # A key minted during the outage works (only the database knows it) ...
                _, fresh = f.api_key(org, preset="readonly", name="minted during the outage")
                assert client.get("/v1/acme/agents", headers={"X-API-KEY": fresh}).status_code == 200
                # ... and one revoked during it is refused at once (nothing cached it anywhere else).
                revoked, doomed = f.api_key(org, preset="readonly", name="revoked during the outage")
                assert client.get("/v1/acme/agents", headers={"X-API-KEY": doomed}).status_code == 200
                assert client.delete(f"/v1/acme/api-keys/{revoked.pk}").status_code in (200, 204)
                for _ in range(4):
                    assert client.get("/v1/acme/agents", headers={"X-API-KEY": doomed}).status_code == 401

                own.start()

                # Back: no restart, the breaker probes Redis again within a second.
                deadline = time.monotonic() + 10
                while client.post("/v1/acme/agents/capped:execute", **execute).status_code != 200:
                    assert time.monotonic() < deadline, "the ledger did not come back"
                    time.sleep(0.2)
                for _ in range(10):
                    assert client.post("/v1/acme/agents/capped:execute", **execute).status_code == 200
                    assert client.post("/v1/acme/agents/free:execute", **execute).status_code == 200
                    assert client.get("/v1/acme/agents").status_code == 200
                    assert client.get("/v1/acme/agents", headers={"X-API-KEY": doomed}).status_code == 401
                assert _server_pids(_port(base)) == pids
                # The cache is in use again: the key's entry is back in Redis.
                assert any(k.startswith(b"fruxon:1:apikey:") for k in redis.Redis.from_url(own.url).keys("*"))
        finally:
            if own.proc and own.proc.poll() is None:
                own.proc.terminate()
                own.proc.wait(timeout=10)


@pytest.mark.django_db(transaction=True)
def test_redis_outage_cache_is_a_miss_and_invalidations_made_during_it_are_replayed():
    """The cache backend itself: no exception, fast misses, and a delete that failed is not lost."""
    from django.core.cache.backends.redis import RedisCache  # noqa: F401  (Django's, wrapped by ours)

    from fruxon.cache import CacheUnavailable, SharedRedisCache, strict

    with tempfile.TemporaryDirectory() as directory:
        own = RedisServer(directory)
        own.start()
        try:
            backend = SharedRedisCache(own.url, {"KEY_PREFIX": "t"})
            backend.breaker.reset()
            backend.set("revoked", "stale entry", 300)
            backend.set("other", "kept", 300)
            own.stop()
            assert backend.get("revoked") is None  # the failure that opens the breaker
            assert backend.breaker.is_open
            started = time.monotonic()
            for _ in range(100):  # then no call waits on a socket: microseconds each
                assert backend.get("revoked") is None
                assert backend.add("claim", 1) is False
                assert backend.get_many(["revoked", "other"]) == {}
                assert backend.delete("revoked") is False  # failed: remembered
                backend.set("x", 1)
            assert time.monotonic() - started < 0.5
            with pytest.raises(CacheUnavailable):
                strict("get", "revoked", backend=backend)
            own.start()  # with the data it had: the stale entry is still in Redis
            assert redis.Redis.from_url(own.url).exists("t:1:revoked")
            time.sleep(backend.breaker.reset_after)
            assert backend.get("revoked") is None  # replayed before the read
            assert backend.get("other") == "kept"
            assert not redis.Redis.from_url(own.url).exists("t:1:revoked")
        finally:
            if own.proc and own.proc.poll() is None:
                own.proc.terminate()
                own.proc.wait(timeout=10)


def test_login_throttle_counts_locally_while_redis_is_down():
    """Fail-open would let guessing run free, fail-closed would lock every admin out during the outage:
    while Redis is away, failures are counted in the process and the limit still holds."""
    from orgs import login_throttle

    with tempfile.TemporaryDirectory() as directory:
        own = RedisServer(directory)
        own.start()
        caches = {"default": {"BACKEND": "fruxon.cache.SharedRedisCache", "LOCATION": own.url, "KEY_PREFIX": "lt"}}
        try:
            with override_settings(CACHES=caches, FRUXON_LOGIN_MAX_FAILURES_PER_ACCOUNT=3):
                from django.core.cache import cache

                cache.breaker.reset()
                own.stop()
                login_throttle.check(username="alice", address="10.0.0.1")  # no exception: logins work
                for _ in range(3):
                    login_throttle.failed(username="alice", address="10.0.0.1")
                with pytest.raises(login_throttle.LoginThrottled):
                    login_throttle.check(username="alice", address="10.0.0.1")
                login_throttle.check(username="bob", address="10.0.0.2")
        finally:
            if own.proc and own.proc.poll() is None:
                own.proc.terminate()
                own.proc.wait(timeout=10)


# --- PostgreSQL ------------------------------------------------------------------------------------

SEED = """
import json, django
django.setup()
from django.contrib.auth import get_user_model
from django.test import Client
from tests import factories as f
from tests.builders import agent_with_revision
org = f.OrganizationFactory(slug="acme")
spec = {"inputs": {"question": {"type": "string", "required": True}},
        "steps": [{"name": "answer", "prompt": "{{input.question}}",
                   "model": {"provider": "openai", "name": "gpt-x", "baseUrl": %(base)r}}],
        "output": "{{steps.answer.output}}"}
agent_with_revision(org, "support", spec)
_, key = f.api_key(org, preset="admin")
admin = get_user_model().objects.create_superuser("root", "root@example.com", "pw-outage-test")
client = Client()
client.force_login(admin)
print(json.dumps({"key": key, "session": client.cookies["sessionid"].value}))
"""


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("connections", [
    pytest.param({"DB_POOL_MAX_SIZE": "4", "DB_POOL_MIN_SIZE": "2"}, id="pooled"),
    pytest.param({"DB_POOL_MAX_SIZE": "0", "DB_CONN_MAX_AGE": "600"}, id="unpooled"),
])
def test_postgresql_outage_answers_503_fast_refuses_executes_before_any_model_call_then_recovers(connections):
    stub_url, stub = start_openai_stub(script=[{"content": "fine", "usage": {"prompt_tokens": 3, "completion_tokens": 1}}])
    with tempfile.TemporaryDirectory() as directory, stub:
        pg = PostgresServer(directory)
        pg.init()
        pg.start()
        try:
            subprocess.run([str(pg.bin / "createdb"), "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres",
                            "outage"], check=True, timeout=60)
            env = {**os.environ, "DATABASE_URL": pg.url("outage"), "FRUXON_TESTING": "1",
                   "DJANGO_SETTINGS_MODULE": "fruxon.settings"}
            env.pop("REDIS_URL", None)
            subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env,
                           check=True, timeout=300)
            seeded = subprocess.run([sys.executable, "-c", SEED % {"base": stub_url}], cwd=ROOT, env=env, check=True,
                                    timeout=120, capture_output=True, text=True)
            secrets_ = json.loads(seeded.stdout.strip().splitlines()[-1])
            server_env = {"DATABASE_URL": pg.url("outage"), **connections, "LOG_LEVEL": "CRITICAL"}
            with gunicorn(workers=2, threads=4, extra_env=server_env) as base, \
                    httpx.Client(base_url=base, headers={"X-API-KEY": secrets_["key"]}, timeout=30) as client, \
                    httpx.Client(base_url=base, cookies={"sessionid": secrets_["session"]}, timeout=30) as admin:
                execute = {"json": {"input": {"question": "q"}}}
                for _ in range(6):  # both workers: key cached, pool warm
                    assert client.post("/v1/acme/agents/support:execute", **execute).status_code == 200
                    assert client.get("/v1/acme/agents").status_code == 200
                assert admin.get("/admin/").status_code == 200
                pids = _server_pids(_port(base))

                def fifty_succeed() -> None:
                    codes = []
                    for n in range(50):
                        if n % 2:
                            codes.append(client.post("/v1/acme/agents/support:execute", **execute).status_code)
                        else:
                            codes.append(client.get("/v1/acme/runs").status_code)
                    assert codes == [200] * 50, codes

                # A restart with no request in between: every idle pooled connection is dead, none fails a request.
                pg.stop()
                pg.start()
                fifty_succeed()
                calls = len(stub.requests)
                assert calls == 6 + 25

                pg.stop()

                for path, method in [("/v1/acme/agents/support:execute", "POST"), ("/v1/acme/agents", "GET"),
                                     ("/v1/acme/runs", "GET")] * 2:
                    response, elapsed = _timed(client, method, path, **(execute if method == "POST" else {}))
                    assert response.status_code == 503, (path, response.status_code, response.text)
                    assert response.json()["error"]["code"] == "database_unavailable"
                    assert int(response.headers["Retry-After"]) > 0
                    assert elapsed < 3.0, f"{path} took {elapsed:.1f} s"
                response, elapsed = _timed(admin, "GET", "/admin/")
                assert response.status_code == 503 and response.headers["Content-Type"].startswith("text/html")
                assert "Service unavailable" in response.text and elapsed < 3.0
                # No model call started: the run could not have been recorded.
                assert len(stub.requests) == calls

                pg.start()

                fifty_succeed()
                assert admin.get("/admin/").status_code == 200
                assert len(stub.requests) == calls + 25
                assert _server_pids(_port(base)) == pids
        finally:
            try:
                pg.stop()
            except subprocess.CalledProcessError:
                pass  # already stopped


# --- Celery broker ---------------------------------------------------------------------------------

BROKER_SCRIPT = """
import json, os, signal, subprocess, time, django
django.setup()
import redis
from django.db import transaction
from evaluations.services import dispatch
from fruxon import outbox
from fruxon.models import OutboxMessage

params = json.loads(%(params)r)
broker = redis.Redis(port=params["port"])
out = {}

def stop():
    os.kill(params["pid"], signal.SIGTERM)
    while True:
        try:
            broker.ping()
        except redis.ConnectionError:
            return
        time.sleep(0.05)

def start():
    proc = subprocess.Popen(params["command"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out["restarted_pid"] = proc.pid
    deadline = time.monotonic() + 10
    while True:
        try:
            broker.ping()
            return
        except redis.ConnectionError:
            assert time.monotonic() < deadline
            time.sleep(0.05)

def queued():
    return broker.llen("evaluations")

# Broker down when the transaction commits: the request goes on, the row stays.
stop()
started = time.monotonic()
with transaction.atomic():
    dispatch.enqueue("eval_lost_at_commit")
out["enqueue_seconds"] = time.monotonic() - started
row = OutboxMessage.objects.get(args=["eval_lost_at_commit"])
out["down"] = {"sent": row.sent_at is not None, "attempts": row.attempts, "error": bool(row.last_error),
               "task": row.task}
out["sweep_while_down"] = outbox.sweep()
start()
out["queued_before_sweep"] = queued()
out["sweep"] = outbox.sweep()
out["sweep_again"] = outbox.sweep()
row.refresh_from_db()
out["after"] = {"sent": row.sent_at is not None}
out["queued_after_sweeps"] = queued()
# Broker up: sent at commit, and the sweep does not send it again.
with transaction.atomic():
    dispatch.enqueue("eval_sent_at_commit")
out["sent_at_commit"] = OutboxMessage.objects.get(args=["eval_sent_at_commit"]).sent_at is not None
out["sweep_after_direct"] = outbox.sweep()
messages = [json.loads(m) for m in broker.lrange("evaluations", 0, -1)]
out["message_args"] = sorted(m["headers"]["argsrepr"] for m in messages)
print(json.dumps(out))
"""


@pytest.mark.django_db(transaction=True)
def test_broker_down_at_enqueue_loses_no_task_and_the_sweep_sends_it_once():
    from .server import database_url

    with tempfile.TemporaryDirectory() as directory:
        own = RedisServer(directory)
        own.start()
        params = {"port": own.port, "pid": own.proc.pid,
                  "command": [own.binary, "--port", str(own.port), "--bind", "127.0.0.1", "--dir", directory,
                              "--save", "", "--appendonly", "no"]}
        env = {**os.environ, "REDIS_URL": own.url, "DATABASE_URL": database_url(), "FRUXON_TESTING": "1",
               "DJANGO_SETTINGS_MODULE": "fruxon.settings", "LOG_LEVEL": "CRITICAL"}
        out = {}
        try:
            done = subprocess.run([sys.executable, "-c", BROKER_SCRIPT % {"params": json.dumps(params)}], check=False,
                                  cwd=ROOT, env=env, timeout=120, capture_output=True, text=True)
            assert done.returncode == 0, done.stderr[-3000:]
            out = json.loads(done.stdout.strip().splitlines()[-1])
        finally:
            if own.proc.poll() is None:
                own.proc.terminate()
                own.proc.wait(timeout=10)
            if out.get("restarted_pid"):  # the broker the script started again (its own child, by pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(out["restarted_pid"], signal.SIGTERM)

    assert out["enqueue_seconds"] < 3, out  # the request is not held by the broker
    assert out["down"] == {"sent": False, "attempts": 1, "error": True, "task": "evaluations.run_evaluation"}, out
    assert out["sweep_while_down"] == 0 and out["queued_before_sweep"] == 0, out
    assert out["sweep"] == 1 and out["sweep_again"] == 0 and out["after"] == {"sent": True}, out
    assert out["queued_after_sweeps"] == 1, out
    assert out["sent_at_commit"] is True and out["sweep_after_direct"] == 0, out
    assert out["message_args"] == ["['eval_lost_at_commit']", "['eval_sent_at_commit']"], out


def test_openapi_documents_database_unavailable_on_every_operation(db, api):
    """Every operation may answer 503 database_unavailable with Retry-After; the execute's 503 keeps ledger_unavailable."""
    schema = api.anonymous().get("/v1/schema", {"format": "json"}).json()
    operations = [(path, method, op) for path, item in schema["paths"].items() for method, op in item.items()
                  if method in {"get", "post", "put", "patch", "delete"}]
    assert operations
    for path, method, op in operations:
        unavailable = op["responses"].get("503")
        assert unavailable and "database_unavailable" in unavailable["description"], (path, method)
        assert "Retry-After" in unavailable["headers"], (path, method)
    execute = schema["paths"]["/v1/{tenant}/agents/{agent}:execute"]["post"]["responses"]["503"]["description"]
    assert "ledger_unavailable" in execute and "database_unavailable" in execute
