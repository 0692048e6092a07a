"""Benchmark: evaluation throughput on real Celery workers (run by hand, never in tests).

    .venv/bin/python bench/evaluations.py                      # the README's worker setup, about 2 minutes
    .venv/bin/python bench/evaluations.py --setups 2x4 2x8 2x16 1x16 --repeat 2   # compare setups

What it measures: ``--cases`` cases (1,000) of one evaluation on ``fruxon-local``
with ``--latency-ms`` (50 ms) of simulated model latency per case, on the worker
setup the README recommends:

    WORKER_COMMAND, started once per worker process (PROCESSES of them, one per core)

For each setup it recreates the PostgreSQL database ``fruxon_bench_eval``, seeds
an org, an agent and a dataset (``contains`` metric), starts the workers on Redis
with production settings (``DEBUG`` off, a real ``SECRET_KEY``), waits for them
to be ready, sends ``evaluations.run_evaluation`` and waits for the evaluation
to complete. It prints, per run:

* wall time: from sending the task to the evaluation's ``finished_at`` (exact,
  not rounded to the polling interval);
* cases per second: cases / wall;
* the fraction of ideal concurrency reached, with

      slots = processes x threads
      ideal cases/s = slots / latency          (every slot always waiting on the model, zero overhead)
      fraction = measured cases/s / ideal cases/s = ideal wall / measured wall

  (1.0 is not reachable: each case also costs CPU, and the last chunks leave
  slots idle; the target is >= 0.80);
* who used the two cores during the run: the workers, this evaluation's
  PostgreSQL backends, and "other" (everything else on the machine, e.g. someone
  else's test suite), plus the workers' CPU per case.

Needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust) and Redis on 6379: db 14, or
``BENCH_REDIS`` (the script flushes it; pick one nothing else on the machine uses).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PG = os.environ.get("BENCH_PG", "postgres://postgres@127.0.0.1:5432")
REDIS = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/14")
DB_NAME = "fruxon_bench_eval"
LOG = Path(os.environ.get("BENCH_LOG", "/tmp/fruxon_bench_evaluations.log"))

# The README's recommendation, measured with this script (see the README's performance table):
# one worker process per core, each with a pool of threads (cases wait on model providers, so
# threads, not processes, are what keeps many in flight; one process per core uses both cores
# despite the GIL).
PROCESSES, THREADS = 2, 8
WORKER_ENV = {"DB_POOL_MAX_SIZE": os.environ.get("BENCH_WORKER_POOL", "{threads}")}
WORKER_COMMAND = ("celery -A fruxon worker -Q default,evaluations,shadow --pool threads -c {threads} "
                  "--prefetch-multiplier 1 -n w{index}@%h")

CLK_TCK = os.sysconf("SC_CLK_TCK")


# CPU accounting from /proc, so each result says who used the two cores.
def _stat(pid: int) -> tuple[str, int, float, float] | None:
    """(comm, ppid, own CPU seconds, reaped children's CPU seconds)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            head, rest = handle.read().rsplit(")", 1)
    except OSError:
        return None
    fields = rest.split()
    return (head.split("(", 1)[1], int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK,
            (int(fields[13]) + int(fields[14])) / CLK_TCK)


def _machine() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine."""
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + values[4]
    return (sum(values) - idle) / CLK_TCK, sum(values) / CLK_TCK


class CpuMeter:
    """CPU used between start() and stop() by the workers, PostgreSQL, and everything else.

    PostgreSQL: every ``postgres`` process plus what its postmaster reaped (Celery's Django fixup
    closes the database connection after each task, so backends come and go); that is the whole
    server, other databases' work included.
    """

    def __init__(self, worker_pids: list[int]):
        self.worker_pids = worker_pids

    def _snap(self) -> dict[str, float]:
        stats = {int(n): st for n in os.listdir("/proc") if n.isdigit() and (st := _stat(int(n)))}
        tree, frontier = set(self.worker_pids), list(self.worker_pids)
        while frontier:
            parent = frontier.pop()
            children = [pid for pid, st in stats.items() if st[1] == parent and pid not in tree]
            tree.update(children)
            frontier.extend(children)
        workers = sum(stats[pid][2] for pid in tree if pid in stats)
        postgres = sum(st[2] + (st[3] if stats.get(st[1], ("",))[0] != "postgres" else 0.0)
                       for st in stats.values() if st[0] == "postgres")
        return {"workers": workers, "postgres": postgres}

    def start(self) -> None:
        self.t0, self.s0, self.m0 = time.monotonic(), self._snap(), _machine()

    def stop(self) -> dict[str, float]:
        self.seconds = time.monotonic() - self.t0
        s1, m1 = self._snap(), _machine()
        cores = {name: max(0.0, s1[name] - self.s0[name]) / self.seconds for name in s1}
        busy, total = m1[0] - self.m0[0], m1[1] - self.m0[1]
        cores["other"] = max(0.0, busy / self.seconds - sum(cores.values()))
        cores["busy %"] = 100.0 * busy / total if total else 0.0
        return cores


def fmt_cpu(cores: dict[str, float]) -> str:
    return (f"cores: workers {cores['workers']:.2f}, postgres {cores['postgres']:.2f}, other {cores['other']:.2f} "
            f"(machine {cores['busy %']:.0f}% busy)")


def wait_quiet(limit: float, threshold: float = 25.0) -> str:
    """Wait (at most ``limit`` s) for a second with the machine under ``threshold``% busy."""
    started = time.monotonic()
    while True:
        before = _machine()
        time.sleep(1.0)
        after = _machine()
        busy = 100.0 * (after[0] - before[0]) / max(after[1] - before[1], 1e-9)
        if busy <= threshold:
            waited = time.monotonic() - started
            return f"machine {busy:.0f}% busy before" + (f", after waiting {waited:.0f} s" if waited > 1.5 else "")
        if time.monotonic() - started >= limit:
            return f"machine still {busy:.0f}% busy after waiting {limit:.0f} s"


def sh(*args, env=None, check=True):
    return subprocess.run(args, cwd=ROOT, env=env, check=check, capture_output=True, text=True)


def fresh_database(env: dict) -> None:
    sh("psql", f"{PG}/postgres", "-q", "-c", f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
    sh("psql", f"{PG}/postgres", "-q", "-c", f"CREATE DATABASE {DB_NAME}")
    sh(sys.executable, "manage.py", "migrate", "-v0", env=env)


def seed(env: dict, cases: int, latency_ms: int, warmup: int) -> tuple[str, str]:
    """Seed through Django in a subprocess; returns the (queued, not yet sent) warm-up and measured evaluations."""
    code = f"""
import django
django.setup()
from evaluations.services import datasets, dispatch, runs
from agents import services
from orgs.models import Organization
from orgs.actor import Actor
SYSTEM = Actor(system=True)
dispatch.enqueue = lambda evaluation_id: None  # this script sends it once the workers are up
org = Organization.objects.create(slug="bench", name="Bench")
agent = services.create_agent(actor=SYSTEM, organization=org, slug="bench")
spec = {{"inputs": {{"question": {{"type": "string", "required": True}}}},
        "steps": [{{"name": "answer", "prompt": "{{{{input.question}}}}",
                   "model": {{"provider": "fruxon-local", "name": "local", "latencyMs": {latency_ms},
                             "script": [{{"reply": "answer {{{{input.question}}}}"}}]}}}}]}}
revision = services.create_revision(actor=SYSTEM, agent=agent, spec=spec)
dataset = datasets.create_dataset(actor=SYSTEM, organization=org, slug="golden", metrics=[{{"type": "contains"}}])
datasets.add_cases_bulk(actor=SYSTEM, dataset=dataset,
                        cases=[{{"input": {{"question": f"q{{i}}"}}, "expected": f"q{{i}}"}} for i in range({cases})])
warm = datasets.create_dataset(actor=SYSTEM, organization=org, slug="warmup", metrics=[{{"type": "contains"}}])
datasets.add_cases_bulk(actor=SYSTEM, dataset=warm,
                        cases=[{{"input": {{"question": f"w{{i}}"}}, "expected": f"w{{i}}"}} for i in range({warmup})])
print(runs.start(actor=SYSTEM, agent=agent, revision_id=revision.id, dataset=warm).id)
print(runs.start(actor=SYSTEM, agent=agent, revision_id=revision.id, dataset=dataset).id)
"""
    warm_id, evaluation_id = sh(sys.executable, "-c", code, env=env).stdout.strip().splitlines()[-2:]
    return warm_id, evaluation_id


def _query(sql: str, params=()):
    """One cheap SQL query (no Django start-up stealing the workers' CPU)."""
    import psycopg

    with psycopg.connect(f"{PG}/{DB_NAME}") as conn:
        return conn.execute(sql, params).fetchall()


def status(evaluation_id: str):
    return _query("SELECT e.status, e.finished_at, (SELECT count(*) FROM evaluations_caseresult r "
                  "WHERE r.evaluation_id = e.id) FROM evaluations_evaluationrun e WHERE e.id = %s",
                  (evaluation_id,))[0]


def wait_done(evaluation_id: str, timeout: float, stall: float = 30.0):
    """Until the evaluation ends, ``timeout`` passes, or no result arrives for ``stall`` seconds."""
    deadline, last, last_change = time.monotonic() + timeout, -1, time.monotonic()
    while True:
        state, finished_at, done = status(evaluation_id)
        if state in ("completed", "failed", "cancelled") or time.monotonic() > deadline:
            return state, finished_at, done
        if done != last:
            last, last_change = done, time.monotonic()
        elif time.monotonic() - last_change > stall:
            # e.g. someone else flushed this Redis database and took the queued chunks with it
            return "stalled", None, done
        time.sleep(0.1)


def wait_ready(workers: list[subprocess.Popen], timeout: float = 60) -> None:
    """Until every worker answers a ping (its pool is started), so boot time is not measured."""
    from celery import Celery

    app = Celery("bench-control", broker=REDIS)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        replies = app.control.ping(timeout=1.0) or []
        if len(replies) >= len(workers):
            return
        if any(w.poll() is not None for w in workers):
            raise RuntimeError(f"a worker exited during start-up (see {LOG})")
    raise RuntimeError("workers did not come up")


def run_once(*, cases: int, latency_ms: int, processes: int, threads: int, quiet_wait: float) -> dict:
    env = {**os.environ, "DATABASE_URL": f"{PG}/{DB_NAME}", "REDIS_URL": REDIS, "SECRET_KEY": "bench-" + "x" * 50,
           "FRUXON_ENCRYPTION_KEY": "ZnJ1eG9uLWRldi1vbmx5LWZlcm5ldC1rZXktMDAwMDA=", "ALLOWED_HOSTS": "127.0.0.1",
           "DJANGO_SETTINGS_MODULE": "fruxon.settings", "SECURE_SSL_REDIRECT": "0"}
    for name in ("DEBUG", "FRUXON_TESTING", "DB_POOL_MAX_SIZE"):
        env.pop(name, None)
    fresh_database(env)
    import redis

    redis.Redis.from_url(REDIS).flushdb()
    warm_id, evaluation_id = seed(env, cases, latency_ms, warmup=4 * processes * threads)
    commands = [(WORKER_COMMAND.format(threads=threads, index=i) + " -l warning").split() for i in range(processes)]
    worker_env = env | {name: value.format(threads=threads) for name, value in WORKER_ENV.items()}
    log = open(LOG, "a")
    workers = [subprocess.Popen([sys.executable, "-m", *command], cwd=ROOT, env=worker_env,
                                stdout=log, stderr=subprocess.STDOUT) for command in commands]
    from celery import Celery

    producer = Celery("bench", broker=REDIS)
    try:
        wait_ready(workers)
        # Warm-up, not measured: each worker thread's first task pays one-off costs (imports, its
        # outbound HTTP client with its TLS context, compiled queries).
        producer.send_task("evaluations.run_evaluation", args=[warm_id], queue="evaluations")
        wait_done(warm_id, 120)
        quiet = wait_quiet(quiet_wait)
        meter = CpuMeter([w.pid for w in workers])
        meter.start()
        sent = time.time()
        producer.send_task("evaluations.run_evaluation", args=[evaluation_id], queue="evaluations")
        state, finished_at, done = wait_done(evaluation_id, 600)
        cpu = meter.stop()
        worker_cpu_s = cpu["workers"] * meter.seconds
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
        log.close()
    wall = (finished_at.timestamp() - sent) if finished_at else float("inf")
    slots = processes * threads
    ideal_rate = slots / (latency_ms / 1000.0)
    return {"setup": f"{processes}x{threads}", "status": state, "results": done, "wall_s": wall,
            "cases_per_s": done / wall, "ideal_per_s": ideal_rate, "fraction": (done / wall) / ideal_rate,
            "cpu": cpu, "cpu_ms_per_case": 1000.0 * worker_cpu_s / max(done, 1), "quiet": quiet,
            "commands": [" ".join(c) for c in commands]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--latency-ms", type=int, default=50)
    parser.add_argument("--setups", nargs="+", default=[f"{PROCESSES}x{THREADS}"],
                        help="worker setups as PROCESSESxTHREADS (default: the README's recommendation)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per setup")
    parser.add_argument("--quiet-wait", type=float, default=20,
                        help="before each run, wait up to this long for other work on the machine to stop")
    args = parser.parse_args()
    print(f"{args.cases} cases on fruxon-local at {args.latency_ms} ms; {os.cpu_count()} cores")
    print("worker setup (README): " + WORKER_COMMAND.format(threads=THREADS, index="N")
          + f", {PROCESSES} processes")
    print("ideal cases/s = slots / latency, slots = processes x threads; "
          "fraction = measured cases/s / ideal cases/s (target >= 0.80)")
    header = (f"{'setup':>6} {'status':>9} {'results':>7} {'wall s':>7} {'cases/s':>8} {'ideal/s':>8} "
              f"{'fraction':>8} {'cpu ms/case':>11}  cores used")
    print(header)
    summary: dict[str, list[dict]] = {}
    for setup in args.setups:
        processes, threads = (int(part) for part in setup.lower().split("x"))
        for _ in range(args.repeat):
            r = run_once(cases=args.cases, latency_ms=args.latency_ms, processes=processes, threads=threads,
                         quiet_wait=args.quiet_wait)
            summary.setdefault(r["setup"], []).append(r)
            print(f"{r['setup']:>6} {r['status']:>9} {r['results']:>7} {r['wall_s']:>7.2f} {r['cases_per_s']:>8.1f} "
                  f"{r['ideal_per_s']:>8.0f} {r['fraction']:>8.2f} {r['cpu_ms_per_case']:>11.2f}  "
                  f"{fmt_cpu(r['cpu'])} ({r['quiet']})", flush=True)
    print("best of each setup:")
    for setup, results in summary.items():
        best = max(results, key=lambda r: r["fraction"])
        print(f"  {setup}: {best['cases_per_s']:.1f} cases/s, fraction {best['fraction']:.2f} "
              f"(runs: {', '.join(format(r['fraction'], '.2f') for r in results)})")


if __name__ == "__main__":
    main()
