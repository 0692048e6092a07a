#!/usr/bin/env python
"""Soak benchmark: the README's production setup under mixed load, run by hand (never a test).

    .venv/bin/python bench/soak.py                    # 30 minutes (plus ~1 minute of set-up and warm-up)
    .venv/bin/python bench/soak.py --minutes 2        # a short check that everything runs
    .venv/bin/python bench/soak.py --rate 40 --latency-ms 500

What it does (see bench/README.md "Soak"):

1. creates the PostgreSQL database ``fruxon_soak`` (refuses if it exists, unless
   ``--drop-existing``) and migrates it; checks that Redis db 13 is empty (refuses
   otherwise, unless ``--flush-redis``);
2. seeds with bench/execute.py's seed (org ``bench``, a ``runner`` key, agent
   ``slow`` on the ``openai`` provider whose ``baseUrl`` is the loopback OpenAI stub
   of ``agents.engine.testing``, in a process of its own, answering after
   ``--latency-ms``), plus an ``admin`` key, a second revision of ``slow`` and a
   dataset of ``--eval-cases`` cases;
3. starts, as the README says: gunicorn (``fruxon.asgi:application -k
   uvicorn_worker.UvicornWorker --workers 2``, ``DB_POOL_MAX_SIZE=16``), one Celery worker per core (``-Q
   default,evaluations,shadow --pool threads -c 8 --prefetch-multiplier 1``,
   ``DB_POOL_MAX_SIZE=8``) and Celery beat, all with production settings on
   127.0.0.1, ``REDIS_URL=redis://127.0.0.1:6379/13``, ``FRUXON_EGRESS_ALLOW=127.0.0.1``;
4. after ``--warmup`` seconds of the same load (not measured), for ``--minutes``:
   executes of ``slow`` at ``--rate`` per second (open loop), a deploy/rollback flip
   of ``slow`` every ``--flip-seconds`` (every 5th flip deploys the revision already
   deployed: a 409 ``already_deployed`` that the scenario expects), an evaluation
   every ``--eval-minutes``, an export every minute, and the org's rate limits set
   and cleared in turns (limits never reached);
5. prints errors by kind, RSS of every process at boot / start / end, PostgreSQL
   connections over time, the execute overhead p99 per window, and the rate-limit
   check's cost per execute; then stops everything, drops ``fruxon_soak`` and
   empties Redis db 13 (both were created / empty at the start).

Every request goes to 127.0.0.1; every loop is bounded in count and time.
"""
from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import execute  # noqa: E402  (bench/execute.py: stub, seed, server start/stop, helpers)
from execute import HOST, ORG, PY, ROOT, fmt, log, pct  # noqa: E402

DB_NAME = "fruxon_soak"
REDIS_URL = "redis://127.0.0.1:6379/13"
WORKER_THREADS = 8  # README: --pool threads -c 8, DB_POOL_MAX_SIZE=8
TARGETS = {"errors": 0, "rss_ratio": 1.10, "ratelimit_ms": 0.3}
# Non-2xx answers the scenario provokes on purpose: not errors.
EXPECTED = {("deploy-same", 409, "already_deployed"):
            "deploy of the revision already deployed (every 5th flip, on purpose)"}


# --------------------------------------------------------------------------- seed (child process)


def child_seed_extra() -> None:
    """``_seed_extra CASES``: after execute.py's seed: an admin key, revision B of 'slow', the dataset."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fruxon.settings")
    import copy

    import django

    django.setup()
    from agents import services as agent_services
    from agents.models import Agent
    from evaluations.services import datasets
    from orgs.actor import Actor
    from orgs.models import Organization
    from orgs.services import api_keys

    cases = int(sys.argv[2])
    actor = Actor(system=True)
    org = Organization.objects.get(slug=ORG)
    admin = api_keys.create_key(actor=actor, organization=org, name="soak control", preset="admin")
    agent = Agent.objects.select_related("deployed_revision").get(organization=org, slug="slow")
    spec = copy.deepcopy(agent.deployed_revision.spec)
    spec["steps"][0]["systemPrompt"] = "You are a brief support agent."
    rev_b = agent_services.create_revision(actor=actor, agent=agent, spec=spec, message="soak flip")
    dataset = datasets.create_dataset(actor=actor, organization=org, slug="soak", metrics=[{"type": "contains"}])
    datasets.add_cases_bulk(actor=actor, dataset=dataset, cases=[
        {"input": {"question": f"question {i}"}, "expected": f"question {i}"} for i in range(cases)])
    print(json.dumps({"admin": admin.plaintext, "revA": agent.deployed_revision_id, "revB": rev_b.id}), flush=True)


# --------------------------------------------------------------------------- processes and samples


def rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def process_table(groups: dict[str, subprocess.Popen]) -> dict[int, str]:
    """pid -> label of every process of every group (a gunicorn master and its workers, ...)."""
    procs = execute._all_procs()
    out = {}
    for name, proc in groups.items():
        tree = sorted(execute._tree(proc.pid, procs))
        for pid in tree:
            out[pid] = name + (" master" if pid == proc.pid and len(tree) > 1 else "")
    return out


class PgSampler:
    """Connections of ``DB_NAME`` in pg_stat_activity (its own sampling connection excluded)."""

    def __init__(self, url: str):
        import psycopg

        self.conn = psycopg.connect(url, autocommit=True)
        self.samples: list[tuple[float, int, dict]] = []

    def sample(self, t: float) -> None:
        rows = self.conn.execute("SELECT coalesce(state, '?'), count(*) FROM pg_stat_activity WHERE datname = %s "
                                 "AND pid <> pg_backend_pid() GROUP BY 1", [DB_NAME]).fetchall()
        states = dict(rows)
        self.samples.append((t, sum(states.values()), states))

    def close(self) -> None:
        self.conn.close()


# --------------------------------------------------------------------------- HTTP


class Client:
    """Control requests (one connection each; never many at once) and their outcomes."""

    def __init__(self, port: int, key: str):
        self.port, self.key = port, key
        self.outcomes: Counter = Counter()  # (op, status, code) -> n
        self.lock = threading.Lock()

    def call(self, op: str, method: str, path: str, body: dict | None = None, timeout: float = 60.0):
        conn = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        headers = {"X-API-KEY": self.key, "Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, f"/v1/{ORG}/{path}", json.dumps(body) if body is not None else None, headers)
            response = conn.getresponse()
            raw = response.read()
            status = response.status
        except Exception as exc:  # timeout, reset, refused
            self.record(op, 0, type(exc).__name__)
            return 0, None
        finally:
            conn.close()
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = None
        code = ""
        if status >= 300:
            code = ((payload or {}).get("error") or {}).get("code", "") if isinstance(payload, dict) else ""
        self.record(op, status, code)
        return status, payload

    def record(self, op: str, status: int, code: str) -> None:
        with self.lock:
            self.outcomes[(op, status, code)] += 1


def wait_until(t: float, stop: threading.Event) -> bool:
    """Sleep until monotonic ``t``; False when ``stop`` was set first."""
    return not stop.wait(max(0.0, t - time.monotonic()))


# --------------------------------------------------------------------------- load (open loop, one thread)


async def open_loop(port: int, request: bytes, rate: float, t0: float, stop_at: float, timeout: float,
                    max_inflight: int, out: list) -> None:
    """Send execute #i at ``t0 + i / rate`` until ``stop_at`` over keep-alive connections; each answer is
    ``(sent - t0, latency ms, status, overhead ms or None, rate-limit headers?, ok, error kind)``."""
    idle: list[tuple] = []
    inflight = 0

    async def one(sent: float) -> None:
        nonlocal inflight
        inflight += 1
        reader = writer = None
        try:
            if idle:
                reader, writer = idle.pop()
            else:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
            writer.write(request)
            status, headers, body = await asyncio.wait_for(execute._read_response(reader), timeout)
        except Exception as exc:
            if writer is not None:
                writer.close()
            out.append((sent - t0, (time.monotonic() - sent) * 1000, 0, None, False, False, type(exc).__name__))
            return
        finally:
            inflight -= 1
        overhead = headers.get(b"x-fruxon-overhead-ms")
        ok = status == 200 and b'"status":"ok"' in body
        kind = "" if ok else (f"HTTP {status}" if status != 200 else "run not ok")
        if ok and overhead is None:
            ok, kind = False, "no X-Fruxon-Overhead-Ms"
        out.append((sent - t0, (time.monotonic() - sent) * 1000, status, float(overhead) if overhead else None,
                    b"ratelimit-limit" in headers, ok, kind))
        if headers.get(b"connection", b"").lower() == b"close":
            writer.close()
        else:
            idle.append((reader, writer))

    tasks = set()
    total = int((stop_at - t0) * rate)  # bounded in count...
    for index in range(total):
        due = t0 + index / rate
        if due >= stop_at:  # ... and in time
            break
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        if inflight >= max_inflight:
            out.append((due - t0, 0.0, 0, None, False, False, f"not sent: {max_inflight} already in flight"))
            continue
        task = asyncio.create_task(one(time.monotonic()))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=timeout + 5)
    for _, writer in idle:
        writer.close()


# --------------------------------------------------------------------------- control loops (threads)


def flips(client: Client, revs: tuple[str, str], t0: float, end: float, every: float, stop: threading.Event,
          state: dict) -> None:
    """Deploy B / roll back to A, alternately; every 5th flip deploys the revision already deployed (409)."""
    rev_a, rev_b = revs
    for index in range(int((end - t0) / every) + 1):
        if not wait_until(t0 + 1 + index * every, stop) or time.monotonic() >= end:
            return
        if index % 5 == 4:
            client.call("deploy-same", "POST", "agents/slow:deploy", {"revisionId": state["deployed"], "reason": "soak"})
        elif state["deployed"] == rev_a:
            if client.call("deploy", "POST", "agents/slow:deploy", {"revisionId": rev_b, "reason": "soak"})[0] == 201:
                state["deployed"] = rev_b
        else:
            status, _ = client.call("rollback", "POST", "agents/slow:rollback", {"reason": "soak"})
            if status == 201:
                state["deployed"] = rev_a


def exports(client: Client, t0: float, end: float, stop: threading.Event, sizes: list) -> None:
    for index in range(int((end - t0) / 60) + 1):
        if not wait_until(t0 + 2 + index * 60, stop) or time.monotonic() >= end:
            return
        status, body = client.call("export", "GET", "export?history=true")
        if status == 200:
            sizes.append(len(json.dumps(body)))


def evaluations(client: Client, rev: str, t0: float, end: float, every: float, grace: float,
                stop: threading.Event, done: list) -> None:
    """Start one, poll it to its end (at most until ``end + grace``), wait for the next slot."""
    for index in range(int((end - t0) / every) + 1):
        if not wait_until(t0 + 3 + index * every, stop) or time.monotonic() >= end:
            return
        started = time.monotonic()
        status, body = client.call("evaluation", "POST", "evaluations",
                                   {"agent": "slow", "revisionId": rev, "dataset": "soak"})
        if status != 202:
            continue
        final = "timeout"
        for _ in range(int((end + grace - started) / 0.5) + 1):  # bounded
            if stop.wait(0.5) or time.monotonic() > end + grace:
                break
            got, detail = client.call("evaluation-poll", "GET", f"evaluations/{body['id']}")
            if got == 200 and detail["status"] in ("completed", "failed", "cancelled"):
                final = detail["status"]
                break
        client.record("evaluation-result", 200 if final == "completed" else 0, "" if final == "completed" else final)
        done.append((body["id"], final, time.monotonic() - started))


def rate_limit_turns(client: Client, t0: float, end: float, every: float, stop: threading.Event) -> None:
    """Org limits set (never reached) and cleared in turns of ``every`` seconds, starting cleared."""
    limits = {"requestsPerMinute": 1_000_000, "executionsPerMinute": 1_000_000, "tokensPerMinute": 10**12}
    cleared = {"requestsPerMinute": None, "executionsPerMinute": None, "tokensPerMinute": None}
    for index in range(1, int((end - t0) / every) + 2):
        if not wait_until(t0 + index * every, stop) or time.monotonic() >= end:
            break
        client.call("rate-limits", "PUT", "rate-limits", limits if index % 2 else cleared)
    client.call("rate-limits", "PUT", "rate-limits", cleared)


# --------------------------------------------------------------------------- main


def database_exists(admin_url: str) -> bool:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DB_NAME]).fetchone() is not None


def log_problems(paths: list[Path]) -> Counter:
    """Lines of the server/worker/beat logs that report an error (first line of each, as a kind)."""
    found: Counter = Counter()
    for path in paths:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            if "Traceback" in line or " ERROR" in line or "ERROR/" in line or "CRITICAL" in line:
                found[f"{path.stem}: {line.strip()[:140]}"] += 1
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="measured minutes (default %(default)s)")
    parser.add_argument("--warmup", type=float, default=30.0,
                        help="seconds of the same load before 'start' (one of each operation; not measured)")
    parser.add_argument("--rate", type=float, default=20.0, help="executes per second (default %(default)s)")
    parser.add_argument("--latency-ms", type=float, default=250.0, help="the OpenAI stub's answer delay")
    parser.add_argument("--flip-seconds", type=float, default=5.0, help="deploy/rollback flip interval")
    parser.add_argument("--eval-minutes", type=float, default=None,
                        help="evaluation interval (default 3; under 10 minutes, half the run)")
    parser.add_argument("--eval-cases", type=int, default=20, help="cases in the evaluation dataset")
    parser.add_argument("--ratelimit-seconds", type=float, default=None,
                        help="length of each turn with / without org rate limits (default 30; 15 under 10 minutes)")
    parser.add_argument("--sample-seconds", type=float, default=None,
                        help="RSS and PostgreSQL connection sampling interval (default 30; 10 under 10 minutes)")
    parser.add_argument("--max-inflight", type=int, default=400, help="executes in flight before one is skipped")
    parser.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432", help="PostgreSQL server URL")
    parser.add_argument("--drop-existing", action="store_true", help=f"drop {DB_NAME} first if it exists")
    parser.add_argument("--flush-redis", action="store_true", help="empty Redis db 13 first if it holds keys")
    parser.add_argument("--keep-db", action="store_true", help=f"keep {DB_NAME} at the end")
    args = parser.parse_args(argv)
    short = args.minutes < 10
    window = 60.0 if short else 300.0
    turn = args.ratelimit_seconds or (15.0 if short else 30.0)
    eval_every = 60.0 * (args.eval_minutes or (max(0.5, args.minutes / 2) if short else 3.0))
    sample_every = args.sample_seconds or (10.0 if short else 30.0)
    measured = args.minutes * 60.0

    import redis

    admin_url = f"{args.pg.rstrip('/')}/postgres"
    db_url = f"{args.pg.rstrip('/')}/{DB_NAME}"
    rclient = redis.Redis.from_url(REDIS_URL)
    if rclient.dbsize() and not args.flush_redis:
        raise SystemExit(f"{REDIS_URL} holds {rclient.dbsize()} keys: not mine; pass --flush-redis to empty it")
    if database_exists(admin_url) and not args.drop_existing:
        raise SystemExit(f"database {DB_NAME} exists (a previous run kept it?); pass --drop-existing to drop it")
    rclient.flushdb()
    execute.recreate_database(admin_url, DB_NAME)
    env = execute.bench_env(argparse.Namespace(redis_url=REDIS_URL, db_pool=16, server_env=[]), db_url)
    logdir = Path(tempfile.mkdtemp(prefix="fruxon_soak_"))
    log(f"== Fruxon soak: {args.minutes:g} min measured after {args.warmup:g} s warm-up "
        f"({os.cpu_count()} cores, Python {sys.version.split()[0]}); logs in {logdir}")
    log(f"database {DB_NAME} (created), redis {REDIS_URL} (empty at start)")

    opened: dict[str, subprocess.Popen] = {}
    stub = None
    pg = None
    stop = threading.Event()
    try:
        subprocess.run([PY, "manage.py", "migrate", "--verbosity", "0"], cwd=ROOT, env=env, check=True)
        stub = subprocess.Popen([PY, execute.__file__, "_stub", str(args.latency_ms), "norecord"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env,
                                start_new_session=True)
        stub_url = stub.stdout.readline().strip()
        seeded = subprocess.run([PY, execute.__file__, "_seed", stub_url], cwd=ROOT, env=env, check=True,
                                capture_output=True, text=True)
        runner = json.loads(seeded.stdout.strip().splitlines()[-1])["key"]
        extra = subprocess.run([PY, __file__, "_seed_extra", str(args.eval_cases)], cwd=ROOT, env=env, check=True,
                               capture_output=True, text=True)
        seed = json.loads(extra.stdout.strip().splitlines()[-1])
        revs = (seed["revA"], seed["revB"])
        log(f"stub: OpenAI-compatible at {stub_url}, {args.latency_ms:.0f} ms (pid {stub.pid}); seeded org '{ORG}', "
            f"a runner and an admin key, agent 'slow' (openai -> stub) revisions {revs[0]} (deployed) and "
            f"{revs[1]}, dataset 'soak' ({args.eval_cases} cases, contains)")

        # The README's production setup.
        port = execute.free_port()
        label, server_argv, description = execute.parse_server("asgi:2")
        opened["gunicorn"] = execute.start_server(server_argv, env, port, stdout=open(logdir / "gunicorn.log", "w"),
                                                  stderr=subprocess.STDOUT)
        processes = os.cpu_count() or 1
        worker_env = {**env, "DB_POOL_MAX_SIZE": str(WORKER_THREADS)}
        for index in range(1, processes + 1):
            command = [str(execute.BIN / "celery"), "-A", "fruxon", "worker", "-Q", "default,evaluations,shadow",
                       "--pool", "threads", "-c", str(WORKER_THREADS), "--prefetch-multiplier", "1",
                       "-n", f"w{index}@%h", "-l", "info"]
            opened[f"celery w{index}"] = subprocess.Popen(
                command, cwd=ROOT, env=worker_env, start_new_session=True,
                stdout=open(logdir / f"celery-w{index}.log", "w"), stderr=subprocess.STDOUT)
        beat_env = {k: v for k, v in env.items() if k != "DB_POOL_MAX_SIZE"}
        opened["celery beat"] = subprocess.Popen(
            [str(execute.BIN / "celery"), "-A", "fruxon", "beat", "-l", "info",
             "-s", str(logdir / "celerybeat-schedule"), "--pidfile", str(logdir / "celerybeat.pid")],
            cwd=ROOT, env=beat_env, start_new_session=True, stdout=open(logdir / "celery-beat.log", "w"),
            stderr=subprocess.STDOUT)
        from celery import Celery

        control = Celery("soak-control", broker=REDIS_URL)
        deadline = time.monotonic() + 90
        while len(control.control.ping(timeout=1.0) or []) < processes:
            dead = [name for name, proc in opened.items() if proc.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise SystemExit(f"Celery did not come up ({dead or 'timeout'}); see {logdir}")
        log(f"started: {description} on {HOST}:{port} (DB_POOL_MAX_SIZE=16); {processes} x celery worker -Q "
            f"default,evaluations,shadow --pool threads -c {WORKER_THREADS} --prefetch-multiplier 1 "
            f"(DB_POOL_MAX_SIZE={WORKER_THREADS}); celery beat")
        pids = process_table(opened)
        meter = execute.CpuMeter({
            "gunicorn": lambda procs: execute._tree(opened["gunicorn"].pid, procs),
            "celery workers": lambda procs: set().union(*(execute._tree(p.pid, procs) for n, p in opened.items()
                                                          if n.startswith("celery w"))),
            "beat": lambda procs: execute._tree(opened["celery beat"].pid, procs),
            "postgres": lambda procs: execute._postgres_pids(),
            "stub": lambda procs: {stub.pid},
            "soak.py": lambda procs: {os.getpid()},
        })
        rss = {pid: {"boot": rss_kb(pid)} for pid in pids}
        pg = PgSampler(db_url)

        # Load and control loops over [t0, end]; measured from t0 + warmup.
        t0 = time.monotonic() + 1.0
        start = t0 + args.warmup
        end = start + measured
        grace = 120.0
        execs: list = []
        admin = Client(port, seed["admin"])
        state = {"deployed": revs[0]}
        export_sizes: list = []
        evals: list = []
        request = execute.build_request(port, runner, "slow")
        threads = [
            threading.Thread(target=lambda: asyncio.run(open_loop(port, request, args.rate, t0, end, 30.0,
                                                                  args.max_inflight, execs)), name="load"),
            threading.Thread(target=flips, args=(admin, revs, t0, end, args.flip_seconds, stop, state)),
            threading.Thread(target=exports, args=(admin, t0, end, stop, export_sizes)),
            threading.Thread(target=evaluations, args=(admin, revs[1], t0, end, eval_every, grace,
                                                       stop, evals)),
            threading.Thread(target=rate_limit_turns, args=(admin, t0, end, turn, stop)),
        ]
        for thread in threads:
            thread.daemon = True
            thread.start()
        log(f"load: {args.rate:g} executes/s of 'slow' (open loop); deploy/rollback flip every "
            f"{args.flip_seconds:g} s; evaluation every {eval_every / 60:g} min; export every 60 s; org rate limits "
            f"on/off in turns of {turn:g} s; samples every {sample_every:g} s")

        # Samples until the end (bounded in count).
        restarted: list[str] = []
        took_start = False
        next_sample, next_report = t0, start + window
        for _ in range(int((end - t0) / sample_every) + int((end - t0) / window) + 10):
            now = time.monotonic()
            if now >= end:
                break
            if not took_start and now >= start:
                took_start = True
                meter.start()
                for pid in pids:
                    rss[pid]["start"] = rss_kb(pid)
            if now >= next_sample:
                pg.sample(now - start)
                for pid in pids:
                    value = rss_kb(pid)
                    if value is not None:
                        rss[pid]["max"] = max(rss[pid].get("max") or 0, value)
                next_sample += sample_every
            if now >= next_report:
                done = [r for r in execs if r[0] >= start - t0]
                log(f"  {(now - start) / 60:5.1f} min: {len(done)} executes measured so far, "
                    f"{sum(1 for r in done if not r[5])} failed; pg connections {pg.samples[-1][1]}")
                next_report += window
            wake = min(next_sample, next_report, end) if took_start else min(next_sample, start)
            time.sleep(max(0.01, wake - time.monotonic()))
        cpu = meter.stop()
        for pid in pids:
            rss[pid]["end"] = rss_kb(pid)
        current = process_table(opened)
        for pid, name in pids.items():
            if pid not in current:
                restarted.append(f"{name} (pid {pid}) gone")
        for pid, name in current.items():
            if pid not in pids:
                restarted.append(f"{name} (pid {pid}) new")
        for thread in threads:
            thread.join(timeout=(grace + 40) if thread.name != "load" else 45)
        stop.set()
        pg.sample(time.monotonic() - start)

        # ------------------------------------------------------------------ report
        log_paths = sorted(logdir.glob("*.log"))
        log("\n== errors by kind (target 0)")
        errors: Counter = Counter()
        measured_execs = [r for r in execs if r[0] >= start - t0]
        for row in execs:
            if not row[5]:
                errors[f"execute: {row[6]}" + (" (warm-up)" if row[0] < start - t0 else "")] += 1
        expected: Counter = Counter()
        for (op, status, code), n in sorted(admin.outcomes.items()):
            if (op, status, code) in EXPECTED:
                expected[(op, status, code)] += n
            elif status == 0 or status >= 300:
                errors[f"{op}: {('HTTP ' + str(status)) if status else 'no answer'} {code}".strip()] += n
        # What this scenario expects of each operation, if it did not get it.
        if not any(op == "deploy-same" for op, _, _ in admin.outcomes):
            errors["no deploy-same flip was made"] += 1
        for problem in restarted:
            errors[f"process {problem}"] += 1
        problems = log_problems(log_paths)
        for line, n in problems.most_common(8):
            errors[f"log {line}"] += n
        if len(problems) > 8:
            errors[f"log: {len(problems) - 8} more distinct error lines"] += sum(n for _, n in problems.most_common()[8:])
        total_errors = sum(errors.values())
        if errors:
            for kind, n in errors.most_common():
                log(f"  {n:6d}  {kind}")
        log(f"  total errors: {total_errors}" + ("  (target met)" if total_errors == 0 else "  (TARGET MISSED)"))
        ops = Counter()
        for (op, status, code), n in admin.outcomes.items():
            ops[op] += n
        log(f"  requests: {len(execs)} executes ({len(measured_execs)} measured, "
            f"{sum(1 for r in measured_execs if r[5])} ok: HTTP 200, run ok, overhead header), "
            + ", ".join(f"{n} {op}" for op, n in sorted(ops.items())))
        for (op, status, code), n in sorted(expected.items()):
            log(f"  expected, not errors: {n} x {status} {code} from {op}: {EXPECTED[(op, status, code)]}")
        for eid, final, seconds in evals:
            log(f"  evaluation {eid}: {final} in {seconds:.1f} s ({args.eval_cases} cases)")
        if export_sizes:
            log(f"  exports: {len(export_sizes)}, {min(export_sizes)}-{max(export_sizes)} bytes")
        log(f"  server/worker/beat logs scanned for Traceback/ERROR/CRITICAL: {', '.join(p.name for p in log_paths)}")

        log(f"\n== resident memory (RSS, MB): boot, start (after the {args.warmup:g} s warm-up), max, end; "
            f"end/start (target <= {TARGETS['rss_ratio']:.2f}: flat within 10%)")
        worst = 0.0
        for pid, name in sorted(pids.items(), key=lambda item: item[1]):
            row = rss[pid]
            ratio = (row["end"] / row["start"]) if row.get("end") and row.get("start") else None
            worst = max(worst, ratio or 0.0)
            cells = " ".join(f"{(row.get(k) or 0) / 1024:8.1f}" if row.get(k) else f"{'-':>8}"
                             for k in ("boot", "start", "max", "end"))
            log(f"  {name:<18} pid {pid:<7} {cells}   {fmt(ratio, 3)}")
        log(f"  worst end/start: {worst:.3f}" + ("  (target met)" if 0 < worst <= TARGETS["rss_ratio"]
                                                 else "  (TARGET MISSED)"))

        log(f"\n== PostgreSQL connections to {DB_NAME} (pg_stat_activity, the sampler's own excluded), "
            f"every {sample_every:g} s")
        counts = [n for t, n, _ in pg.samples if t >= 0] or [n for _, n, _ in pg.samples]
        per_line = 12
        for offset in range(0, len(pg.samples), per_line):
            chunk = pg.samples[offset:offset + per_line]
            log("  " + "  ".join(f"{t / 60:5.1f}m:{n:3d}" for t, n, _ in chunk))
        peak = max(pg.samples, key=lambda s: s[1])
        log(f"  (negative minutes: warm-up; the last sample is after the load stopped) measured: min {min(counts)}, median {statistics.median(counts):g}, max {max(counts)} "
            f"(at the max: {', '.join(f'{k} {v}' for k, v in sorted(peak[2].items()))}); the pools allow "
            f"{2 * 16} (gunicorn 2 x 16) + {processes * WORKER_THREADS} (workers {processes} x {WORKER_THREADS}) "
            "+ beat")

        log(f"\n== execute overhead (X-Fruxon-Overhead-Ms) per {window / 60:g}-minute window, measured executes")
        log(f"  {'window':<12} {'n':>6} {'ok':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'latency p99':>12}")
        for w in range(int(measured // window) + (1 if measured % window else 0)):
            lo, hi = start - t0 + w * window, min(start - t0 + (w + 1) * window, end - t0)
            rows = [r for r in measured_execs if lo <= r[0] < hi]
            over = [r[3] for r in rows if r[5] and r[3] is not None]
            lat = [r[1] for r in rows if r[5]]
            log(f"  {f'{w * window / 60:g}-{(hi - start + t0) / 60:g} min':<12} {len(rows):6d} "
                f"{sum(1 for r in rows if r[5]):6d} {fmt(pct(over, .5)):>8} {fmt(pct(over, .99)):>8} "
                f"{fmt(max(over) if over else None):>8} {fmt(pct(lat, .99), 0):>9} ms")

        log(f"\n== the rate-limit check's cost per execute (org limits requests/executions/tokens per minute set, "
            f"never reached; turns of {turn:g} s; an execute counts as 'limited' when its answer has RateLimit-*)")
        on = [r[3] for r in measured_execs if r[5] and r[4] and r[3] is not None]
        off = [r[3] for r in measured_execs if r[5] and not r[4] and r[3] is not None]
        if on and off:
            cost = pct(on, .5) - pct(off, .5)
            log(f"  with limits:    n {len(on):6d}  overhead p50 {fmt(pct(on, .5))} ms  p99 {fmt(pct(on, .99))} ms")
            log(f"  without limits: n {len(off):6d}  overhead p50 {fmt(pct(off, .5))} ms  p99 {fmt(pct(off, .99))} ms")
            log(f"  cost per execute (p50 difference): {cost:+.2f} ms (target <= {TARGETS['ratelimit_ms']} ms: "
                + ("met)" if cost <= TARGETS["ratelimit_ms"] else "MISSED)"))
        else:
            cost = None
            log(f"  not measured: {len(on)} executes with limits, {len(off)} without (run longer)")

        log("\n== " + execute.fmt_cpu(cpu) + " (measured period; other = everything else on the machine)")
        log("\n== summary: " + "; ".join([
            f"errors {total_errors} (target 0)",
            f"RSS end/start worst {worst:.3f} (target <= {TARGETS['rss_ratio']:.2f})",
            f"pg connections {min(counts)}-{max(counts)}",
            f"overhead p99 {fmt(pct([r[3] for r in measured_execs if r[5] and r[3] is not None], .99))} ms overall",
            f"rate-limit cost {fmt(cost)} ms (target <= {TARGETS['ratelimit_ms']})"]))
        return 0 if total_errors == 0 else 1
    finally:
        stop.set()
        if pg is not None:
            pg.close()
        for name, proc in opened.items():
            execute.stop_server(proc)
        if stub is not None:
            stub.stdin.close()
            try:
                stub.wait(timeout=10)
            except subprocess.TimeoutExpired:
                stub.kill()
        rclient.flushdb()  # db 13 was empty at the start: everything in it is this run's
        if not args.keep_db:
            import psycopg

            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        log(f"torn down: {', '.join(opened) or 'nothing started'}, stub; redis db 13 emptied; "
            + (f"{DB_NAME} kept" if args.keep_db else f"{DB_NAME} dropped") + f"; logs kept in {logdir}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_seed_extra":
        child_seed_extra()
    else:
        sys.exit(main())
