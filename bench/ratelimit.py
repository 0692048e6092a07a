#!/usr/bin/env python
"""The rate limiter's cost per execute, run by hand (never a test).

    .venv/bin/python bench/ratelimit.py [--redis-url redis://127.0.0.1:6379/11] [--n 3000]

An execute by an API key whose org and key both have all three limits pays, in
``fruxon.ratelimit``: the requests check (base view), the executions check
(``agents.execution``), one tokens reservation and its settle per model call
(``agents.runtime``), i.e. 4 round trips to Redis for a one-step agent, each one
EVALSHA of a script over two windows (the key's and the org's). This times that
sequence, with limits never reached, on loopback Redis:

* ``--n`` sequential executes (after 200 warm-ups), p50/p99/mean per execute;
* the same from 8 threads at once (the windows are shared, as in a server);
* a down Redis (closed port): the first check's cost, then the breaker's.

Target (issue 14): <= 0.3 ms per execute.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fruxon.settings")

from fruxon import ratelimit  # the limiter itself needs no Django setup


class Row:
    """Stands in for an org or a key row: the limiter reads only these attributes."""

    def __init__(self, pk: int, slug: str = "bench"):
        self.pk, self.slug = pk, slug
        self.requests_per_minute = 10**6
        self.executions_per_minute = 10**6
        self.tokens_per_minute = 10**12


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(p * len(ordered) + 0.5) - 1))]


def one_execute(limiter, org, key) -> float:
    started = time.perf_counter()
    limiter.check(ratelimit.limits_for("requests", organization=org, api_key=key))
    limiter.check(ratelimit.limits_for("executions", organization=org, api_key=key))
    tokens = ratelimit.limits_for("tokens", organization=org, api_key=key)
    reserved = limiter.check(tokens, 1_500)
    limiter.settle(reserved, 420)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/11")
    parser.add_argument("--n", type=int, default=3000)
    args = parser.parse_args()

    limiter = ratelimit.RateLimiter(args.redis_url)
    org, key = Row(900_001), Row(900_002)
    for name in limiter.client.scan_iter("fx:rl:*90000*"):
        limiter.client.delete(name)
    for _ in range(200):
        one_execute(limiter, org, key)
    samples = [one_execute(limiter, org, key) * 1000 for _ in range(args.n)]
    print(f"sequential, {args.n} executes (requests + executions check, tokens reserve + settle; key and org):")
    print(f"  p50 {pct(samples, .5):.3f} ms  p99 {pct(samples, .99):.3f} ms  mean {statistics.mean(samples):.3f} ms"
          f"  (4 round trips; {statistics.mean(samples) / 4:.3f} ms each)")
    for row in (org, key):  # no tokens per minute: two round trips
        row.tokens_per_minute = None
    samples = [one_execute(limiter, org, key) * 1000 for _ in range(args.n)]
    print(f"  without a tokens limit (2 round trips): p50 {pct(samples, .5):.3f} ms  p99 {pct(samples, .99):.3f} ms")
    for row in (org, key):
        row.tokens_per_minute = 10**12
    started = time.perf_counter()
    for _ in range(args.n):
        limiter.client.ping()
    print(f"  (a PING round trip here: {(time.perf_counter() - started) / args.n * 1000:.3f} ms)")

    threaded: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        mine = [one_execute(limiter, org, key) * 1000 for _ in range(args.n // 8)]
        with lock:
            threaded.extend(mine)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    print(f"8 threads, {len(threaded)} executes: p50 {pct(threaded, .5):.3f} ms  p99 {pct(threaded, .99):.3f} ms"
          f"  ({len(threaded) / wall:.0f} executes/s through the limiter)")

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    down = ratelimit.RateLimiter(f"redis://127.0.0.1:{port}/0")
    first = one_execute(down, org, key) * 1000
    later = [one_execute(down, org, key) * 1000 for _ in range(1000)]
    print(f"Redis down: first execute {first:.3f} ms (one refused connection, then the breaker opens); "
          f"then p99 {pct(later, .99):.4f} ms (Redis skipped for {down.fail_open.breaker_seconds:.0f} s)")
    for name in limiter.client.scan_iter("fx:rl:*90000*"):
        limiter.client.delete(name)


if __name__ == "__main__":
    main()
