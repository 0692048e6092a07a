#!/usr/bin/env python
"""Benchmark of the execute hot path, run by hand (never a test).

    .venv/bin/python bench/execute.py                         # the README's production command, all phases (~6 min)
    .venv/bin/python bench/execute.py --servers asgi:2,gthread:2:256   # and gthread for comparison
    .venv/bin/python bench/execute.py --phases seq,throughput --seconds 5
    .venv/bin/python bench/execute.py --phases budget         # only the ledger's cost

What it does, in order (see bench/README.md):

1. drops and recreates the PostgreSQL database ``fruxon_bench``, migrates it, starts
   the provider stub (an OpenAI-compatible asyncio server in processes of its own,
   sharing one loopback port; ``/d{ms}/g{ms}/n{count}/v1`` in its base URL sets the
   time to the answer or to the first content chunk, the spacing of later chunks and
   their number) and seeds an org, a ``runner`` API key and deployed agents:
   ``local`` (``fruxon-local``, 0 ms), ``openai0`` (``openai`` provider, 0 ms stub),
   ``slow`` (1,000 ms), ``slow5`` (5,000 ms), ``stream`` and ``streamseq`` (streamed
   answers), and ``priced``/``budgeted`` (``local`` with a price; ``budgeted`` has an
   enforced day budget that is never reached);
2. for each server choice (default: ``asgi:2``, the README's production command
   ``DB_POOL_MAX_SIZE=16 gunicorn fruxon.asgi:application -k uvicorn_worker.UvicornWorker
   --workers 2``), starts it with production settings (``DEBUG`` unset, a generated Fernet
   key, ``SECURE_SSL_REDIRECT=0``, ``FRUXON_EGRESS_ALLOW=127.0.0.1``) and runs the phases:

   * ``stub``: the stub alone, so it is seen not to be the limit (once, before the servers);
   * ``seq``: sequential overhead p50/p99 on ``local`` and ``openai0``, from
     ``X-Fruxon-Overhead-Ms`` and client-side (latency minus the stub's delay);
   * ``budget``: the budget ledger's cost per execute (``budgeted`` against ``priced``);
   * ``throughput``: executions/s at 0 ms, closed loop, on ``local`` and ``openai0``;
   * ``inflight``: N closed-loop clients against the 1,000 ms stub (200, 400, 600;
     success = run ok within 2 s); ``burst``: 400 sent at once (within 2 s);
     ``inflight5``: against the 5,000 ms stub (500, 1,000, 1,500; within 6 s);
     success %, throughput, latency, overhead and 503s for each;
   * ``stream``: time to the first ``output.delta`` minus the stub's time to its first
     content chunk, p50/p99, at 1 and at 200 concurrent streams;
   * ``memory``: the RSS of the server's worker processes idle and at 1,000 in flight
     against the 5,000 ms stub, as KB per execution in flight;

3. prints a summary of every figure against issue 13's targets, and the CPU each party
   used during the phase behind each figure, so a missed figure says what limited it.

Everything sent stays on 127.0.0.1; every loop is bounded in count and time.
"""
from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import math
import os
import re
import resource
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
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024

# Issue 13's targets (2 cores, through the ``openai`` provider, header and client-side alike).
TARGETS = {"p50": 3.0, "p99": 10.0, "eps": 300.0, "inflight": 400, "burst": 400, "inflight5": 1000,
           "success": 99.9, "delta_p50": 5.0, "kb": 150.0}
PHASES = ("stub", "seq", "budget", "throughput", "inflight", "burst", "inflight5", "stream", "memory")
ALIASES = {"ramp": "inflight"}  # the phase's earlier name
RUN_OK = re.compile(rb'"status":\s*"ok"')
ERROR_CODE = re.compile(rb'"code":\s*"([A-Za-z0-9_.-]{1,40})"')
STUB_OK = re.compile(rb'"object":\s*"chat\.completion"')


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


def raise_nofile() -> int:
    """Soft RLIMIT_NOFILE = hard (1,500 connections in and as many out); children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


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


def rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as handle:
            return int(handle.read().split()[1]) * PAGE_KB
    except (OSError, IndexError, ValueError):
        return 0


def worker_pids(master: int) -> set[int]:
    """The server's worker processes: the master's process tree without the master
    (a single-process server counts itself)."""
    return (_tree(master, _all_procs()) - {master}) or {master}


def workers_rss_kb(master: int) -> int:
    return sum(rss_kb(pid) for pid in worker_pids(master))


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


def short_cpu(cores: dict[str, float] | None) -> str:
    if not cores:
        return "-"
    parts = [f"{name} {value:.2f}" for name, value in cores.items() if name != "machine busy %"]
    return ", ".join(parts) + f" (busy {cores['machine busy %']:.0f}%)"


# --------------------------------------------------------------------------- the provider stub (own processes)


def child_stub(latency_ms: float, record: bool = True) -> None:
    """``_stub MS [norecord]``: serve ``agents.engine.testing``'s OpenAI stub until stdin closes
    (bench/soak.py uses it). ``norecord`` keeps no copy of the requests (for long runs)."""
    sys.path.insert(0, str(ROOT))
    from agents.engine.testing import start_openai_stub

    base_url, server = start_openai_stub(latency_ms=latency_ms, record=record)
    print(base_url, flush=True)
    try:
        sys.stdin.read()  # the parent closes our stdin (or dies) to stop us
    finally:
        server.close()


COMPLETIONS = "/v1/chat/completions"


def stub_params(path: str) -> dict[str, float] | None:
    """``/d1000/g50/n10/v1/chat/completions`` -> ``{"d": 1000, "g": 50, "n": 10}``; None for another path.

    ``d``: ms before the answer (streamed: before the first content chunk; the role chunk and
    the headers go at once, as OpenAI sends them); ``g``: ms between later content chunks;
    ``n``: content chunks (default 4)."""
    if not path.endswith(COMPLETIONS):
        return None
    params = {"d": 0.0, "g": 0.0, "n": 4.0}
    for segment in path[: -len(COMPLETIONS)].split("/"):
        if not segment:
            continue
        if segment[0] not in params:
            return None
        try:
            params[segment[0]] = float(segment[1:])
        except ValueError:
            return None
    return params


def _http(status: int, body: bytes, reason: str = "OK") -> bytes:
    return (b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % (status, reason.encode(), len(body))) + body


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


_STREAM_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")


class StubState:
    def __init__(self) -> None:
        self.requests = self.inflight = self.peak = self.cancelled = self.streams = 0


class StubProtocol(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection of the stub; one request at a time (no pipelining).
    Waits are timers (``call_later``), not tasks: thousands in flight cost little."""

    def __init__(self, state: StubState) -> None:
        self.state = state
        self.loop = asyncio.get_event_loop()
        self.buffer = b""
        self.transport = None
        self.timer = None
        self.busy = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.busy:  # the caller went away before the answer was complete
            self.busy = False
            self.state.inflight -= 1
            self.state.cancelled += 1
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self._next()

    def _next(self) -> None:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        lines = self.buffer[:end].split(b"\r\n")
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(self.buffer) < end + 4 + length:
            return
        body = self.buffer[end + 4:end + 4 + length]
        self.buffer = self.buffer[end + 4 + length:]
        parts = lines[0].split(b" ")
        state = self.state
        state.requests += 1
        state.inflight += 1
        state.peak = max(state.peak, state.inflight)
        self.busy = True
        params = stub_params(parts[1].decode("latin-1")) if len(parts) == 3 and parts[0] == b"POST" else None
        if params is None:
            self._finish(_http(404, b'{"error": {"message": "no route"}}', "Not Found"))
            return
        try:
            payload = json.loads(body)
        except ValueError:
            payload = {}
        if not isinstance(payload, dict):
            payload = {}
        prompt_tokens = max(1, len(body) // 4)
        base = {"id": f"chatcmpl-bench-{state.requests}", "created": int(time.time()),
                "model": payload.get("model", "stub")}
        delay = params["d"] / 1000.0
        if payload.get("stream") is True:
            state.streams += 1
            pieces = [f"word{i} " for i in range(max(1, int(params["n"])))]
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(pieces),
                     "total_tokens": prompt_tokens + len(pieces)}

            def sse(choices: list, **extra) -> bytes:
                return b"data: " + json.dumps({**base, "object": "chat.completion.chunk", "choices": choices,
                                               **extra}).encode() + b"\n\n"

            def delta(content: str) -> dict:
                return {"index": 0, "delta": {"content": content}, "finish_reason": None}

            events = [(delay if i == 0 else params["g"] / 1000.0, sse([delta(piece)]))
                      for i, piece in enumerate(pieces)]
            tail = sse([{"index": 0, "delta": {}, "finish_reason": "stop"}])
            if (payload.get("stream_options") or {}).get("include_usage"):
                tail += sse([], usage=usage)
            events.append((0.0, tail + b"data: [DONE]\n\n"))
            self.transport.write(_STREAM_HEAD + _chunk(sse([{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                             "finish_reason": None}])))
            self._play(events)
            return
        question = ""
        for message in reversed(payload.get("messages") or []):
            if isinstance(message, dict) and message.get("role") == "user" and isinstance(message.get("content"), str):
                question = message["content"]
                break
        content = "stub: " + question
        completion = {**base, "object": "chat.completion",
                      "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                   "finish_reason": "stop"}],
                      "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": math.ceil(len(content) / 4),
                                "total_tokens": prompt_tokens + math.ceil(len(content) / 4)}}
        reply = _http(200, json.dumps(completion).encode())
        if delay > 0:
            self.timer = self.loop.call_later(delay, self._finish, reply)
        else:
            self._finish(reply)

    def _play(self, events: list) -> None:
        self.timer = None
        while events:
            delay, data = events[0]
            if delay > 0:
                events[0] = (0.0, data)
                self.timer = self.loop.call_later(delay, self._play, events)
                return
            events.pop(0)
            if self.transport is None:
                return
            self.transport.write(_chunk(data))
        self._finish(b"0\r\n\r\n")

    def _finish(self, data: bytes) -> None:
        self.timer = None
        if self.transport is None:
            return
        self.transport.write(data)
        self.busy = False
        self.state.inflight -= 1
        if self.buffer:
            self._next()


def child_fast_stub(port: int) -> None:
    """``_astub PORT``: the benchmark's stub, one process of several on ``PORT`` (SO_REUSEPORT).

    Prints ``ready``; each ``stats`` line on stdin answers a JSON line (requests, in flight
    now, peak in flight since the last ``stats``, cancelled, streams); stdin's end stops it."""
    raise_nofile()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def main() -> None:
        loop = asyncio.get_running_loop()
        state = StubState()
        server = await loop.create_server(lambda: StubProtocol(state), HOST, port, reuse_port=True, backlog=4096)
        done = loop.create_future()
        fd = sys.stdin.fileno()

        def on_stdin() -> None:
            data = os.read(fd, 4096)
            if not data:
                loop.remove_reader(fd)
                if not done.done():
                    done.set_result(None)
                return
            for _ in range(data.count(b"stats")):
                os.write(1, json.dumps({"pid": os.getpid(), "requests": state.requests, "inflight": state.inflight,
                                        "peak": state.peak, "cancelled": state.cancelled,
                                        "streams": state.streams}).encode() + b"\n")
                state.peak = state.inflight

        loop.add_reader(fd, on_stdin)
        os.write(1, b"ready\n")
        await done
        server.close()

    asyncio.run(main())


class Stub:
    """``procs`` processes of :func:`child_fast_stub` sharing one loopback port."""

    def __init__(self, procs: int, env: dict) -> None:
        self.port = free_port()
        self.base = f"http://{HOST}:{self.port}"
        self.procs: list[subprocess.Popen] = []
        for _ in range(max(1, procs)):
            proc = subprocess.Popen([PY, __file__, "_astub", str(self.port)], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, cwd=ROOT, env=env, start_new_session=True)
            self.procs.append(proc)
            if proc.stdout.readline().strip() != b"ready":
                self.close()
                raise SystemExit("the provider stub did not start")

    def url(self, delay_ms: float, gap_ms: float | None = None, chunks: int | None = None) -> str:
        path = f"/d{delay_ms:g}" + (f"/g{gap_ms:g}" if gap_ms is not None else "") + \
            (f"/n{chunks}" if chunks is not None else "")
        return f"{self.base}{path}/v1"

    def pids(self) -> set[int]:
        return {proc.pid for proc in self.procs}

    def stats(self) -> dict[str, int]:
        """Summed over the processes; ``peak`` is the sum of each one's peak (an upper bound)."""
        total = {"requests": 0, "inflight": 0, "peak": 0, "cancelled": 0, "streams": 0}
        for proc in self.procs:
            proc.stdin.write(b"stats\n")
            proc.stdin.flush()
            row = json.loads(proc.stdout.readline())
            for name in total:
                total[name] += row[name]
        return total

    def close(self) -> None:
        for proc in self.procs:
            try:
                proc.stdin.close()
            except OSError:
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


# --------------------------------------------------------------------------- seed (child process)


def child_seed(stub_url: str, extra: dict[str, str] | None = None) -> None:
    """``_seed URL [JSON]``: org, runner key, deployed agents; prints JSON with the key.

    ``slow`` calls the ``openai`` provider at ``URL``; ``JSON`` maps more slugs to the
    ``baseUrl`` of an ``openai`` agent like ``slow``."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fruxon.settings")
    import django

    django.setup()
    from decimal import Decimal

    from agents import services as agent_services
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

    def openai_spec(base_url: str) -> dict:
        return {"inputs": inputs,
                "steps": [{"name": "answer", "model": {"provider": "openai", "name": "gpt-4o-mini",
                                                       "baseUrl": base_url, "maxTokens": 64},
                           "systemPrompt": "You are a terse support agent.", "prompt": "{{input.question}}"}],
                "output": "{{steps.answer.output}}", "timeoutSeconds": 30}

    specs = {
        "local": {"inputs": inputs,
                  "steps": [{"name": "answer", "model": {"provider": "fruxon-local", "name": "local",
                                                         "script": [{"reply": "hello {{input.question}}"}]},
                             "prompt": "{{input.question}}"}],
                  "output": "{{steps.answer.output}}"},
        "slow": openai_spec(stub_url),
    }
    specs["priced"] = specs["budgeted"] = specs["local"]
    for slug, base_url in (extra or {}).items():
        specs[slug] = openai_spec(base_url)
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
            put_budget(actor=actor, agent=agent, period="day", amount_usd=Decimal(1000000), enforce=True,
                       alert_thresholds=[], alert_webhook="", alert_emails=[])
    print(json.dumps({"key": minted.plaintext}), flush=True)


# --------------------------------------------------------------------------- load generator (separate processes)


def build_request(port: int, key: str, agent: str, stream: bool = False) -> bytes:
    """A raw HTTP/1.1 execute of ``agent``; ``stream``: ``"stream": true`` and ``Accept: text/event-stream``."""
    payload: dict = {"input": {"question": "where is my order?"}}
    if stream:
        payload["stream"] = True
    body = json.dumps(payload).encode()
    head = (f"POST /v1/{ORG}/agents/{agent}:execute HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
            f"X-API-KEY: {key}\r\nContent-Type: application/json\r\n"
            f"Accept: {'text/event-stream' if stream else 'application/json'}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def build_stub_request(port: int, delay_ms: float = 0) -> bytes:
    """A chat completion sent to the stub itself, to see what it answers alone."""
    body = json.dumps({"model": "gpt-4o-mini", "max_tokens": 64,
                       "messages": [{"role": "system", "content": "You are a terse support agent."},
                                    {"role": "user", "content": "where is my order?"}]}).encode()
    head = (f"POST /d{delay_ms:g}/v1/chat/completions HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def _parse_head(head: bytes) -> tuple[int, dict[bytes, bytes]]:
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
    return status, headers


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes], bytes]:
    status, headers, body, _ = await _read_answer(reader)
    return status, headers, body


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes], bytes, float | None]:
    """(status, headers, body, when the first ``output.delta`` event arrived or None).

    A body without a length (nor chunks) is read to the connection's end; its headers then
    say ``connection: close``."""
    status, headers = _parse_head(await reader.readuntil(b"\r\n\r\n"))
    if b"content-length" in headers:
        length = int(headers[b"content-length"])
        return status, headers, (await reader.readexactly(length) if length else b""), None
    chunks: list[bytes] = []
    first = None
    tail = b""
    chunked = headers.get(b"transfer-encoding", b"").lower() == b"chunked"
    while True:
        if chunked:
            size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
            data = (await reader.readexactly(size + 2))[:-2]
            if size == 0:
                break
        else:
            data = await reader.read(65536)
            if not data:
                headers[b"connection"] = b"close"
                break
        if first is None and b"output.delta" in tail + data:
            first = time.monotonic()
        tail = data[-16:]
        chunks.append(data)
    return status, headers, b"".join(chunks), first


def _row(started: float, status: int, headers: dict, body: bytes, first: float | None, ok_marker,
         stream: bool) -> tuple:
    """(started, ended, status, overhead ms, ok, error, ms to the first output.delta)."""
    ended = time.monotonic()
    overhead = headers.get(b"x-fruxon-overhead-ms")
    error = ""
    if status != 200:  # the API's error code says which 503 it is (overloaded, database unavailable...)
        code = ERROR_CODE.search(body)
        ok, error = False, f"HTTP {status}" + (f" {code.group(1).decode()}" if code else "")
    elif not stream:
        ok = ok_marker.search(body) is not None
        error = "" if ok else "HTTP 200, run not ok"
    else:  # the run's status is in run.completed's data (a step.completed says "status" too)
        end = body.find(b"run.completed")
        ok = False
        if not headers.get(b"content-type", b"").startswith(b"text/event-stream"):
            error = "not a stream"
        elif end < 0:
            error = "run.failed" if b"run.failed" in body else "no run.completed"
        elif ok_marker.search(body, end) is None:
            error = "run.completed, run not ok"
        elif first is None:
            error = "no output.delta"
        else:
            ok = True
    try:
        overhead_ms = float(overhead) if overhead else None
    except ValueError:
        overhead_ms = None
    return (started, ended, status, overhead_ms, ok, error,
            (first - started) * 1000.0 if first is not None else None)


async def _client(request: bytes, port: int, delay: float, stop_at: float, timeout: float, out: list,
                  ok_marker=RUN_OK, stream: bool = False) -> None:
    """One closed-loop client: send, wait for the whole answer, send again, until ``stop_at``.
    After a 503 it waits its ``Retry-After`` (at most 1 s) as a well-behaved client does."""
    await asyncio.sleep(delay)
    reader = writer = None
    while time.monotonic() < stop_at:
        started = time.monotonic()
        try:
            if writer is None:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
            writer.write(request)
            status, headers, body, first = await asyncio.wait_for(_read_answer(reader), timeout)
        except Exception as exc:  # noqa: BLE001  (timeout, reset, refused: a failed execution)
            out.append((started, time.monotonic(), 0, None, False, type(exc).__name__, None))
            if writer is not None:
                writer.close()
            reader = writer = None
            await asyncio.sleep(0.05)
            continue
        out.append(_row(started, status, headers, body, first, ok_marker, stream))
        if headers.get(b"connection", b"").lower() == b"close":
            writer.close()
            reader = writer = None
        if status == 503:
            try:
                wait = float(headers.get(b"retry-after", b"1"))
            except ValueError:
                wait = 1.0
            await asyncio.sleep(max(0.0, min(1.0, wait, stop_at - time.monotonic())))
    if writer is not None:
        writer.close()


async def _oneshot(request: bytes, port: int, timeout: float, out: list, ok_marker=RUN_OK,
                   stream: bool = False) -> None:
    """One request on a connection of its own, opened now (part of a burst)."""
    started = time.monotonic()
    writer = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
        writer.write(request)
        status, headers, body, first = await asyncio.wait_for(_read_answer(reader),
                                                              max(0.1, timeout - (time.monotonic() - started)))
        out.append(_row(started, status, headers, body, first, ok_marker, stream))
    except Exception as exc:  # noqa: BLE001  (timeout, reset, refused: a failed execution)
        out.append((started, time.monotonic(), 0, None, False, type(exc).__name__, None))
    finally:
        if writer is not None:
            writer.close()


def load_process(request: bytes, port: int, clients: int, start_at: float, stop_at: float, timeout: float,
                 spread: float, queue, ok_marker=RUN_OK, stream: bool = False, burst: bool = False) -> None:
    raise_nofile()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def main() -> list:
        out: list = []
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        if burst:
            await asyncio.gather(*[_oneshot(request, port, timeout, out, ok_marker, stream) for _ in range(clients)])
        else:
            await asyncio.gather(*[_client(request, port, spread * i / max(1, clients), stop_at, timeout, out,
                                           ok_marker, stream) for i in range(clients)])
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
    ok_latency: list[float] = field(default_factory=list)
    overhead: list[float] = field(default_factory=list)
    first_delta: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    samples: list[dict] = field(default_factory=list)
    span: float = 0.0  # a burst: from the first send to the last answer, s

    @property
    def total(self) -> int:
        return self.ok + self.failed + self.late

    @property
    def success(self) -> float:
        return 100.0 * self.ok / self.total if self.total else 0.0

    @property
    def n503(self) -> int:
        return sum(count for label, count in self.errors.items() if label.startswith("HTTP 503"))


def run_load(*, request: bytes, port: int, clients: int, procs: int, warmup: float, seconds: float,
             timeout: float, late_after: float | None, meter: CpuMeter, load_pids: list, ok_marker=RUN_OK,
             stream: bool = False, burst: bool = False, sampler=None, conns_per_proc: int = 500) -> LoadResult:
    """Closed loop: ``clients`` connections over ``procs`` processes (more when a process would hold
    over ``conns_per_proc``); counts what starts in the window. ``burst``: each client sends one
    request on a new connection, all at once; everything is counted. ``sampler()`` is called about
    once a second in the window; its answers are ``result.samples``."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = max(1, min(clients, max(procs, math.ceil(clients / max(1, conns_per_proc)))))
    start_at = time.monotonic() + 1.5 + 0.1 * procs  # time for the spawned processes to import
    window = (start_at + warmup, start_at + warmup + seconds)
    if burst:
        window = (start_at, start_at + timeout)
    spread = min(1.0, warmup / 2)  # open connections over this long, not all at once
    workers = []
    for index in range(procs):
        share = clients // procs + (1 if index < clients % procs else 0)
        proc = ctx.Process(target=load_process,
                           args=(request, port, share, start_at, window[1], timeout, spread, queue, ok_marker,
                                 stream, burst), daemon=True)
        proc.start()
        workers.append(proc)
    load_pids[:] = [proc.pid for proc in workers]
    time.sleep(max(0.0, window[0] - time.monotonic()))
    meter.start()
    samples = []
    measure_until = window[1] if not burst else start_at + min(timeout, (late_after or 2000.0) / 1000.0 + 0.5)
    while True:
        left = measure_until - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(1.0, left))
        if sampler is not None and measure_until - time.monotonic() > 0.2:
            samples.append(sampler())
    cpu = meter.stop()
    rows = []
    for _ in workers:
        rows.extend(queue.get(timeout=timeout + 60))
    for proc in workers:
        proc.join(timeout=10)
    load_pids[:] = []

    result = LoadResult(clients=clients, seconds=seconds, cpu=cpu, samples=samples)
    done_in_window = 0
    for started, ended, status, overhead, ok, error, first in rows:
        if window[0] <= ended <= window[1] and ok:
            done_in_window += 1
        if not burst and not (window[0] <= started <= window[1]):
            continue
        latency = (ended - started) * 1000.0
        if ok and overhead is not None:
            result.overhead.append(overhead)
        if ok and first is not None:
            result.first_delta.append(first)
        result.latency.append(latency)
        if not ok:
            result.failed += 1
            label = error or f"HTTP {status}"
            result.errors[label] = result.errors.get(label, 0) + 1
        elif late_after is not None and latency > late_after:
            result.late += 1
        else:
            result.ok += 1
        if ok:
            result.ok_latency.append(latency)
    if burst and rows:
        result.span = max(row[1] for row in rows) - min(row[0] for row in rows)
        result.eps = result.ok / result.span if result.span else 0.0
    else:
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
                             check=False, capture_output=True, text=True, timeout=seconds + 30).stdout
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
    """``asgi[:W]``, ``gthread[:W[:T]]`` or ``uvicorn[:W]`` -> (label, argv tail, description)."""
    kind, *nums = text.split(":")
    if kind == "asgi":
        # Exactly the README's production command (gunicorn reads ./gunicorn.conf.py; the bind is added).
        workers = int(nums[0]) if nums else 2
        argv = [str(BIN / "gunicorn"), "fruxon.asgi:application", "-k", "uvicorn_worker.UvicornWorker",
                "--workers", str(workers)]
        return (f"asgi {workers}w", argv,
                f"gunicorn fruxon.asgi:application -k uvicorn_worker.UvicornWorker --workers {workers}")
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
    raise SystemExit(f"unknown server {text!r}: use asgi[:W], gthread[:W[:T]] or uvicorn[:W]")


def start_server(argv: list[str], env: dict, port: int, **popen) -> subprocess.Popen:
    """Start the server on ``HOST:port`` and wait until ``/healthz`` answers; ``popen``: e.g. ``stdout=`` a log file."""
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
            conn = http.client.HTTPConnection(HOST, port, timeout=5)
            conn.request("GET", "/healthz")
            status = conn.getresponse().status
            conn.close()
        except OSError:
            time.sleep(0.2)
            continue
        if status != 200:
            time.sleep(0.2)
            continue
        time.sleep(2.0)  # the other workers may still be importing Django
        return proc
    stop_server(proc)
    raise SystemExit("server did not start within 60 s")


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM to the server (a gunicorn master stops its workers itself), then SIGKILL to its group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of its process group
    except ProcessLookupError:
        pass
    proc.wait()


def warm(port: int, key: str, agents: list[tuple[str, bool]], calls: int = 10, conns: int = 8) -> None:
    """``calls`` executes of each (agent, streamed) on each of ``conns`` new connections, in threads
    (so every worker process gets some): before the idle RSS is read."""
    from concurrent.futures import ThreadPoolExecutor

    def one(_):
        conn = http.client.HTTPConnection(HOST, port, timeout=30)
        for _ in range(calls):
            for agent, stream in agents:
                body = {"input": {"question": "where is my order?"}}
                if stream:
                    body["stream"] = True
                try:
                    conn.request("POST", f"/v1/{ORG}/agents/{agent}:execute", json.dumps(body),
                                 {"X-API-KEY": key, "Content-Type": "application/json"})
                    conn.getresponse().read()
                except (OSError, http.client.HTTPException):
                    conn.close()  # reconnects on the next request
        conn.close()

    with ThreadPoolExecutor(conns) as pool:
        list(pool.map(one, range(conns)))


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


@dataclass
class Figure:
    label: str
    value: str
    target: str
    met: bool | None  # None: no target
    cpu: dict | None = None


def level_line(level: int, result: LoadResult, delay_ms: float) -> str:
    effective = result.eps * delay_ms / 1000.0
    client50 = pct(result.ok_latency, 0.5)
    client99 = pct(result.ok_latency, 0.99)
    return (f"success {result.success:7.3f}% of {result.total:5d} (late {result.late}, failed {result.failed}"
            + (f" {result.errors}" if result.errors else "") + f"); 503s {result.n503}; "
            f"{result.eps:6.1f} exec/s (= {effective:.0f} held at {delay_ms:.0f} ms); "
            f"latency p50 {fmt(pct(result.latency, 0.5), 0)} p99 {fmt(pct(result.latency, 0.99), 0)} ms; "
            f"overhead p50 {fmt(pct(result.overhead, 0.5))} p99 {fmt(pct(result.overhead, 0.99))} ms, client-side "
            f"p50 {fmt(None if client50 is None else client50 - delay_ms)} "
            f"p99 {fmt(None if client99 is None else client99 - delay_ms)} ms")


def sample_line(result: LoadResult) -> str:
    if not result.samples:
        return ""
    held = pct([s["stub"] for s in result.samples], 0.5)
    rss = max(s["rss_kb"] for s in result.samples)
    line = (f"at the stub: {held:.0f} in flight (median of {len(result.samples)} samples); "
            f"workers' RSS max {rss / 1024:.0f} MB")
    pg = [s["pg"] for s in result.samples if s.get("pg")]
    if pg:
        line += (f"; PostgreSQL connections max {max(row[0] for row in pg)} of {pg[0][2]} "
                 f"({max(row[1] for row in pg)} to the bench database)")
    return line


class Bench:
    """One server's run of the phases; ``figures`` is its part of the summary."""

    def __init__(self, args, label: str, port: int, key: str, proc: subprocess.Popen, stub: Stub, db_url: str,
                 env: dict, phases: set[str]):
        self.args, self.label, self.port, self.key, self.proc = args, label, port, key, proc
        self.stub, self.db_url, self.env, self.phases = stub, db_url, env, phases
        self.load_pids: list[int] = []
        self.meter = CpuMeter({
            "server": lambda procs: _tree(proc.pid, procs),
            "postgres": lambda procs: _postgres_pids(),
            "load gen": lambda procs: set(self.load_pids),
            "stub": lambda procs: stub.pids(),
        })
        self.figures: list[Figure] = []
        self.idle_kb: int | None = None
        self.memory_samples: list[dict] | None = None
        self.memory_cpu: dict | None = None

    def quiet(self) -> None:
        log("  " + wait_quiet(self.args.quiet_wait))

    def drain(self, limit: float = 20.0) -> None:
        """Wait until the stub holds no request (the previous phase's calls are over)."""
        deadline = time.monotonic() + limit
        while self.stub.stats()["inflight"] and time.monotonic() < deadline:
            time.sleep(0.25)

    def sample(self) -> dict:
        return {"rss_kb": workers_rss_kb(self.proc.pid), "stub": self.stub.stats()["inflight"],
                "pg": self.pg_connections()}

    def pg_connections(self) -> tuple[int, int, int] | None:
        """(connections to the whole PostgreSQL server, to the bench database, max_connections): the
        server is shared, and a pool that cannot connect answers 503."""
        import psycopg

        try:
            if getattr(self, "_pg", None) is None:
                self._pg = psycopg.connect(self.db_url, autocommit=True)
            return self._pg.execute("SELECT count(*), count(*) FILTER (WHERE datname = current_database()), "
                                    "current_setting('max_connections')::int FROM pg_stat_activity "
                                    "WHERE backend_type = 'client backend'").fetchone()
        except psycopg.Error:
            self._pg = None
            return None

    def load(self, agent: str, clients: int, *, seconds: float, warmup: float | None = None, stream: bool = False,
             timeout: float = 30.0, late_after: float | None = None, burst: bool = False, sampler=None,
             profile: str | None = None) -> LoadResult:
        args = self.args
        warmup = args.warmup if warmup is None else warmup
        spies = start_profiles(args.profile_dir, profile, self.proc.pid, warmup + 1.5, seconds) if profile else []
        result = run_load(request=build_request(self.port, self.key, agent, stream=stream), port=self.port,
                          clients=clients, procs=args.load_procs, warmup=warmup, seconds=seconds, timeout=timeout,
                          late_after=late_after, meter=self.meter, load_pids=self.load_pids, stream=stream,
                          burst=burst, sampler=sampler, conns_per_proc=args.conns_per_proc)
        finish_profiles(spies)
        return result

    # -- phases

    def idle_rss(self) -> None:
        agents = [("local", False), ("openai0", False)]
        if "stream" in self.phases:
            agents.append(("streamseq", True))
        warm(self.port, self.key, agents)
        time.sleep(1.0)
        self.idle_kb = workers_rss_kb(self.proc.pid)
        pids = sorted(worker_pids(self.proc.pid))
        log(f"idle after a warm-up ({len(agents)} agents x 80 executes over 8 connections): workers' RSS "
            f"{self.idle_kb / 1024:.1f} MB ({len(pids)} processes: "
            + ", ".join(f"{rss_kb(pid) / 1024:.1f}" for pid in pids) + f" MB); master {rss_kb(self.proc.pid) / 1024:.1f} MB")

    def seq(self) -> None:
        args = self.args
        self.quiet()
        self.meter.start()
        measured = sequential(self.port, self.key, args.seq_warmup, args.seq, agents=("local", "openai0"))
        cpu = self.meter.stop()
        for agent, name in (("local", "fruxon-local"), ("openai0", "openai, 0 ms stub")):
            overheads, latencies = measured[agent]
            header = (pct(overheads, 0.50), pct(overheads, 0.99))
            client = (pct(latencies, 0.50), pct(latencies, 0.99))  # minus the stub's delay: 0 ms
            log(f"sequential, {args.seq} calls on '{agent}' ({name}) after {args.seq_warmup} warm-up, interleaved: "
                f"overhead (header) p50 {fmt(header[0])} ms, p99 {fmt(header[1])} ms, max {fmt(max(overheads))} ms; "
                f"client-side (latency - 0 ms) p50 {fmt(client[0])} ms, p99 {fmt(client[1])} ms")
            for index, (which, limit) in enumerate((("p50", TARGETS["p50"]), ("p99", TARGETS["p99"]))):
                self.figures.append(Figure(f"overhead {which}, {name} (header / client)",
                                           f"{fmt(header[index])} / {fmt(client[index])} ms", f"<= {limit:g} ms",
                                           header[index] <= limit and client[index] <= limit, cpu))
        log("  " + fmt_cpu(cpu))

    def budget(self) -> None:
        args = self.args
        self.quiet()
        runs_before, _ = budget_spent(self.db_url, self.env)
        measured = sequential(self.port, self.key, max(1, args.seq_warmup // 2), args.budget_calls,
                              agents=("priced", "budgeted"))
        runs_after, spent_usd = budget_spent(self.db_url, self.env)
        (free, free_lat), (paid, paid_lat) = measured["priced"], measured["budgeted"]
        diff50, diff99 = pct(paid, 0.50) - pct(free, 0.50), pct(paid, 0.99) - pct(free, 0.99)
        log(f"budget ledger, {args.budget_calls} calls each on 'priced' (no budget) and 'budgeted' "
            f"(enforced; {ledger_label(self.env)}), interleaved: overhead p50 {fmt(pct(free, 0.5))} vs "
            f"{fmt(pct(paid, 0.5))} ms, p99 {fmt(pct(free, 0.99))} vs {fmt(pct(paid, 0.99))} ms; "
            f"client-seen p50 {fmt(pct(free_lat, 0.5))} vs {fmt(pct(paid_lat, 0.5))} ms")
        log(f"  the ledger's cost per execute (one model call: reserve + settle): p50 {diff50:+.2f} ms, "
            f"p99 {diff99:+.2f} ms; 'budgeted' ran {runs_after - runs_before} times; its ledger "
            f"says ${spent_usd:.6f} spent")
        self.figures.append(Figure("budget ledger's cost per execute p50 / p99", f"{diff50:+.2f} / {diff99:+.2f} ms",
                                   "-", None))

    def throughput(self) -> None:
        args = self.args
        for agent, name in (("local", "fruxon-local"), ("openai0", "openai, 0 ms stub")):
            self.quiet()
            result = self.load(agent, args.clients, seconds=args.seconds, profile=f"{self.label}-eps-{agent}")
            log(f"throughput at 0 ms on '{agent}' ({name}), {args.clients} clients, {args.seconds:g} s: "
                f"{result.eps:.0f} executions/s, success {result.success:.2f}% of {result.total}"
                + (f" (failures: {result.errors})" if result.errors else "")
                + f"; latency p50 {fmt(pct(result.latency, 0.5))} ms, p99 {fmt(pct(result.latency, 0.99))} ms; "
                f"overhead p50 {fmt(pct(result.overhead, 0.5))} ms, p99 {fmt(pct(result.overhead, 0.99))} ms")
            log("  " + fmt_cpu(result.cpu))
            self.figures.append(Figure(f"executions/s at 0 ms, {name}", f"{result.eps:.0f}",
                                       f">= {TARGETS['eps']:g}", result.eps >= TARGETS["eps"], result.cpu))
            if not args.no_wrk and shutil.which("wrk") and agent == "local":
                wait_quiet(args.quiet_wait)
                wrk = run_wrk(self.port, self.key, args.clients, int(args.seconds))
                if wrk:
                    log(f"  wrk cross-check ({args.clients} connections, {int(args.seconds)} s): {wrk}")

    def inflight(self, agent: str, levels: list[int], delay_ms: float, seconds: float, target: int,
                 name: str) -> None:
        args = self.args
        late_ms = delay_ms + 1000.0
        warmup = max(args.warmup, delay_ms / 1000.0 + 1.0)
        log(f"in flight against the {delay_ms:.0f} ms stub ('{agent}'), closed loop; success = HTTP 200, run ok, "
            f"answered within {late_ms / 1000:g} s; {seconds:g} s per level after {warmup:g} s warm-up")
        held, texts, cpus, last_cpu = 0, [], None, None
        for level in levels:
            self.quiet()
            self.drain()
            result = self.load(agent, level, seconds=seconds, warmup=warmup, timeout=late_ms / 1000.0 + 10,
                               late_after=late_ms, sampler=self.sample, profile=f"{self.label}-{name}-{level}")
            log(f"  {level:5d} clients: " + level_line(level, result, delay_ms))
            log("        " + sample_line(result))
            log("        " + fmt_cpu(result.cpu))
            texts.append(f"{level}: {result.success:.2f}%")
            if result.success >= TARGETS["success"] and level > held:
                held, cpus = level, result.cpu
            if "memory" in self.phases and agent == "slow5" and level == args.memory_level:
                self.memory_samples, self.memory_cpu = result.samples, result.cpu
            last_cpu = result.cpu
        self.figures.append(Figure(f"in flight at {delay_ms / 1000:g} s, closed loop: most held at >= "
                                   f"{TARGETS['success']:g}% ({', '.join(texts)})", str(held), f">= {target}",
                                   held >= target, last_cpu if held < target else cpus))

    def burst(self) -> None:
        args = self.args
        late_ms = args.latency_ms + 1000.0
        self.quiet()
        self.drain()
        result = self.load("slow", args.burst, seconds=0, warmup=0, timeout=late_ms / 1000.0 + 10,
                           late_after=late_ms, burst=True)
        log(f"burst: {args.burst} executes of 'slow' ({args.latency_ms:.0f} ms stub) sent at once, each on a new "
            f"connection; success = run ok within {late_ms / 1000:g} s: {result.success:.2f}% (late {result.late}, "
            f"failed {result.failed}" + (f" {result.errors}" if result.errors else "") + f"); 503s {result.n503}; "
            f"all answered within {result.span:.2f} s; latency p50 {fmt(pct(result.latency, 0.5), 0)} "
            f"p99 {fmt(pct(result.latency, 0.99), 0)} ms; overhead p50 {fmt(pct(result.overhead, 0.5))} "
            f"p99 {fmt(pct(result.overhead, 0.99))} ms")
        log("  " + fmt_cpu(result.cpu))
        self.figures.append(Figure(f"burst of {args.burst} at {args.latency_ms / 1000:g} s: success within "
                                   f"{late_ms / 1000:g} s (503s {result.n503})", f"{result.success:.2f}%",
                                   f">= {TARGETS['success']:g}% of >= {TARGETS['burst']}",
                                   result.success >= TARGETS["success"] and args.burst >= TARGETS["burst"], result.cpu))

    def stream(self) -> None:
        args = self.args
        ttfc = args.stream_ttfc_ms
        log(f"streaming (\"stream\": true): the stub sends its first content chunk {ttfc:g} ms after the request, "
            f"then {args.stream_chunks - 1} more {args.stream_seq_gap_ms:g} ms apart ('streamseq', 1 stream) or "
            f"{args.stream_gap_ms:g} ms apart ('stream', {args.stream_clients} streams); first-delta overhead = "
            f"time to the first output.delta event at the client - {ttfc:g} ms")
        for agent, clients in (("streamseq", 1), ("stream", args.stream_clients)):
            self.quiet()
            self.drain()
            before = self.stub.stats()
            result = self.load(agent, clients, seconds=args.stream_seconds, stream=True,
                               profile=f"{self.label}-stream-{clients}")
            after = self.stub.stats()
            deltas = [value - ttfc for value in result.first_delta]
            p50, p99 = pct(deltas, 0.5), pct(deltas, 0.99)
            log(f"  {clients:4d} concurrent: success {result.success:.2f}% of {result.total}"
                + (f" (failures: {result.errors})" if result.errors else "")
                + f"; {result.eps:.1f} streams/s; first-delta overhead p50 {fmt(p50)} ms, p99 {fmt(p99)} ms "
                f"(n={len(deltas)}); whole stream p50 {fmt(pct(result.latency, 0.5), 0)} "
                f"p99 {fmt(pct(result.latency, 0.99), 0)} ms; the stub streamed {after['streams'] - before['streams']} "
                f"times, {after['cancelled'] - before['cancelled']} closed early")
            log("        " + fmt_cpu(result.cpu))
            self.figures.append(Figure(f"first-delta overhead p50 / p99, {clients} stream{'s' if clients > 1 else ''}",
                                       f"{fmt(p50)} / {fmt(p99)} ms", f"p50 <= {TARGETS['delta_p50']:g} ms",
                                       p50 is not None and p50 <= TARGETS["delta_p50"], result.cpu))

    def memory(self) -> None:
        args = self.args
        if self.memory_samples is None:
            self.quiet()
            self.drain()
            delay = args.latency5_ms
            result = self.load("slow5", args.memory_level, seconds=args.memory_seconds,
                               warmup=max(args.warmup, delay / 1000.0 + 1.0), timeout=delay / 1000.0 + 11,
                               late_after=delay + 1000.0, sampler=self.sample)
            log(f"memory: {args.memory_level} clients against the {delay:.0f} ms stub: " + level_line(
                args.memory_level, result, delay))
            self.memory_samples, self.memory_cpu = result.samples, result.cpu
        samples = [s for s in self.memory_samples if s["stub"] > 0]
        if not samples or self.idle_kb is None:
            log("memory: no sample with executions in flight")
            self.figures.append(Figure("memory per execution in flight", "-", f"<= {TARGETS['kb']:g} KB", False,
                                       self.memory_cpu))
            return
        peak = max(s["rss_kb"] for s in samples)
        held = pct([s["stub"] for s in samples], 0.5)
        per = (peak - self.idle_kb) / held
        log(f"memory: workers' RSS idle {self.idle_kb / 1024:.1f} MB, at load max {peak / 1024:.1f} MB with "
            f"{held:.0f} executions in flight at the stub (median of {len(samples)} samples): "
            f"({peak / 1024:.1f} - {self.idle_kb / 1024:.1f}) MB / {held:.0f} = {per:.1f} KB per execution in flight "
            f"({(peak - self.idle_kb) / args.memory_level:.1f} KB per client of {args.memory_level})")
        self.figures.append(Figure(f"memory per execution in flight ({held:.0f} at {args.latency5_ms / 1000:g} s; "
                                   f"RSS {self.idle_kb / 1024:.0f} -> {peak / 1024:.0f} MB)", f"{per:.1f} KB",
                                   f"<= {TARGETS['kb']:g} KB", per <= TARGETS["kb"], self.memory_cpu))

    def run(self) -> None:
        args = self.args
        steps = [
            ("idle", self.idle_rss),
            ("seq", self.seq),
            ("budget", self.budget),
            ("throughput", self.throughput),
            ("inflight", lambda: self.inflight("slow", args.ramp, args.latency_ms, args.ramp_seconds,
                                               TARGETS["inflight"], "inflight")),
            ("burst", self.burst),
            ("inflight5", lambda: self.inflight("slow5", args.ramp5, args.latency5_ms, args.ramp5_seconds,
                                                TARGETS["inflight5"], "inflight5")),
            ("stream", self.stream),
            ("memory", self.memory),
        ]
        for name, step in steps:
            wanted = bool(self.phases & {"memory", "inflight5"}) if name == "idle" else name in self.phases
            if not wanted:
                continue
            try:
                step()
            except (Exception, SystemExit) as exc:  # noqa: BLE001  (one phase's failure ends only that phase)
                log(f"phase {name} failed: {type(exc).__name__}: {exc}")
                self.figures.append(Figure(f"phase {name}", "failed", "-", False))


def stub_alone(stub: Stub, args) -> Figure:
    load_pids: list[int] = []
    meter = CpuMeter({"load gen": lambda procs: set(load_pids), "stub": lambda procs: stub.pids()})
    log("  " + wait_quiet(args.quiet_wait))
    seconds = min(args.seconds, 5.0)
    result = run_load(request=build_stub_request(stub.port), port=stub.port, clients=args.clients,
                      procs=args.load_procs, warmup=1.0, seconds=seconds, timeout=10, late_after=None, meter=meter,
                      load_pids=load_pids, ok_marker=STUB_OK)
    log(f"the stub alone ({len(stub.procs)} process(es)), 0 ms, {args.clients} clients, {seconds:g} s: "
        f"{result.eps:.0f} requests/s, success {result.success:.2f}%; latency p50 {fmt(pct(result.latency, 0.5))} ms, "
        f"p99 {fmt(pct(result.latency, 0.99))} ms")
    log("  " + fmt_cpu(result.cpu))
    figure = Figure("the stub alone, 0 ms (requests/s)", f"{result.eps:.0f}", "-", None, result.cpu)
    held = max([0, *args.ramp, *args.ramp5])
    if held:  # the stub and the load generator hold the most connections the phases open, at their rate
        log("  " + wait_quiet(args.quiet_wait))
        late_ms = args.latency_ms + 1000.0
        result = run_load(request=build_stub_request(stub.port, args.latency_ms), port=stub.port, clients=held,
                          procs=args.load_procs, warmup=args.warmup, seconds=min(args.seconds, 5.0),
                          timeout=late_ms / 1000.0 + 10, late_after=late_ms, meter=meter, load_pids=load_pids,
                          ok_marker=STUB_OK, conns_per_proc=args.conns_per_proc)
        log(f"the stub alone, {held} clients at {args.latency_ms:g} ms: success {result.success:.2f}% within "
            f"{late_ms / 1000:g} s of {result.total}, {result.eps:.0f} requests/s (= {result.eps * args.latency_ms / 1000:.0f}"
            f" held); latency p50 {fmt(pct(result.latency, 0.5), 0)} p99 {fmt(pct(result.latency, 0.99), 0)} ms")
        log("  " + fmt_cpu(result.cpu))
        figure.value += f"; {held} in flight at {args.latency_ms:g} ms: {result.success:.2f}%"
    return figure


def print_summary(results: list[tuple[str, list[Figure]]], phases: set[str], args,
                  stub_figure: Figure | None = None) -> None:
    log("\n== summary against issue 13's targets" + ("" if phases == set(PHASES) else f" (phases run: {args.phases})"))
    if stub_figure is not None:
        log(f"{stub_figure.label}: {stub_figure.value} ({short_cpu(stub_figure.cpu)})")
    labels: list[tuple[str, str]] = []
    cells: dict[tuple[str, str], Figure] = {}
    for server, figures in results:
        for figure in figures:
            if (figure.label, figure.target) not in labels:
                labels.append((figure.label, figure.target))
            cells[(server, figure.label)] = figure
    servers = [server for server, _ in results]
    width = max([len(label) for label, _ in labels] + [6])
    col = max([len(server) for server in servers] + [22])

    def cell(figure: Figure | None) -> str:
        if figure is None:
            return "-"
        return figure.value + ("" if figure.met is None else ("  ok" if figure.met else "  MISS"))

    if not labels:
        return
    log(f"{'figure':<{width}}  {'target':<24}" + "".join(f"  {server:<{col}}" for server in servers))
    for label, target in labels:
        log(f"{label:<{width}}  {target:<24}" + "".join(f"  {cell(cells.get((server, label))):<{col}}"
                                                       for server in servers))
    log("\nCPU cores used per party during the phase behind each figure (server, postgres, load gen, stub, other):")
    for server, figures in results:
        for figure in figures:
            if figure.cpu:
                log(f"  {server:<14} {figure.label[:60]:<60}  {short_cpu(figure.cpu)}"
                    + ("  <- missed" if figure.met is False else ""))
    misses = [(server, figure.label) for server, figures in results for figure in figures if figure.met is False]
    log("verdict: " + ("all targets met" if not misses else
                       f"{len(misses)} missed: " + "; ".join(f"{server}: {label}" for server, label in misses)))


def log_digest(text: str, top: int = 5) -> list[tuple[str, int]]:
    """The most frequent lines of a server log other than gunicorn's INFO and stop lines, without
    their timestamp and pid (a missed figure may say why there: 503s, pool time-outs...)."""
    counts: dict[str, int] = {}
    for line in text.splitlines():
        if not line.strip() or "[INFO]" in line or "was sent SIGTERM" in line:
            continue
        line = re.sub(r"^\[[^]]*\] \[\d+\] ", "", line)[:160]
        counts[line] = counts.get(line, 0) + 1
    return sorted(counts.items(), key=lambda item: -item[1])[:top]


def ints(text: str) -> list[int]:
    return [int(item) for item in text.split(",") if item]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default="asgi:2",
                        help="comma-separated: asgi[:WORKERS] (the README's production command), "
                             "gthread[:WORKERS[:THREADS]], uvicorn[:WORKERS] (default %(default)s)")
    parser.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432", help="PostgreSQL server URL")
    parser.add_argument("--db", default="fruxon_bench", help="database name (dropped and recreated)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15",
                        help="REDIS_URL for the server (key cache, Celery); '' for none (default %(default)s)")
    parser.add_argument("--db-pool", type=int, default=16,
                        help="DB_POOL_MAX_SIZE per server process; 0 = persistent connections (DB_CONN_MAX_AGE=60) "
                             "(default %(default)s)")
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for the server (repeatable)")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help=f"comma-separated, run in this order: {', '.join(PHASES)} (default: all; "
                             "'ramp' is 'inflight')")
    parser.add_argument("--seq", type=int, default=500, help="sequential calls per agent measured (after --seq-warmup)")
    parser.add_argument("--seq-warmup", type=int, default=200)
    parser.add_argument("--budget-calls", type=int, default=500,
                        help="sequential calls per agent in the budget phase (after --seq-warmup / 2)")
    parser.add_argument("--clients", type=int, default=32, help="closed-loop clients for the 0 ms throughput")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds of each 0 ms throughput")
    parser.add_argument("--warmup", type=float, default=3.0,
                        help="unmeasured seconds before each load phase (at least the stub's delay + 1 s)")
    parser.add_argument("--load-procs", type=int, default=1, help="load generator processes, at least "
                        "(default %(default)s)")
    parser.add_argument("--conns-per-proc", type=int, default=500,
                        help="more load processes when one would hold more connections (default %(default)s)")
    parser.add_argument("--stub-procs", type=int, default=1, help="provider stub processes (default %(default)s)")
    parser.add_argument("--latency-ms", type=float, default=1000.0, help="the 'slow' stub's delay")
    parser.add_argument("--ramp", type=ints, default=[200, 400, 600], help="in-flight levels against 'slow'")
    parser.add_argument("--ramp-seconds", type=float, default=15.0)
    parser.add_argument("--burst", type=int, default=400, help="executes of 'slow' sent at once")
    parser.add_argument("--latency5-ms", type=float, default=5000.0, help="the 'slow5' stub's delay")
    parser.add_argument("--ramp5", type=ints, default=[500, 1000, 1500], help="in-flight levels against 'slow5'")
    parser.add_argument("--ramp5-seconds", type=float, default=20.0)
    parser.add_argument("--memory-level", type=int, default=1000,
                        help="executions in flight against 'slow5' for the memory figure (default %(default)s)")
    parser.add_argument("--memory-seconds", type=float, default=15.0,
                        help="measured seconds when the memory phase runs its own level")
    parser.add_argument("--stream-clients", type=int, default=200, help="concurrent streams (and 1)")
    parser.add_argument("--stream-seconds", type=float, default=15.0, help="measured seconds of each stream level")
    parser.add_argument("--stream-ttfc-ms", type=float, default=200.0, help="the stub's time to its first content chunk")
    parser.add_argument("--stream-chunks", type=int, default=10, help="content chunks per streamed answer")
    parser.add_argument("--stream-gap-ms", type=float, default=200.0,
                        help="spacing of the chunks at --stream-clients streams")
    parser.add_argument("--stream-seq-gap-ms", type=float, default=10.0, help="spacing of the chunks at 1 stream")
    parser.add_argument("--no-wrk", action="store_true", help="skip the wrk cross-check")
    parser.add_argument("--profile-dir", help="py-spy the server workers (CPU, --gil) during each load phase; "
                                              "collapsed stacks and a summary go here")
    parser.add_argument("--quiet-wait", type=float, default=30.0,
                        help="before each phase, wait up to this long for other work on the machine to stop")
    args = parser.parse_args(argv)

    servers = [parse_server(item) for item in args.servers.split(",") if item]
    phases = {ALIASES.get(item, item) for item in args.phases.split(",") if item}
    if not phases or phases - set(PHASES):
        raise SystemExit(f"unknown phase(s) {sorted(phases - set(PHASES))}: use {', '.join(PHASES)}")
    nofile = raise_nofile()
    db_url = f"{args.pg.rstrip('/')}/{args.db}"
    env = bench_env(args, db_url)
    if args.redis_url:
        import redis

        redis.Redis.from_url(args.redis_url).flushdb()

    log(f"== Fruxon execute benchmark  ({os.cpu_count()} cores, Python {sys.version.split()[0]}, "
        f"RLIMIT_NOFILE {nofile})")
    log(f"database {db_url} (recreated), redis {args.redis_url or 'none (locmem cache)'}, "
        + (f"DB_POOL_MAX_SIZE={args.db_pool} per server process" if args.db_pool
           else "persistent connections (one per server thread)"))
    recreate_database(f"{args.pg.rstrip('/')}/postgres", args.db)
    subprocess.run([PY, "manage.py", "migrate", "--verbosity", "0"], cwd=ROOT, env=env, check=True)
    sql(db_url, "VACUUM ANALYZE")

    stub = Stub(args.stub_procs, env)
    logdir = Path(tempfile.mkdtemp(prefix="fruxon_bench_"))
    results: list[tuple[str, list[Figure]]] = []
    stub_figure = None
    try:
        agents = {"openai0": stub.url(0), "slow5": stub.url(args.latency5_ms),
                  "stream": stub.url(args.stream_ttfc_ms, args.stream_gap_ms, args.stream_chunks),
                  "streamseq": stub.url(args.stream_ttfc_ms, args.stream_seq_gap_ms, args.stream_chunks)}
        log(f"stub: OpenAI-compatible asyncio server, {len(stub.procs)} process(es) of its own on {stub.base} "
            f"(pids {sorted(stub.pids())})")
        seeded = subprocess.run([PY, __file__, "_seed", stub.url(args.latency_ms), json.dumps(agents)], cwd=ROOT,
                                env=env, check=True, capture_output=True, text=True)
        key = json.loads(seeded.stdout.strip().splitlines()[-1])["key"]
        extra = " ".join(args.server_env)
        log(f"seeded org '{ORG}', a runner key, agents 'local' (fruxon-local, 0 ms), 'priced', 'budgeted', and on the "
            f"openai provider: 'openai0' (0 ms), 'slow' ({args.latency_ms:g} ms), 'slow5' ({args.latency5_ms:g} ms), "
            f"'stream' and 'streamseq'" + (f"; server env: {extra}" if extra else ""))
        log(f"load generator: asyncio+uvloop raw HTTP/1.1 keep-alive clients in processes of their own "
            f"(at least {args.load_procs}, at most {args.conns_per_proc} connections each); closed loop: each client "
            "sends its next request when the answer arrives" + ("; wrk -t1 as a cross-check"
                                                               if shutil.which("wrk") and not args.no_wrk else ""))
        if "stub" in phases:
            stub_figure = stub_alone(stub, args)

        for label, server_argv, description in servers:
            if not phases - {"stub"}:
                break
            port = free_port()
            log(f"\n== {label}: DB_POOL_MAX_SIZE={args.db_pool} {description}")
            server_log = logdir / f"server-{label.replace(' ', '_')}.log"
            with open(server_log, "w") as handle:
                proc = start_server(server_argv, env, port, stdout=handle, stderr=subprocess.STDOUT)
            log(f"pid {proc.pid}, {len(worker_pids(proc.pid))} worker process(es); log {server_log}")
            bench = Bench(args, label, port, key, proc, stub, db_url, env, phases)
            started = time.monotonic()
            try:
                bench.run()
            finally:
                stop_server(proc)
                if getattr(bench, "_pg", None) is not None:
                    bench._pg.close()
                text = server_log.read_text(errors="replace")
                errors = [line for line in text.splitlines() if "ERROR" in line and "was sent SIGTERM" not in line]
                log(f"{label}: {time.monotonic() - started:.0f} s; its log has {text.count('Traceback')} "
                    f"tracebacks, {len(errors)} ERROR lines ({server_log})")
                for line, count in log_digest(text):
                    log(f"  {count:6d} x {line}")
                results.append((label, bench.figures))
            sql(db_url, "TRUNCATE monitoring_span, monitoring_run CASCADE")
    finally:
        stub.close()

    print_summary(results, phases, args, stub_figure)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_stub":
        child_stub(float(sys.argv[2]), record=sys.argv[3:4] != ["norecord"])
    elif len(sys.argv) > 1 and sys.argv[1] == "_astub":
        child_fast_stub(int(sys.argv[2]))
    elif len(sys.argv) > 1 and sys.argv[1] == "_seed":
        child_seed(sys.argv[2], json.loads(sys.argv[3]) if len(sys.argv) > 3 else None)
    else:
        sys.exit(main())
