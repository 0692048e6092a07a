#!/usr/bin/env python
"""The budget ledger's cost per execute, run by hand (never a test).

    .venv/bin/python bench/monitoring.py     # once: creates and seeds fruxon_bench_mon
    .venv/bin/python bench/ledger.py

One model call costs one ``reserve`` + ``settle`` pair. For each implementation in
``monitoring/ledger/`` (``DatabaseLedger`` on ``fruxon_bench_mon``, ``RedisLedger`` on
``redis://127.0.0.1:6379/12``) this times, on one ``BudgetState`` (an agent seeded by
bench/monitoring.py, period ``day``, a cap never reached, ``enforce=True``):

* 2,000 sequential pairs (after 100 warm-ups);
* 8 threads doing 500 pairs each, all on the same budget (the same period row / key);

and prints p50/p99 microseconds per pair and pairs per second.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DB_URL = "postgres://postgres@127.0.0.1:5432/fruxon_bench_mon"
REDIS_URL = "redis://127.0.0.1:6379/12"
ORG = "bench-mon"
UNITS = 5_000_000  # $0.05 reserved per call (worst case) ...
ACTUAL = 1_234_567  # ... settled at $0.0123


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(p * len(ordered) + 0.5) - 1))]


def pair(ledger, state) -> float:
    started = time.perf_counter()
    reservation = ledger.reserve(state, UNITS)
    if reservation is None:
        raise SystemExit("reservation refused: the cap should never be reached here")
    ledger.settle(reservation, ACTUAL)
    return (time.perf_counter() - started) * 1e6


def sequential(ledger, state, n: int, warmup: int) -> tuple[list[float], float]:
    for _ in range(warmup):
        pair(ledger, state)
    started = time.perf_counter()
    times = [pair(ledger, state) for _ in range(n)]
    return times, time.perf_counter() - started


def threaded(ledger, state, threads: int, each: int) -> tuple[list[float], float]:
    from django.db import connections

    results: list[list[float]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads + 1)

    def work(i: int) -> None:
        try:
            pair(ledger, state)  # opens this thread's connection before the clock starts
            barrier.wait()
            results[i] = [pair(ledger, state) for _ in range(each)]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            barrier.abort()
        finally:
            connections.close_all()

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    barrier.wait()
    started = time.perf_counter()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return [t for r in results for t in r], elapsed


def report(name: str, times: list[float], elapsed: float) -> None:
    print(f"  {name:<26} pairs {len(times):>5}  p50 {statistics.median(times):>8.0f} us  "
          f"p99 {pct(times, 0.99):>8.0f} us  max {max(times):>8.0f} us  {len(times) / elapsed:>8.0f} pairs/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--each", type=int, default=500)
    parser.add_argument("--only", choices=["database", "redis"], default=None)
    opts = parser.parse_args()

    for key in ("DEBUG", "FRUXON_TESTING", "DB_POOL_MAX_SIZE"):
        os.environ.pop(key, None)
    os.environ.update({
        "DATABASE_URL": DB_URL, "SECRET_KEY": "bench-" + "x" * 50, "ALLOWED_HOSTS": "127.0.0.1",
        "FRUXON_ENCRYPTION_KEY": "ZnJ1eG9uLWRldi1vbmx5LWZlcm5ldC1rZXktMDAwMDA=",
    })
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fruxon.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.utils import timezone

    from agents.models import Agent
    from monitoring.ledger.base import BudgetState, period_bounds
    from monitoring.ledger.db_ledger import DatabaseLedger
    from monitoring.ledger.redis_ledger import RedisLedger
    from monitoring.models import BudgetPeriod, BudgetReservation

    agent = Agent.objects.filter(organization__slug=ORG).order_by("slug").first()
    if agent is None:
        raise SystemExit("fruxon_bench_mon is not seeded: run bench/monitoring.py first")
    start, end = period_bounds("day", timezone.now())
    state = BudgetState(organization_id=agent.organization_id, agent_id=agent.id, period="day",
                        period_start=start, period_end=end, cap_units=10**17, enforce=True)

    def fresh_database() -> DatabaseLedger:
        BudgetReservation.objects.filter(budget_period__agent_id=agent.id).delete()
        BudgetPeriod.objects.filter(agent_id=agent.id).delete()
        return DatabaseLedger()

    def fresh_redis() -> RedisLedger:
        ledger = RedisLedger(REDIS_URL)
        keys = list(ledger.client.scan_iter(match="*fx:ledger*"))
        if keys:
            ledger.client.delete(*keys)
        return ledger

    print(f"agent {agent.slug} (id {agent.id}); {opts.pairs} sequential pairs, then {opts.threads} threads x "
          f"{opts.each} pairs on the same budget; one pair = reserve + settle = one model call")
    for name, make in (("DatabaseLedger (PostgreSQL)", fresh_database), ("RedisLedger (db 12)", fresh_redis)):
        if opts.only and not name.lower().startswith(opts.only):
            continue
        ledger = make()
        ledger.open_period(state)  # seeds spent from the recorded runs once, outside the timing
        print(f"\n{name}")
        report("sequential", *sequential(ledger, state, opts.pairs, warmup=100))
        report(f"{opts.threads} threads", *threaded(ledger, state, opts.threads, opts.each))
        spent, reserved = ledger.usage(state)
        print(f"  after: reserved {reserved} units (expect 0), spent {spent:,} units")


if __name__ == "__main__":
    main()
