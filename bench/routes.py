#!/usr/bin/env python
"""Latency of the synchronous routes (the API besides execute, and the admin) under the ASGI
production command against gunicorn gthread, run by hand (never a test).

    .venv/bin/python bench/routes.py                       # about 8 minutes
    .venv/bin/python bench/routes.py --seq 200 --conc-seconds 4 --rounds 1   # quicker
    .venv/bin/python bench/routes.py --profile-dir /tmp/routes-prof          # py-spy the ASGI workers

Issue 13 lets the rest of the API stay synchronous Django/DRF inside the ASGI app, aiming at
"within 20% of gthread". What it does (see bench/README.md for the execute benchmark it borrows
its helpers from):

1. drops and recreates the PostgreSQL database (``--db``), migrates it, and seeds a small org:
   ``manage.py demo``'s (org ``demo``, people ``owner``/``editor``/``viewer``, an admin-scoped
   API key, agent ``support`` with two revisions) plus ``--agents`` more agents of two
   revisions each, and ``--runs`` executes of ``support`` (so the runs list has rows);
2. starts both servers at once on the same database, with production settings (``DEBUG``
   unset, generated ``SECRET_KEY`` and Fernet key, ``SECURE_SSL_REDIRECT=0``) and
   ``DB_POOL_MAX_SIZE=16``:

   * gthread: ``gunicorn fruxon.wsgi -k gthread --workers 2 --threads 256``
   * ASGI (the README's production command):
     ``gunicorn fruxon.asgi:application -k uvicorn_worker.UvicornWorker --workers 2``

3. measures each route (an API key for the API, a logged-in session for the admin):

   * sequentially, on one keep-alive connection per server: every round sends each route
     once to gthread and once to ASGI, alternately, so drift on a shared machine hits both;
   * with N concurrent clients (closed loop, one keep-alive connection each, asyncio over raw
     HTTP/1.1) for a few seconds per route and server, servers alternating, ``--rounds`` times;
     with the CPU the server's processes used per request;

4. prints p50/p99 per route and server and the ratio ASGI/gthread.

Everything sent stays on 127.0.0.1; every loop is bounded in count and time.
"""
from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import execute  # bench/execute.py: server start/stop, database, environment, helpers
from execute import BIN, HOST, PY, ROOT, fmt, log, pct

TENANT = "demo"  # fruxon.demo's org, key and people
KEY = "fx_live_demo_0000000000000000000000000000000000"
ADMIN_USER, ADMIN_PASSWORD = "owner", "owner-pass-123"
SERVERS = {
    "gthread": [str(BIN / "gunicorn"), "fruxon.wsgi", "-k", "gthread", "--workers", "2", "--threads", "256"],
    "asgi": [str(BIN / "gunicorn"), "fruxon.asgi:application", "-k", "uvicorn_worker.UvicornWorker",
             "--workers", "2"],
}
AIM = 1.20  # ASGI within 20% of gthread


# --------------------------------------------------------------------------- seed (child process)


def child_seed(agents: int) -> None:
    """``_seed N``: the demo org and N more agents with two revisions each (runs come over HTTP)."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fruxon.settings")
    import django

    django.setup()
    from agents import services as agent_services
    from deployments.services import deploy
    from fruxon import demo
    from orgs.actor import Actor

    seeded = demo.seed()
    actor = Actor(system=True)
    for n in range(agents):
        agent = agent_services.create_agent(actor=actor, organization=seeded.org, slug=f"agent-{n:02d}",
                                            name=f"Agent {n}", description="bench/routes.py")
        first = None
        for version in (1, 2):
            spec = json.loads(json.dumps(demo.SUPPORT_V1))
            spec["steps"][0]["model"]["latencyMs"] = 0
            spec["steps"][0]["prompt"] = f"v{version}: {{{{input.question}}}}"
            revision = agent_services.create_revision(actor=actor, agent=agent, spec=spec, message=f"v{version}")
            first = first or revision
        if n % 2 == 0:
            deploy(actor=actor, agent=agent, revision_id=first.id, reason="bench", force=True)
    print(json.dumps({"org": seeded.org.slug}), flush=True)


# --------------------------------------------------------------------------- HTTP


@dataclass(eq=False)
class Route:
    name: str
    method: str
    path: str  # may hold {n}: a number unique to the request's client and turn
    expect: int
    body: dict | None = None
    admin: bool = False  # the session cookie instead of the API key

    def request(self, port: int, n: str, cookie: str) -> bytes:
        body = json.dumps(self.body).replace("{n}", n).encode() if self.body is not None else b""
        head = [f"{self.method} {self.path.replace('{n}', n)} HTTP/1.1", f"Host: {HOST}:{port}"]
        head += [f"Cookie: {cookie}"] if self.admin else [f"X-API-KEY: {KEY}", "Accept: application/json"]
        if self.body is not None:
            head += ["Content-Type: application/json"]
        head += [f"Content-Length: {len(body)}", "", ""]
        return "\r\n".join(head).encode() + body


ROUTES = [
    Route("GET /healthz (middleware only)", "GET", "/healthz", 200),
    Route("GET /v1/{t}/agents", "GET", f"/v1/{TENANT}/agents", 200),
    Route("GET /v1/{t}/runs", "GET", f"/v1/{TENANT}/runs", 200),
    Route("GET /v1/{t}/agents/{a}/revisions", "GET", f"/v1/{TENANT}/agents/support/revisions", 200),
    Route("POST /v1/{t}/agents (create)", "POST", f"/v1/{TENANT}/agents", 201,
          body={"slug": "tmp-{n}", "name": "Temporary {n}"}),
    Route("DELETE /v1/{t}/agents/{a}", "DELETE", f"/v1/{TENANT}/agents/tmp-{{n}}", 204),
    Route("GET /admin/monitoring/run/ (session)", "GET", "/admin/monitoring/run/", 200, admin=True),
]
CREATE, DELETE = ROUTES[4], ROUTES[5]


class Connection:
    """One HTTP/1.1 keep-alive connection (reopened when the server closes it)."""

    def __init__(self, port: int):
        self.port, self.reader, self.writer = port, None, None

    async def send(self, request: bytes, timeout: float = 30.0) -> tuple[int, float]:
        """(status, seconds from the first byte sent to the last byte read)."""
        for attempt in (1, 2):
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
            started = time.perf_counter()
            try:
                self.writer.write(request)
                status, headers, _ = await asyncio.wait_for(execute._read_response(self.reader), timeout)
            except (ConnectionError, asyncio.IncompleteReadError):
                self.close()  # an idle keep-alive connection the server closed: once more on a new one
                if attempt == 2:
                    raise
                continue
            elapsed = time.perf_counter() - started
            if headers.get(b"connection", b"").lower() == b"close":
                self.close()
            return status, elapsed
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def admin_session(port: int) -> str:
    """Log in through the admin's form; the ``Cookie`` header value of the session.

    The cookies are Secure (production settings), which a cookie jar would not send over
    http://127.0.0.1; so they are carried by hand."""
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    conn.request("GET", "/admin/login/")
    page = conn.getresponse()
    html = page.read().decode()
    csrf_cookie = re.search(r"csrftoken=([^;]+)", page.getheader("Set-Cookie") or "").group(1)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)
    form = urllib.parse.urlencode({"csrfmiddlewaretoken": token, "username": ADMIN_USER,
                                   "password": ADMIN_PASSWORD, "next": "/admin/"})
    conn.request("POST", "/admin/login/", form, {"Content-Type": "application/x-www-form-urlencoded",
                                                "Cookie": f"csrftoken={csrf_cookie}"})
    answer = conn.getresponse()
    answer.read()
    cookies = ", ".join(value for name, value in answer.getheaders() if name.lower() == "set-cookie")
    session = re.search(r"sessionid=([^;]+)", cookies)
    if answer.status != 302 or not session:
        raise SystemExit(f"admin login failed: HTTP {answer.status}")
    conn.close()
    return f"csrftoken={csrf_cookie}; sessionid={session.group(1)}"


def seed_runs(port: int, count: int) -> None:
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    body = json.dumps({"input": {"customer": "Ada", "question": "Where is my order?"}})
    for _ in range(count):
        conn.request("POST", f"/v1/{TENANT}/agents/support:execute", body,
                     {"X-API-KEY": KEY, "Content-Type": "application/json"})
        answer = conn.getresponse()
        answer.read()
        if answer.status != 200:
            raise SystemExit(f"seeding runs: execute answered {answer.status}")
    conn.close()


# --------------------------------------------------------------------------- measurement


@dataclass
class Sample:
    latencies: list[float] = field(default_factory=list)  # ms
    errors: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0  # measured wall time of the concurrent phases
    cpu: float = 0.0  # CPU seconds of the server's processes for the measured answers
    others: list[float] = field(default_factory=list)  # cores other processes used, per phase

    def rate(self) -> float | None:
        return len(self.latencies) / self.seconds if self.seconds else None

    def cpu_ms(self) -> float | None:
        return 1000.0 * self.cpu / len(self.latencies) if self.latencies else None

    def add(self, status: int, expect: int, seconds: float) -> None:
        if status == expect:
            self.latencies.append(seconds * 1000.0)
        else:
            self.errors[status] = self.errors.get(status, 0) + 1


def sequential(ports: dict[str, int], cookie: str, warmup: int, count: int) -> dict[tuple[str, str], Sample]:
    """Each round: every route once on each server, servers alternating (which goes first too)."""
    samples = {(server, route.name): Sample() for server in ports for route in ROUTES}

    async def main():
        conns = {server: Connection(port) for server, port in ports.items()}
        order = list(ports)
        for turn in range(warmup + count):
            order.reverse()
            for route in ROUTES:
                if route is DELETE:
                    continue  # sent right after its create, below
                for server in order:
                    conn, port = conns[server], ports[server]
                    n = f"s{turn}{server[0]}"
                    status, seconds = await conn.send(route.request(port, n, cookie))
                    if turn >= warmup:
                        samples[(server, route.name)].add(status, route.expect, seconds)
                    if route is CREATE:
                        status, seconds = await conn.send(DELETE.request(port, n, cookie))
                        if turn >= warmup:
                            samples[(server, DELETE.name)].add(status, DELETE.expect, seconds)
        for conn in conns.values():
            conn.close()

    asyncio.run(main())
    return samples


def concurrent(server: str, port: int, route: Route, cookie: str, clients: int, warmup: float, seconds: float,
               turn: int, samples: dict | None, master_pid: int) -> None:
    """``clients`` closed-loop clients on ``route`` for ``warmup`` + ``seconds``; the answers of the last
    ``seconds`` go into ``samples`` (none when it is None), with the server's CPU per request over the
    whole phase. A create is always followed by its delete on the same client (each under its own name)."""
    assert route is not DELETE

    async def client(index: int, start_at: float, stop_at: float, out: list) -> None:
        conn = Connection(port)
        i = 0
        try:
            while (now := time.monotonic()) < stop_at:
                n = f"c{turn}{server[0]}{index}x{i}"
                i += 1
                for kind in (route, DELETE) if route is CREATE else (route,):
                    status, elapsed = await conn.send(kind.request(port, n, cookie))
                    out.append((kind, status, elapsed, now >= start_at))
        finally:
            conn.close()

    async def main() -> list:
        out: list = []
        start_at = time.monotonic() + warmup
        await asyncio.gather(*(client(i, start_at, start_at + seconds, out) for i in range(clients)))
        return out

    meter = execute.CpuMeter({"server": lambda procs: execute._tree(master_pid, procs),
                              "bench": lambda procs: {os.getpid()}, "postgres": lambda procs: execute._postgres_pids()})
    meter.start()
    started = time.monotonic()
    out = asyncio.run(main())
    cores = meter.stop()
    cpu_per_request = cores["server"] * (time.monotonic() - started) / max(1, len(out))
    if samples is None:
        return
    for kind, status, elapsed, measured in out:
        if measured:
            sample = samples[(server, kind.name)]
            sample.add(status, kind.expect, elapsed)
            sample.cpu += cpu_per_request
    for kind in {kind for kind, *_ in out}:
        samples[(server, kind.name)].seconds += seconds
        samples[(server, kind.name)].others.append(cores["other"])


# --------------------------------------------------------------------------- report


def _flag(ratio: float | None) -> str:
    return "" if ratio is None or ratio <= AIM else " (!)"


def table(title: str, samples: dict, concurrent_phase: bool) -> list[str]:
    lines = [f"\n{title}", "| route | gthread p50 | gthread p99 | ASGI p50 | ASGI p99 | ASGI/gthread p50 | ASGI/gthread p99 |"
             + (" gthread req/s | ASGI req/s | CPU ms/req gthread | CPU ms/req ASGI | others' cores g/A |"
                if concurrent_phase else ""),
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |" + (" ---: | ---: | ---: | ---: | ---: |"
                                                               if concurrent_phase else "")]
    for route in ROUTES:
        g, a = samples[("gthread", route.name)], samples[("asgi", route.name)]
        gp50, gp99, ap50, ap99 = pct(g.latencies, 0.5), pct(g.latencies, 0.99), pct(a.latencies, 0.5), pct(a.latencies, 0.99)
        r50 = ap50 / gp50 if gp50 and ap50 else None
        r99 = ap99 / gp99 if gp99 and ap99 else None
        row = (f"| {route.name} | {fmt(gp50)} | {fmt(gp99)} | {fmt(ap50)} | {fmt(ap99)} | {fmt(r50)}{_flag(r50)} "
               f"| {fmt(r99)}{_flag(r99)} |")
        if concurrent_phase:
            row += (f" {fmt(g.rate(), 0)} | {fmt(a.rate(), 0)} | {fmt(g.cpu_ms())} | {fmt(a.cpu_ms())} "
                    f"| {fmt(max(g.others, default=None), 1)}/{fmt(max(a.others, default=None), 1)} |")
        lines.append(row)
    errors = [f"{server} {name}: {dict(s.errors)}" for (server, name), s in samples.items() if s.errors]
    if errors:
        lines.append("unexpected statuses (not in the latencies): " + "; ".join(errors))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432", help="PostgreSQL server URL")
    parser.add_argument("--db", default="fruxon_bench_routes", help="database name (dropped and recreated)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15",
                        help="REDIS_URL for the servers; '' for none (default %(default)s)")
    parser.add_argument("--db-pool", type=int, default=16, help="DB_POOL_MAX_SIZE per server process")
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--agents", type=int, default=20, help="agents seeded besides the demo's")
    parser.add_argument("--runs", type=int, default=60, help="runs seeded (executes of 'support')")
    parser.add_argument("--seq", type=int, default=300, help="sequential rounds measured (after --seq-warmup)")
    parser.add_argument("--seq-warmup", type=int, default=30)
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--conc-seconds", type=float, default=5.0, help="measured seconds per route, server, round")
    parser.add_argument("--conc-warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=2, help="concurrent rounds (servers alternate)")
    parser.add_argument("--quiet-wait", type=float, default=20.0,
                        help="before each phase, wait up to this long for other work on the machine to stop")
    parser.add_argument("--asgi-app", default="fruxon.asgi:application",
                        help="the ASGI application the production command serves, to measure a candidate "
                             "(with --server-env PYTHONPATH=... when it lives outside the repo)")
    parser.add_argument("--profile-dir", help="py-spy (--gil) the ASGI workers during each concurrent GET; "
                                              "collapsed stacks and a summary go here")
    args = parser.parse_args(argv)

    db_url = f"{args.pg.rstrip('/')}/{args.db}"
    env = execute.bench_env(args, db_url)
    SERVERS["asgi"][1] = args.asgi_app
    if args.redis_url:
        import redis

        redis.Redis.from_url(args.redis_url).flushdb()
    log(f"== Fruxon sync routes: ASGI vs gthread ({os.cpu_count()} cores, Python {sys.version.split()[0]})")
    log(f"database {db_url} (recreated), redis {args.redis_url or 'none'}, DB_POOL_MAX_SIZE={args.db_pool}")
    execute.recreate_database(f"{args.pg.rstrip('/')}/postgres", args.db)
    subprocess.run([PY, "manage.py", "migrate", "--verbosity", "0"], cwd=ROOT, env=env, check=True)
    subprocess.run([PY, __file__, "_seed", str(args.agents)], cwd=ROOT, env=env, check=True, capture_output=True)

    procs, ports = {}, {}
    logs = tempfile.mkdtemp(prefix="fruxon-routes-")
    try:
        for server, argv_ in SERVERS.items():
            ports[server] = execute.free_port()
            with open(os.path.join(logs, f"{server}.log"), "w") as output:
                procs[server] = execute.start_server(argv_, env, ports[server], stdout=output,
                                                     stderr=subprocess.STDOUT)
            log(f"{server}: {' '.join(Path(a).name if i == 0 else a for i, a in enumerate(argv_))} "
                f"-b {HOST}:{ports[server]} (pid {procs[server].pid})")
        log(f"server output: {logs}")
        seed_runs(ports["gthread"], args.runs)
        execute.sql(db_url, "VACUUM ANALYZE")
        cookie = admin_session(ports["gthread"])
        log(f"seeded org '{TENANT}': {args.agents + 1} agents, {args.runs} runs; admin session for '{ADMIN_USER}'")

        log(f"\nsequential: {args.seq} rounds (+{args.seq_warmup} warm-up), each route once per server per round; "
            + execute.wait_quiet(args.quiet_wait))
        pids = [proc.pid for proc in procs.values()]
        meter = execute.CpuMeter({"servers": lambda table: set().union(*(execute._tree(pid, table) for pid in pids)),
                                  "bench": lambda table: {os.getpid()},
                                  "postgres": lambda table: execute._postgres_pids()})
        meter.start()
        seq = sequential(ports, cookie, args.seq_warmup, args.seq)
        lines = table(f"Sequential (one keep-alive connection per server), ms, {args.seq} requests per route; "
                      f"other processes used {meter.stop()['other']:.2f} cores meanwhile", seq, False)

        conc = {(server, route.name): Sample() for server in SERVERS for route in ROUTES}
        for turn in range(args.rounds):
            for route in ROUTES:
                if route is DELETE:
                    continue
                order = list(SERVERS) if (turn + ROUTES.index(route)) % 2 == 0 else list(reversed(SERVERS))
                for server in order:
                    quiet = execute.wait_quiet(args.quiet_wait)
                    concurrent(server, ports[server], route, cookie, args.clients, args.conc_warmup,
                               args.conc_seconds, turn, conc, procs[server].pid)
                    log(f"  round {turn + 1}: {route.name} on {server} ({quiet})")
        lines += table(f"{args.clients} concurrent clients (closed loop), ms, {args.rounds} x {args.conc_seconds:.0f} s "
                       "per route and server", conc, True)
        if args.profile_dir:  # a pass of its own: py-spy takes CPU, so these answers are not counted
            for route in ROUTES:
                if route.method == "GET":
                    label = "asgi-" + re.sub(r"[^a-z0-9]+", "-", route.name.lower()).strip("-")
                    spies = execute.start_profiles(args.profile_dir, label, procs["asgi"].pid,
                                                   args.conc_warmup, args.conc_seconds)
                    concurrent("asgi", ports["asgi"], route, cookie, args.clients, args.conc_warmup,
                               args.conc_seconds, args.rounds, None, procs["asgi"].pid)
                    execute.finish_profiles(spies)
        log("\n".join(lines))
        log(f"\n(!) = ASGI more than {100 * (AIM - 1):.0f}% slower than gthread. CPU ms/req: the server's processes' "
            "CPU per answer. Others' cores: the most CPU other processes on the machine (not the servers, this"
            " client or PostgreSQL) took during a phase "
            "(gthread/ASGI); above ~0.3 the two servers did not have the cores to themselves.")
    finally:
        for proc in procs.values():
            execute.stop_server(proc)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_seed":
        child_seed(int(sys.argv[2]))
    else:
        sys.exit(main())
