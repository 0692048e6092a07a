"""Benchmark: evaluation throughput on real Celery workers (run by hand, never in tests).

    .venv/bin/python bench/evaluations.py [--cases 1000] [--latency-ms 50] [--concurrency 8 16 32]

For each worker concurrency it recreates a PostgreSQL database, seeds an agent
on ``fruxon-local`` with the given simulated model latency and a dataset of
``--cases`` cases, starts the README's recommended workers
(one ``celery worker -Q evaluations --pool threads -c N`` per core) on Redis, enqueues one
evaluation and waits for it to complete. It prints wall time, cases per second
and the fraction of ideal concurrency reached:

    ideal wall = cases x latency / (processes x threads),   fraction = ideal wall / measured wall

(1.0 means the worker kept all N slots busy with model waits the whole time;
the target is >= 0.80). Needs PostgreSQL on 127.0.0.1:5432 and Redis on 6379.
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


def sh(*args, env=None, check=True):
    return subprocess.run(args, cwd=ROOT, env=env, check=check, capture_output=True, text=True)


def fresh_database(env: dict) -> None:
    sh("psql", f"{PG}/postgres", "-q", "-c", f"DROP DATABASE IF EXISTS {DB_NAME}")
    sh("psql", f"{PG}/postgres", "-q", "-c", f"CREATE DATABASE {DB_NAME}")
    sh(sys.executable, "manage.py", "migrate", "-v0", env=env)


def seed(env: dict, cases: int, latency_ms: int) -> tuple[str, str]:
    """Seed through Django in a subprocess; returns (evaluation id, revision id)."""
    code = f"""
import django, os
django.setup()
from evaluations.services import datasets, dispatch, runs
from agents import services
from orgs.models import Organization
from orgs.actor import Actor
SYSTEM = Actor(system=True)
dispatch.enqueue = lambda evaluation_id: None
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
evaluation = runs.start(actor=SYSTEM, agent=agent, revision_id=revision.id, dataset=dataset)
print(evaluation.id)
"""
    out = sh(sys.executable, "-c", code, env=env).stdout.strip().splitlines()
    return out[-1], ""


def status(evaluation_id: str) -> tuple[str, int]:
    """One cheap SQL query (no Django start-up stealing the workers' CPU)."""
    import psycopg

    with psycopg.connect(f"{PG}/{DB_NAME}") as conn:
        row = conn.execute(
            "SELECT e.status, (SELECT count(*) FROM evaluations_caseresult r WHERE r.evaluation_id = e.id) "
            "FROM evaluations_evaluationrun e WHERE e.id = %s", (evaluation_id,)).fetchone()
    return row[0], row[1]


def run_once(cases: int, latency_ms: int, concurrency: int, processes: int) -> dict:
    env = {**os.environ, "DATABASE_URL": f"{PG}/{DB_NAME}", "REDIS_URL": REDIS, "SECRET_KEY": "bench-" + "x" * 50,
           "FRUXON_ENCRYPTION_KEY": "ZnJ1eG9uLWRldi1vbmx5LWZlcm5ldC1rZXktMDAwMDA=", "ALLOWED_HOSTS": "127.0.0.1",
           "DJANGO_SETTINGS_MODULE": "fruxon.settings", "SECURE_SSL_REDIRECT": "0"}
    env.pop("DEBUG", None)
    env.pop("FRUXON_TESTING", None)
    fresh_database(env)
    import redis

    redis.Redis.from_url(REDIS).flushdb()
    evaluation_id, _ = seed(env, cases, latency_ms)
    workers = [subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "fruxon", "worker", "-Q", "evaluations,default", "--pool", "threads",
         "-c", str(concurrency), "--prefetch-multiplier", "1", "-n", f"bench{i}@%h", "-l", "warning",
         "--without-mingle", "--without-gossip"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(processes)]
    try:
        time.sleep(3)  # worker boot, not counted
        from celery import Celery

        Celery("bench", broker=REDIS).send_task("evaluations.run_evaluation", args=[evaluation_id], queue="evaluations")
        started = time.monotonic()
        while True:
            state, done = status(evaluation_id)
            if state in ("completed", "failed", "cancelled"):
                break
            time.sleep(0.25)
        wall = time.monotonic() - started
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(timeout=30)
    slots = concurrency * processes
    ideal = cases * latency_ms / 1000.0 / slots
    return {"concurrency": f"{processes}x{concurrency}", "status": state, "results": done, "wall_s": wall,
            "cases_per_s": done / wall, "ideal_wall_s": ideal, "fraction": ideal / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--latency-ms", type=int, default=50)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[4, 8],
                        help="threads per worker process")
    parser.add_argument("--processes", type=int, default=2, help="worker processes (one per core)")
    args = parser.parse_args()
    print(f"{args.cases} cases, fruxon-local at {args.latency_ms} ms, {args.processes} worker process(es) "
          f"with --pool threads, {os.cpu_count()} cores; polling every 250 ms adds up to 0.25 s to each wall time")
    print(f"{'procs x threads':>15} {'status':>10} {'results':>8} {'wall s':>8} {'cases/s':>8} {'ideal s':>8} {'fraction':>8}")
    for concurrency in args.concurrency:
        r = run_once(args.cases, args.latency_ms, concurrency, args.processes)
        print(f"{r['concurrency']:>15} {r['status']:>10} {r['results']:>8} {r['wall_s']:>8.2f} {r['cases_per_s']:>8.1f} "
              f"{r['ideal_wall_s']:>8.2f} {r['fraction']:>8.2f}")


if __name__ == "__main__":
    main()
