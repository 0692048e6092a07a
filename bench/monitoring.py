#!/usr/bin/env python
"""Benchmark of the monitoring read path on 1,000,000 runs, run by hand (never a test).

    .venv/bin/python bench/monitoring.py                 # seed (about a minute) and measure
    .venv/bin/python bench/monitoring.py --no-seed       # reuse fruxon_bench_mon as it is

1. Drops and recreates the PostgreSQL database ``fruxon_bench_mon``, migrates it in a
   subprocess with production settings (``DEBUG`` unset), and seeds with raw SQL: one org,
   20 agents with one revision each, 1,000,000 runs over the last 30 days (~5% ``error``),
   inserted in ``created_at`` order as production appends them, then ``ANALYZE``.
2. In this process (``django.setup()`` on that database) times, 5 warm-ups then 100
   repetitions each, what the API does for
   (a) ``GET /runs?agent=..&status=..``: the ``RunViewSet`` list queryset (org-scoped,
       ``select_related('agent', 'conversation')``, ``agent__slug`` and ``status`` filters,
       ordering ``-created_at,-id``), paged by the API's ``CursorPagination`` (50) and
       serialized by ``RunSerializer``; agent and status vary across repetitions;
   (b) ``GET /metrics`` (defaults: last 24 hours, bucket=hour): ``monitoring.metrics.series``
       on the org-scoped runs, serialized by ``MetricsResponse``.
3. Prints p50/p95 (ms) of each against the target (p95 <= 100 ms), and the top line of
   ``EXPLAIN ANALYZE`` of every SQL query each one runs.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
ADMIN_URL = "postgres://postgres@127.0.0.1:5432/postgres"
DB_NAME = "fruxon_bench_mon"
DB_URL = f"postgres://postgres@127.0.0.1:5432/{DB_NAME}"
ORG = "bench-mon"
AGENTS = 20
RUNS = 1_000_000
TARGET_P95_MS = 100.0
WARMUP, REPS = 5, 100

ENV = {
    "DATABASE_URL": DB_URL,
    "SECRET_KEY": "bench-" + "x" * 50,
    "FRUXON_ENCRYPTION_KEY": "ZnJ1eG9uLWRldi1vbmx5LWZlcm5ldC1rZXktMDAwMDA=",
    "ALLOWED_HOSTS": "127.0.0.1",
}


def server_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "FRUXON_TESTING", "DB_POOL_MAX_SIZE")}
    env.update(ENV)
    return env


def recreate_and_migrate() -> None:
    import psycopg

    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    started = time.perf_counter()
    subprocess.run([PY, "manage.py", "migrate", "--verbosity", "0"], cwd=ROOT, env=server_env(), check=True)
    print(f"migrated {DB_NAME} in {time.perf_counter() - started:.1f} s")


SEED_SQL = [
    # foreign keys are consistent by construction; skip their per-row triggers for speed
    "SET session_replication_role = replica",
    "SET synchronous_commit = off",
    f"""INSERT INTO orgs_organization (slug, name, retention_days, created_at, webhook_secret)
        VALUES ('{ORG}', 'Bench monitoring', 3650, now(), 'whsec_bench')""",
    f"""INSERT INTO agents_agent (organization_id, slug, name, description, deployed_revision_id, gating_dataset_id,
                                  gate_tolerance, created_by_id, created_at, updated_at)
        SELECT o.id, 'agent-' || lpad(i::text, 2, '0'), 'Agent ' || i, '', NULL, NULL, 0.0, NULL, now(), now()
        FROM orgs_organization o, generate_series(1, {AGENTS}) i WHERE o.slug = '{ORG}'""",
    """INSERT INTO agents_revision (id, organization_id, agent_id, spec, content_hash, parent_id, message,
                                   created_by_id, created_by_label, created_at, origin)
       SELECT 'rev_b' || a.id, a.organization_id, a.id, '{}'::jsonb, md5(a.id::text) || md5(a.slug), NULL, 'bench',
              NULL, 'bench', now() - interval '31 days', '{}'::jsonb
       FROM agents_agent a""",
    "UPDATE agents_agent SET deployed_revision_id = 'rev_b' || id",
    f"""INSERT INTO monitoring_run (id, organization_id, agent_id, revision_id, conversation_id, source, status, input,
                                   output, error, input_tokens, cached_input_tokens, output_tokens, reasoning_tokens,
                                   cost_usd, latency_ms, provider_ms, api_key_id, created_at, pinned)
        SELECT 'run_' || lpad((row_number() OVER (ORDER BY s.created_at))::text, 12, '0'), s.org, s.aid, 'rev_b' || s.aid, NULL, 'api',
               CASE WHEN s.r < 0.05 THEN 'error' ELSE 'ok' END,
               '{{}}'::jsonb,
               CASE WHEN s.r < 0.05 THEN NULL ELSE '{{"text": "ok"}}'::jsonb END,
               CASE WHEN s.r < 0.05 THEN '{{"code": "provider_error", "message": "upstream 500"}}'::jsonb END,
               s.tin, 0, s.tout, 0, round((s.tin * 0.0000025 + s.tout * 0.00001)::numeric, 8),
               s.lat, greatest(s.lat - 20, 0), NULL, s.created_at, false
        FROM (SELECT g, a.org, a.ids[1 + floor(random() * {AGENTS})::int] AS aid, random() AS r,
                     100 + floor(random() * 4000)::int AS tin, 10 + floor(random() * 800)::int AS tout,
                     50 + floor(random() * 2951)::int AS lat,
                     now() - random() * interval '30 days' AS created_at
              FROM generate_series(1, {RUNS}) g,
                   (SELECT min(organization_id) AS org, array_agg(id ORDER BY id) AS ids FROM agents_agent) a) s
        ORDER BY s.created_at  -- appended in time order, as production writes them (heap clustered by time)""",
]


def seed() -> None:
    import psycopg

    started = time.perf_counter()
    with psycopg.connect(DB_URL, autocommit=True) as conn:
        for sql in SEED_SQL:
            conn.execute(sql)
        conn.execute("ANALYZE")
        count = conn.execute("SELECT count(*) FROM monitoring_run").fetchone()[0]
        size = conn.execute("SELECT pg_size_pretty(pg_total_relation_size('monitoring_run'))").fetchone()[0]
    print(f"seeded {count:,} runs ({size} with indexes) in {time.perf_counter() - started:.1f} s, then ANALYZE")


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(p * len(ordered) + 0.5) - 1))]


def timed(fn, args_list: list) -> list[float]:
    for i in range(WARMUP):
        fn(*args_list[i % len(args_list)])
    out = []
    for i in range(REPS):
        started = time.perf_counter()
        fn(*args_list[i % len(args_list)])
        out.append((time.perf_counter() - started) * 1000)
    return out


def explain_all(fn, args) -> list[str]:
    """EXPLAIN ANALYZE of every query ``fn(*args)`` runs: the plan's top line, execution time, scans used."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        fn(*args)
    lines = []
    with connection.cursor() as cursor:
        for n, query in enumerate(captured.captured_queries, 1):
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + query["sql"])
            plan = [row[0] for row in cursor.fetchall()]
            scans = sorted({p.strip().lstrip("-> ").split("  (")[0] for p in plan
                            if "Scan" in p and "monitoring_run" in p})
            exec_time = next((p for p in plan if p.startswith("Execution Time")), "")
            lines.append(f"  query {n}: {plan[0].strip()}")
            lines.append(f"           {exec_time}; run scans: {'; '.join(scans) or '-'}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-seed", action="store_true", help="reuse the existing fruxon_bench_mon")
    opts = parser.parse_args()
    if not opts.no_seed:
        recreate_and_migrate()
        seed()

    for key in ("DEBUG", "FRUXON_TESTING", "DB_POOL_MAX_SIZE"):
        os.environ.pop(key, None)
    os.environ.update(ENV)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fruxon.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    import datetime as dt

    from django.utils import timezone
    from rest_framework.request import Request
    from rest_framework.test import APIRequestFactory

    from agents.models import Agent
    from fruxon.api.pagination import CursorPagination
    from fruxon.api.serializers import validated
    from monitoring import metrics
    from monitoring.api import serializers as s
    from monitoring.api.views import RUN_FILTERS, RunViewSet, _filtered
    from monitoring.models import Run
    from orgs.models import Organization
    from orgs.scoping import scoped

    org = Organization.objects.get(slug=ORG)
    slugs = list(Agent.objects.filter(organization=org).order_by("slug").values_list("slug", flat=True))
    factory = APIRequestFactory()

    class View:  # what CursorPagination reads from the view
        ordering = RunViewSet.ordering

    def runs_list(agent: str, status: str) -> list:
        query = {"agent": agent, "status": status}
        request = Request(factory.get("/v1/bench-mon/runs", query, HTTP_HOST="127.0.0.1"))
        queryset = scoped(RunViewSet.queryset.all(), org).select_related("agent", "conversation")
        queryset = _filtered(queryset, validated(s.RunFilter, s.query_data(request)), RUN_FILTERS)
        page = CursorPagination().paginate_queryset(queryset, request, view=View())
        return s.RunSerializer(page, many=True).data

    def metrics_24h() -> dict:
        until = timezone.now()
        since = until - dt.timedelta(days=1)  # MetricsQuery's default window
        runs = scoped(Run.objects.all(), org)
        result = metrics.series(runs, since=since, until=until, bucket="hour")
        return s.MetricsResponse(result).data

    list_args = [(slugs[i % len(slugs)], "error" if i % 2 else "ok") for i in range(REPS)]
    sample = runs_list(*list_args[1])
    m = metrics_24h()
    print(f"\nsanity: runs list ({list_args[1]}) -> {len(sample)} rows; metrics -> {len(m['buckets'])} buckets, "
          f"{m['totals']['runs']:,} runs in 24 h, p95 latency {m['totals']['p95LatencyMs']} ms")

    results = {}
    results["(a) GET /runs?agent=&status=  (page of 50)"] = (timed(runs_list, list_args),
                                                             explain_all(runs_list, list_args[1]))
    results["(b) GET /metrics  (24 h, bucket=hour)"] = (timed(metrics_24h, [()]), explain_all(metrics_24h, ()))

    print(f"\n{REPS} repetitions each after {WARMUP} warm-ups; target p95 <= {TARGET_P95_MS:.0f} ms")
    for name, (times, plans) in results.items():
        p50, p95 = statistics.median(times), pct(times, 0.95)
        verdict = "MET" if p95 <= TARGET_P95_MS else "MISSED"
        print(f"\n{name}: p50 {p50:.1f} ms  p95 {p95:.1f} ms  max {max(times):.1f} ms  -> target {verdict}")
        print("\n".join(plans))


if __name__ == "__main__":
    main()
