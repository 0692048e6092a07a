#!/usr/bin/env python
"""Benchmark of the execute hot path, run by hand (never a test).

    .venv/bin/python bench/execute.py                  # both servers, default settings
    .venv/bin/python bench/execute.py --servers gthread:2:256 --ramp 100,200
    .venv/bin/python bench/execute.py --db-pool 0 --servers gthread:2:40   # persistent connections
    .venv/bin/python bench/execute.py --servers gthread:2:256 --phases budget   # only the ledger's cost

What it does, in order (see bench/README.md):

1. drops and recreates the PostgreSQL database ``fruxon_bench``, migrates it,
   seeds an org, a ``runner`` API key and deployed agents: ``local``
   (``fruxon-local``, 0 ms), ``slow`` (``openai`` provider whose ``baseUrl``
   is a loopback OpenAI-compatible stub answering after 1,000 ms; the stub runs
   in a process of its own so it never takes the server's GIL), and ``priced``
   and ``budgeted`` (``local`` with a price; ``budgeted`` has an enforced day
   budget that is never reached);
2. for each server choice, starts it as production would (``DEBUG`` unset,
   a generated Fernet key, ``SECURE_SSL_REDIRECT=0``) in a subprocess and measures:

   * sequential overhead (``X-Fruxon-Overhead-Ms``) p50/p99 on ``local``;
   * the budget ledger's cost per execute: sequential overhead on ``budgeted``
     (an enforced budget, so every model call reserves and settles on the
     server's ledger: Redis with ``REDIS_URL``, or ``FRUXON_LEDGER``) against
     ``priced`` (the same agent and prices, no budget), calls interleaved;
   * executions per second on ``local`` (closed loop, N clients in separate
     load processes: asyncio raw HTTP/1.1 keep-alive clients; plus ``wrk`` as a
     cross-check when it is installed);
   * on ``slow``: a concurrency ramp; at each level the success rate, throughput,
     end-to-end latency and overhead p99;

3. prints a summary against the targets, and the CPU each party used, so a
   missed figure says what limited it.

Everything sent stays on 127.0.0.1; every loop is bounded in count and time.
"""
from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
BIN = Path(PY).parent
HOST = "127.0.0.1"
ORG = "bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")

TARGETS = {"p50": 4.0, "p99": 10.0, "eps": 250.0, "inflight": 200, "inflight_p99": 50.0}
PHASES = ("seq", "budget", "throughput", "ramp")


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def pct(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def log(*parts) -> None:
    print(*parts, flush=True)


# CPU accounting from /proc, so each result says who used the two cores.

def _proc_stat(pid: int) -> tuple[int, float] | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK  # ppid, utime+stime


def _all_procs() -> dict[int, tuple[int, float]]:
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = _proc_stat(int(name))
            if stat:
                out[int(name)] = stat
    return out


def _tree(root: int, procs: dict[int, tuple[int, float]]) -> set[int]:
    found, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _) in procs.items():
            if ppid == parent and pid not in found:
                found.add(pid)
                frontier.append(pid)
    return found


def _postgres_pids() -> set[int]:
    pids = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/comm") as handle:
                    if handle.read().strip() == "postgres":
                        pids.add(int(name))
            except OSError:
                pass
    return pids


def _machine_cpu() -> tuple[float, float]:
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + values[4]
    return (sum(values) - idle) / CLK_TCK, sum(values) / CLK_TCK


class CpuMeter:
    """CPU seconds used by named process groups between ``start()`` and ``stop()``."""

    def __init__(self, groups: dict[str, callable]):
        self.groups = groups  # name -> function returning the set of pids now

    def _snap(self) -> dict[str, dict[int, float]]:
        procs = _all_procs()
        snap = {}
        for name, pids in self.groups.items():
            snap[name] = {pid: procs[pid][1] for pid in pids(procs) if pid in procs}
        return snap

    def start(self) -> None:
        self.t0, self.s0, self.m0 = time.monotonic(), self._snap(), _machine_cpu()

    def stop(self) -> dict[str, float]:
        wall, s1, m1 = time.monotonic() - self.t0, self._snap(), _machine_cpu()
        cores = {}
        for name, after in s1.items():
            before = self.s0.get(name, {})
            used = sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())
            cores[name] = used / wall
        busy, total = m1[0] - self.m0[0], m1[1] - self.m0[1]
        # Whatever else runs on the machine (other people's test suites...) competes for the same cores.
        cores["other"] = max(0.0, busy / wall - sum(cores.values()))
        cores["machine busy %"] = 100.0 * busy / total if total else 0.0
        return cores


def wait_quiet(limit: float, threshold: float = 25.0) -> str:
    """Wait (at most ``limit`` s) for a second in which the machine is under ``threshold``% busy.

    Other work on the machine (someone's test suite) takes the same two cores;
    measuring while it runs says more about it than about Fruxon.
    """
    started = time.monotonic()
    while True:
        before = _machine_cpu()
        time.sleep(1.0)
        after = _machine_cpu()
        total = after[1] - before[1]
        busy = 100.0 * (after[0] - before[0]) / total if total else 0.0
        if busy <= threshold:
            waited = time.monotonic() - started
            return f"machine idle ({busy:.0f}% busy)" + (f" after waiting {waited:.0f} s" if waited > 1.5 else "")
        if time.monotonic() - started >= limit:
            return f"machine still {busy:.0f}% busy after {limit:.0f} s: measuring anyway"


def fmt_cpu(cores: dict[str, float]) -> str:
    parts = [f"{name} {value:.2f}" for name, value in cores.items() if name != "machine busy %"]
    return "CPU cores used: " + ", ".join(parts) + f"; machine busy {cores['machine busy %']:.0f}%"


# --------------------------------------------------------------------------- stub and seed (child processes)


def child_stub(latency_ms: float, record: bool = True) -> None:
    """``_stub MS [norecord]``: serve the OpenAI-compatible stub until stdin closes.

    ``norecord`` keeps no copy of the requests (for long runs: bench/soak.py)."""
    sys.path.insert(0, str(ROOT))
    from agents.engine.testing import start_openai_stub

    base_url, server = start_openai_stub(latency_ms=latency_ms, record=record)
    print(base_url, flush=True)
    try:
        sys.stdin.read()  # the parent closes our stdin (or dies) to stop us
    finally:
        server.close()


def child_seed(stub_url: str) -> None:
    """``_seed URL``: org, runner key, two deployed agents; prints JSON."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fruxon.settings")
    import django

    django.setup()
    from agents import services as agent_services
    from decimal import Decimal

    from deployments.services import deploy
    from monitoring.budgets import put_budget
    from monitoring.pricing import set_overrides
    from orgs.actor import Actor
    from orgs.models import Organization
    from orgs.services import api_keys

    actor = Actor(system=True)
    org = Organization.objects.create(slug=ORG, name="Benchmark")
    minted = api_keys.create_key(actor=actor, organization=org, name="bench runner", preset="runner")
    inputs = {"question": {"type": "string", "required": True}}
    specs = {
        "local": {"inputs": inputs,
                  "steps": [{"name": "answer", "model": {"provider": "fruxon-local", "name": "local",
                                                         "script": [{"reply": "hello {{input.question}}"}]},
                             "prompt": "{{input.question}}"}],
                  "output": "{{steps.answer.output}}"},
        "slow": {"inputs": inputs,
                 "steps": [{"name": "answer", "model": {"provider": "openai", "name": "gpt-4o-mini",
                                                        "baseUrl": stub_url, "maxTokens": 64},
                            "systemPrompt": "You are a terse support agent.", "prompt": "{{input.question}}"}],
                 "output": "{{steps.answer.output}}", "timeoutSeconds": 30},
    }
    specs["priced"] = specs["budgeted"] = specs["local"]
    for slug, spec in specs.items():
        agent = agent_services.create_agent(actor=actor, organization=org, slug=slug, name=slug)
        revision = agent_services.create_revision(actor=actor, agent=agent, spec=spec, message="bench")
        deploy(actor=actor, agent=agent, revision_id=revision.id, reason="bench", force=True)
        if slug in ("priced", "budgeted"):
            # Priced alike (a run costs something to reserve and settle); only 'budgeted' has a budget.
            set_overrides(actor=actor, organization=org, agent=agent, rows=[{
                "provider": "fruxon-local", "model": "*", "inputPerMillion": Decimal("0.15"),
                "outputPerMillion": Decimal("0.60")}])
        if slug == "budgeted":
            put_budget(actor=actor, agent=agent, period="day", amount_usd=Decimal("1000000"), enforce=True,
                       alert_thresholds=[], alert_webhook="", alert_emails=[])
    print(json.dumps({"key": minted.plaintext}), flush=True)


# --------------------------------------------------------------------------- load generator (separate processes)


def build_request(port: int, key: str, agent: str) -> bytes:
    body = json.dumps({"input": {"question": "where is my order?"}}).encode()
    head = (f"POST /v1/{ORG}/agents/{agent}:execute HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
            f"X-API-KEY: {key}\r\nContent-Type: application/json\r\nAccept: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
    if b"content-length" in headers:
        length = int(headers[b"content-length"])
        return status, headers, (await reader.readexactly(length) if length else b"")
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        chunks = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                break
            chunks.append(data[:-2])
        return status, headers, b"".join(chunks)
    raise ValueError("response without a length")


async def _client(request: bytes, port: int, delay: float, stop_at: float, timeout: float, out: list) -> None:
    """One closed-loop client: send, wait for the whole answer, send again, until ``stop_at``."""
    await asyncio.sleep(delay)
    reader = writer = None
    while time.monotonic() < stop_at:
        started = time.monotonic()
        try:
            if writer is None:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
            writer.write(request)
            status, headers, body = await asyncio.wait_for(_read_response(reader), timeout)
        except Exception as exc:  # timeout, reset, refused: a failed execution
            out.append((started, time.monotonic(), 0, None, False, type(exc).__name__))
            if writer is not None:
                writer.close()
            reader = writer = None
            await asyncio.sleep(0.05)
            continue
        overhead = headers.get(b"x-fruxon-overhead-ms")
        ok = status == 200 and b'"status":"ok"' in body
        out.append((started, time.monotonic(), status, float(overhead) if overhead else None, ok, ""))
        if headers.get(b"connection", b"").lower() == b"close":
            writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


def load_process(request: bytes, port: int, clients: int, start_at: float, stop_at: float, timeout: float,
                 spread: float, queue) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def main() -> list:
        out: list = []
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        await asyncio.gather(*[_client(request, port, spread * i / max(1, clients), stop_at, timeout, out)
                               for i in range(clients)])
        return out

    queue.put(asyncio.run(main()))


@dataclass
class LoadResult:
    clients: int
    seconds: float
    ok: int = 0
    failed: int = 0
    late: int = 0
    eps: float = 0.0
    latency: list[float] = field(default_factory=list)
    overhead: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.ok + self.failed + self.late

    @property
    def success(self) -> float:
        return 100.0 * self.ok / self.total if self.total else 0.0


def run_load(*, request: bytes, port: int, clients: int, procs: int, warmup: float, seconds: float,
             timeout: float, late_after: float | None, meter: CpuMeter, load_pids: list) -> LoadResult:
    """Closed loop: ``clients`` connections over ``procs`` processes; counts what starts in the window."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = max(1, min(procs, clients))
    start_at = time.monotonic() + 1.5  # time for the spawned processes to import
    window = (start_at + warmup, start_at + warmup + seconds)
    spread = min(1.0, warmup / 2)  # open connections over this long, not all at once
    workers = []
    for index in range(procs):
        share = clients // procs + (1 if index < clients % procs else 0)
        proc = ctx.Process(target=load_process,
                           args=(request, port, share, start_at, window[1], timeout, spread, queue), daemon=True)
        proc.start()
        workers.append(proc)
    load_pids[:] = [proc.pid for proc in workers]
    time.sleep(max(0.0, window[0] - time.monotonic()))
    meter.start()
    time.sleep(max(0.0, window[1] - time.monotonic()))
    cpu = meter.stop()
    rows = []
    for _ in workers:
        rows.extend(queue.get(timeout=timeout + 60))
    for proc in workers:
        proc.join(timeout=10)
    load_pids[:] = []

    result = LoadResult(clients=clients, seconds=seconds, cpu=cpu)
    done_in_window = 0
    for started, ended, status, overhead, ok, error in rows:
        if window[0] <= ended <= window[1] and ok:
            done_in_window += 1
        if not (window[0] <= started <= window[1]):
            continue
        latency = (ended - started) * 1000.0
        if ok and overhead is not None:
            result.overhead.append(overhead)
        result.latency.append(latency)
        if not ok:
            result.failed += 1
            label = error or f"HTTP {status}"
            result.errors[label] = result.errors.get(label, 0) + 1
        elif late_after is not None and latency > late_after:
            result.late += 1
        else:
            result.ok += 1
    result.eps = done_in_window / seconds
    return result


# --------------------------------------------------------------------------- phases


def sequential(port: int, key: str, warmup: int, count: int, agents: tuple[str, ...] = ("local",)
               ) -> dict[str, tuple[list[float], list[float]]]:
    """One call at a time on one keep-alive connection; with several agents, their calls alternate
    (so drift on a shared machine hits each alike). Returns agent -> (overheads, latencies) in ms."""
    body = json.dumps({"input": {"question": "where is my order?"}})
    headers = {"X-API-KEY": key, "Content-Type": "application/json"}
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    out: dict[str, tuple[list[float], list[float]]] = {agent: ([], []) for agent in agents}
    for index in range(warmup + count):
        for agent in (agents if index % 2 == 0 else agents[::-1]):
            started = time.monotonic()
            conn.request("POST", f"/v1/{ORG}/agents/{agent}:execute", body, headers)
            response = conn.getresponse()
            payload = response.read()
            elapsed = (time.monotonic() - started) * 1000.0
            if response.status != 200:
                raise SystemExit(f"execute of '{agent}' answered {response.status}: {payload[:500]!r}")
            if index >= warmup:
                out[agent][0].append(float(response.getheader("X-Fruxon-Overhead-Ms")))
                out[agent][1].append(elapsed)
    conn.close()
    return out


def ledger_label(env: dict) -> str:
    kind = env.get("FRUXON_LEDGER") or ("redis" if env.get("REDIS_URL") else "database")
    if kind == "redis":
        return f"Redis ledger ({env.get('FRUXON_LEDGER_REDIS_URL') or env.get('REDIS_URL')})"
    return "database ledger (PostgreSQL conditional UPDATE)"


def budget_spent(db_url: str, env: dict) -> tuple[int, float]:
    """Runs of 'budgeted', and its spend on the server's ledger (a check that the budget was enforced)."""
    import psycopg

    with psycopg.connect(db_url, autocommit=True) as conn:
        agent_id, runs = conn.execute("SELECT a.id, count(r.id) FROM agents_agent a LEFT JOIN monitoring_run r "
                                      "ON r.agent_id = a.id WHERE a.slug = 'budgeted' GROUP BY a.id").fetchone()
        units = conn.execute("SELECT coalesce(sum(spent_units), 0) FROM monitoring_budgetperiod WHERE agent_id = %s",
                             [agent_id]).fetchone()[0]
    if "Redis" in ledger_label(env):
        import redis

        client = redis.Redis.from_url(env.get("FRUXON_LEDGER_REDIS_URL") or env["REDIS_URL"])
        units = sum(int(client.hget(key, "spent") or 0) for key in client.scan_iter(f"{{fx:ledger:{agent_id}:*:totals"))
    return runs, float(units) / 1e8


def run_wrk(port: int, key: str, clients: int, seconds: int) -> str | None:
    wrk = shutil.which("wrk")
    if not wrk:
        return None
    body = json.dumps({"input": {"question": "where is my order?"}})
    script = (f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\n'
              f'wrk.headers["Content-Type"] = "application/json"\nwrk.headers["X-API-KEY"] = "{key}"\n')
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
    try:
        out = subprocess.run([wrk, "-t1", f"-c{clients}", f"-d{seconds}s", "-s", handle.name,
                              f"http://{HOST}:{port}/v1/{ORG}/agents/local:execute"],
                             capture_output=True, text=True, timeout=seconds + 30).stdout
    finally:
        os.unlink(handle.name)
    rps = next((line.split()[-1] for line in out.splitlines() if line.startswith("Requests/sec")), "?")
    non2xx = next((line.split()[-1] for line in out.splitlines() if "Non-2xx" in line), "0")
    return f"{rps} req/s (non-2xx: {non2xx})"


# --------------------------------------------------------------------------- servers


def start_profiles(directory: str | None, label: str, server_pid: int, delay: float, seconds: float) -> list:
    """py-spy every worker of the server for ``seconds`` after ``delay``; returns (Popen, path) pairs."""
    if not directory:
        return []
    os.makedirs(directory, exist_ok=True)
    procs = _all_procs()
    workers = sorted(_tree(server_pid, procs) - {server_pid}) or [server_pid]
    spies = []
    for pid in workers:
        path = os.path.join(directory, f"{label.replace(' ', '_')}-{pid}.txt")
        command = (f"sleep {delay:.1f} && exec {BIN / 'py-spy'} record --pid {pid} --gil --rate 500 --format raw "
                   f"--nonblocking --duration {int(seconds)} --output {path}")
        spies.append((subprocess.Popen(["sh", "-c", command], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), path))
    return spies


def finish_profiles(spies: list) -> None:
    for spy, path in spies:
        try:
            spy.wait(timeout=60)
        except subprocess.TimeoutExpired:
            spy.kill()
    paths = [path for _, path in spies if os.path.exists(path)]
    if paths:
        summary = summarize_stacks(paths)
        with open(os.path.join(os.path.dirname(paths[0]), "summary.txt"), "a") as handle:
            handle.write(summary)
        log(f"  py-spy profile of the workers: {', '.join(paths)} (summary.txt beside them)")


def summarize_stacks(paths: list[str], top: int = 60) -> str:
    """Inclusive and self share of each function in py-spy's collapsed stacks (CPU samples)."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for path in paths:
        with open(path) as handle:
            for line in handle:
                stack, _, count = line.rstrip().rpartition(" ")
                frames, n = stack.split(";"), int(count)
                total += n
                for frame in set(frames):
                    inclusive[frame] = inclusive.get(frame, 0) + n
                own[frames[-1]] = own.get(frames[-1], 0) + n
    lines = [f"== {', '.join(paths)}: {total} samples; inclusive share:"]
    lines += [f"  {100.0 * n / total:5.1f}%  {frame}" for frame, n in sorted(inclusive.items(), key=lambda i: -i[1])[:top]]
    lines.append("self:")
    lines += [f"  {100.0 * n / total:5.1f}%  {frame}" for frame, n in sorted(own.items(), key=lambda i: -i[1])[:30]]
    return "\n".join(lines) + "\n"


def parse_server(text: str) -> tuple[str, list[str], str]:
    """``gthread[:W[:T]]`` or ``uvicorn[:W]`` -> (label, argv tail, description)."""
    kind, *nums = text.split(":")
    if kind == "gthread":
        workers = int(nums[0]) if nums else 2
        threads = int(nums[1]) if len(nums) > 1 else 256
        argv = [str(BIN / "gunicorn"), "fruxon.wsgi", "-k", "gthread", "--workers", str(workers),
                "--threads", str(threads), "--backlog", "2048", "--keep-alive", "75",
                "--worker-connections", "2000", "--log-level", "warning", "--graceful-timeout", "5"]
        return (f"gthread {workers}x{threads}", argv,
                f"gunicorn fruxon.wsgi -k gthread --workers {workers} --threads {threads}")
    if kind == "uvicorn":
        workers = int(nums[0]) if nums else 2
        argv = [str(BIN / "uvicorn"), "fruxon.asgi:application", "--workers", str(workers), "--loop", "uvloop",
                "--http", "httptools", "--no-access-log", "--backlog", "2048", "--timeout-keep-alive", "75",
                "--log-level", "warning"]
        return (f"uvicorn {workers}w", argv, f"uvicorn fruxon.asgi:application --workers {workers} (uvloop, httptools)")
    raise SystemExit(f"unknown server {text!r}: use gthread[:W[:T]] or uvicorn[:W]")


def start_server(argv: list[str], env: dict, port: int, **popen) -> subprocess.Popen:
    """Start the server on ``HOST:port`` and wait until it accepts; ``popen``: e.g. ``stdout=`` a log file."""
    if argv[0].endswith("gunicorn"):
        argv = argv + ["--bind", f"{HOST}:{port}"]
    else:
        argv = argv + ["--host", HOST, "--port", str(port)]
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, start_new_session=True, **popen)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}: {' '.join(argv)}")
        try:
            socket.create_connection((HOST, port), timeout=2).close()
        except OSError:
            time.sleep(0.2)
            continue
        time.sleep(2.0)  # the port is bound before the workers have imported Django
        return proc
    raise SystemExit("server did not start within 60 s")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# --------------------------------------------------------------------------- main


def recreate_database(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def sql(url: str, statement: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement)


def bench_env(args, db_url: str) -> dict:
    from cryptography.fernet import Fernet

    env = {k: v for k, v in os.environ.items()
           if k not in {"DEBUG", "FRUXON_TESTING", "DJANGO_SETTINGS_MODULE", "REDIS_URL", "DATABASE_URL"}}
    env.update({
        "DJANGO_SETTINGS_MODULE": "fruxon.settings",
        "DATABASE_URL": db_url,
        "SECRET_KEY": "bench-" + Fernet.generate_key().decode(),
        "FRUXON_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "ALLOWED_HOSTS": HOST,
        "SECURE_SSL_REDIRECT": "0",
        "PYTHONUNBUFFERED": "1",
        # The provider stub listens on loopback, which the egress policy refuses unless allowed.
        "FRUXON_EGRESS_ALLOW": "127.0.0.1",
    })
    if args.redis_url:
        env["REDIS_URL"] = args.redis_url
    if getattr(args, "db_pool", 0):
        env["DB_POOL_MAX_SIZE"] = str(args.db_pool)
    for item in args.server_env:
        name, _, value = item.partition("=")
        env[name] = value
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default="gthread:2:256,uvicorn:2",
                        help="comma-separated: gthread[:WORKERS[:THREADS]], uvicorn[:WORKERS] (default %(default)s)")
    parser.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432", help="PostgreSQL server URL")
    parser.add_argument("--db", default="fruxon_bench", help="database name (dropped and recreated)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15",
                        help="REDIS_URL for the server (key cache, Celery); '' for none (default %(default)s)")
    parser.add_argument("--db-pool", type=int, default=16,
                        help="DB_POOL_MAX_SIZE per server process; 0 = persistent connections (DB_CONN_MAX_AGE=60) "
                             "(default %(default)s)")
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for the server (repeatable)")
    parser.add_argument("--seq", type=int, default=500, help="sequential calls measured (after --seq-warmup)")
    parser.add_argument("--seq-warmup", type=int, default=200)
    parser.add_argument("--clients", type=int, default=32, help="closed-loop clients for the 0 ms throughput")
    parser.add_argument("--load-procs", type=int, default=1, help="load generator processes (default %(default)s)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per load phase")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before each load phase")
    parser.add_argument("--latency-ms", type=float, default=1000.0, help="the stub's answer delay")
    parser.add_argument("--ramp", default="100,200,300,400", help="in-flight levels against the stub")
    parser.add_argument("--ramp-seconds", type=float, default=15.0)
    parser.add_argument("--no-wrk", action="store_true", help="skip the wrk cross-check")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help=f"comma-separated, in this order: {', '.join(PHASES)} (default: all)")
    parser.add_argument("--budget-calls", type=int, default=500,
                        help="sequential calls per agent in the budget phase (after --seq-warmup / 2)")
    parser.add_argument("--profile-dir", help="py-spy the server workers (CPU, --gil) during the 0 ms throughput "
                                              "phase; collapsed stacks and a summary go here")
    parser.add_argument("--quiet-wait", type=float, default=30.0,
                        help="before each phase, wait up to this long for other work on the machine to stop")
    args = parser.parse_args(argv)

    servers = [parse_server(item) for item in args.servers.split(",") if item]
    phases = {item for item in args.phases.split(",") if item}
    if not phases or phases - set(PHASES):
        raise SystemExit(f"unknown phase(s) {sorted(phases - set(PHASES))}: use {', '.join(PHASES)}")
    ramp = [int(level) for level in args.ramp.split(",") if level]
    db_url = f"{args.pg.rstrip('/')}/{args.db}"
    env = bench_env(args, db_url)
    if args.redis_url:
        import redis

        redis.Redis.from_url(args.redis_url).flushdb()

    log(f"== Fruxon execute benchmark  ({os.cpu_count()} cores, Python {sys.version.split()[0]})")
    log(f"database {db_url} (recreated), redis {args.redis_url or 'none (locmem cache)'}, "
        + (f"connection pool of {args.db_pool} per server process" if args.db_pool
           else "persistent connections (one per server thread)"))
    recreate_database(f"{args.pg.rstrip('/')}/postgres", args.db)
    subprocess.run([PY, "manage.py", "migrate", "--verbosity", "0"], cwd=ROOT, env=env, check=True)
    sql(db_url, "VACUUM ANALYZE")

    stub = subprocess.Popen([PY, __file__, "_stub", str(args.latency_ms)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env, start_new_session=True)
    stub_url = stub.stdout.readline().strip()
    log(f"stub: OpenAI-compatible, {args.latency_ms:.0f} ms, at {stub_url} (pid {stub.pid}, own process)")
    seeded = subprocess.run([PY, __file__, "_seed", stub_url], cwd=ROOT, env=env, check=True,
                            capture_output=True, text=True)
    key = json.loads(seeded.stdout.strip().splitlines()[-1])["key"]
    extra = " ".join(args.server_env)
    log(f"seeded org '{ORG}', a runner key, agents 'local' (fruxon-local, 0 ms) and 'slow' (openai -> stub)"
        + (f"; server env: {extra}" if extra else ""))
    log(f"load generator: {args.load_procs} process(es) of asyncio+uvloop raw HTTP/1.1 keep-alive clients "
        "(closed loop: each client sends its next request when the answer arrives)"
        + ("; wrk -t1 as a cross-check" if shutil.which("wrk") and not args.no_wrk else ""))

    summary = []
    load_pids: list[int] = []
    try:
        for label, server_argv, description in servers:
            port = free_port()
            log(f"\n== {label}: {description}")
            proc = start_server(server_argv, env, port)
            meter = CpuMeter({
                "server": lambda procs, pid=proc.pid: _tree(pid, procs),
                "postgres": lambda procs: _postgres_pids(),
                "load gen": lambda procs: set(load_pids),
                "stub": lambda procs: {stub.pid},
            })
            row = {"server": label}
            try:
                if "seq" in phases:
                    log("  " + wait_quiet(args.quiet_wait))
                    overheads, latencies = sequential(port, key, args.seq_warmup, args.seq)["local"]
                    row.update(p50=pct(overheads, 0.50), p99=pct(overheads, 0.99))
                    log(f"sequential, {args.seq} calls on 'local' after {args.seq_warmup} warm-up: overhead "
                        f"p50 {fmt(row['p50'])} ms, p99 {fmt(row['p99'])} ms, max {fmt(max(overheads))} ms; "
                        f"client-seen latency p50 {fmt(pct(latencies, 0.5))} ms, p99 {fmt(pct(latencies, 0.99))} ms")

                if "budget" in phases:
                    log("  " + wait_quiet(args.quiet_wait))
                    runs_before, _ = budget_spent(db_url, env)
                    measured = sequential(port, key, max(1, args.seq_warmup // 2), args.budget_calls,
                                          agents=("priced", "budgeted"))
                    runs_after, spent_usd = budget_spent(db_url, env)
                    (free, free_lat), (paid, paid_lat) = measured["priced"], measured["budgeted"]
                    diff50, diff99 = pct(paid, 0.50) - pct(free, 0.50), pct(paid, 0.99) - pct(free, 0.99)
                    row["ledger"] = (diff50, diff99)
                    log(f"budget ledger, {args.budget_calls} calls each on 'priced' (no budget) and 'budgeted' "
                        f"(enforced; {ledger_label(env)}), interleaved: overhead p50 {fmt(pct(free, 0.5))} vs "
                        f"{fmt(pct(paid, 0.5))} ms, p99 {fmt(pct(free, 0.99))} vs {fmt(pct(paid, 0.99))} ms; "
                        f"client-seen p50 {fmt(pct(free_lat, 0.5))} vs {fmt(pct(paid_lat, 0.5))} ms")
                    log(f"  the ledger's cost per execute (one model call: reserve + settle): p50 {diff50:+.2f} ms, "
                        f"p99 {diff99:+.2f} ms; 'budgeted' ran {runs_after - runs_before} times; its ledger "
                        f"says ${spent_usd:.6f} spent")

                if "throughput" in phases:
                    log("  " + wait_quiet(args.quiet_wait))
                    spies = start_profiles(args.profile_dir, label, proc.pid, args.warmup + 1.5, args.seconds)
                    result = run_load(request=build_request(port, key, "local"), port=port, clients=args.clients,
                                      procs=args.load_procs, warmup=args.warmup, seconds=args.seconds, timeout=30,
                                      late_after=None, meter=meter, load_pids=load_pids)
                    finish_profiles(spies)
                    row["eps"] = result.eps
                    log(f"throughput at 0 ms, {args.clients} clients, {args.seconds:.0f} s: {result.eps:.0f} executions/s, "
                        f"success {result.success:.2f}% of {result.total}"
                        + (f" (failures: {result.errors})" if result.errors else "")
                        + f"; latency p50 {fmt(pct(result.latency, 0.5))} ms, p99 {fmt(pct(result.latency, 0.99))} ms; "
                        f"overhead p50 {fmt(pct(result.overhead, 0.5))} ms, p99 {fmt(pct(result.overhead, 0.99))} ms")
                    log("  " + fmt_cpu(result.cpu))
                    if not args.no_wrk:
                        wait_quiet(args.quiet_wait)
                        wrk = run_wrk(port, key, args.clients, int(args.seconds))
                        if wrk:
                            row["wrk"] = wrk
                            log(f"  wrk cross-check ({args.clients} connections, {int(args.seconds)} s): {wrk}")

                if "ramp" in phases:
                    late_ms = args.latency_ms + 1000.0
                    log(f"in flight against the {args.latency_ms:.0f} ms stub ('slow'); success = HTTP 200, run ok, "
                        f"answered within {late_ms / 1000:.1f} s; {args.ramp_seconds:.0f} s per level after "
                        f"{args.warmup:.0f} s warm-up")
                    held = None
                    for level in ramp:
                        log("  " + wait_quiet(args.quiet_wait))
                        spies = start_profiles(args.profile_dir, f"{label}-{level}", proc.pid, args.warmup + 1.5,
                                               args.ramp_seconds)
                        result = run_load(request=build_request(port, key, "slow"), port=port, clients=level,
                                          procs=args.load_procs, warmup=args.warmup, seconds=args.ramp_seconds,
                                          timeout=late_ms / 1000.0 + 10, late_after=late_ms, meter=meter,
                                          load_pids=load_pids)
                        finish_profiles(spies)
                        effective = result.eps * args.latency_ms / 1000.0
                        log(f"  {level:4d} in flight: success {result.success:7.3f}% of {result.total:5d}"
                            f" (late {result.late}, failed {result.failed}"
                            + (f" {result.errors}" if result.errors else "") + ")"
                            f"; {result.eps:6.1f} exec/s (= {effective:.0f} held at {args.latency_ms:.0f} ms); "
                            f"latency p50 {fmt(pct(result.latency, 0.5), 0)} p99 {fmt(pct(result.latency, 0.99), 0)} ms; "
                            f"overhead p50 {fmt(pct(result.overhead, 0.5))} p99 {fmt(pct(result.overhead, 0.99))} ms")
                        log("        " + fmt_cpu(result.cpu))
                        if result.success >= 99.9:
                            held = (level, pct(result.overhead, 0.99))
                    row["held"] = held
            finally:
                stop_server(proc)
            sql(db_url, "TRUNCATE monitoring_span, monitoring_run CASCADE")
            summary.append(row)
    finally:
        stub.stdin.close()
        try:
            stub.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(stub.pid, signal.SIGKILL)

    log("\n== summary (targets: overhead p50 <= 4 ms, p99 <= 10 ms; >= 250 exec/s at 0 ms; "
        ">= 200 in flight at 1,000 ms with overhead p99 <= 50 ms)" + (f"; phases run: {args.phases}"
                                                                    if phases != set(PHASES) else ""))
    log(f"{'server':<16} {'p50 ms':>8} {'p99 ms':>8} {'exec/s':>8} {'held':>6} {'p99@held':>9} "
        f"{'ledger p50/p99 ms':>18}  verdict")
    for row in summary:
        misses = []
        if "seq" in phases and row["p50"] > TARGETS["p50"]:
            misses.append("p50")
        if "seq" in phases and row["p99"] > TARGETS["p99"]:
            misses.append("p99")
        if "throughput" in phases and row["eps"] < TARGETS["eps"]:
            misses.append("exec/s")
        held, held_p99 = row.get("held") or (0, None)
        if "ramp" in phases and (held < TARGETS["inflight"] or held_p99 is None
                                 or held_p99 > TARGETS["inflight_p99"]):
            misses.append("in-flight")
        ledger = row.get("ledger")
        ledger_text = f"{ledger[0]:+.2f}/{ledger[1]:+.2f}" if ledger else "-"
        eps = row.get("eps")
        log(f"{row['server']:<16} {fmt(row.get('p50')):>8} {fmt(row.get('p99')):>8} "
            f"{(f'{eps:.0f}' if eps is not None else '-'):>8} {(held if 'ramp' in phases else '-'):>6} "
            f"{fmt(held_p99):>9} {ledger_text:>18}  {'all targets met' if not misses else 'misses: ' + ', '.join(misses)}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_stub":
        child_stub(float(sys.argv[2]), record=sys.argv[3:4] != ["norecord"])
    elif len(sys.argv) > 1 and sys.argv[1] == "_seed":
        child_seed(sys.argv[2])
    else:
        sys.exit(main())
