#!/usr/bin/env python
"""Profile the execute hot path in-process (pyinstrument), with production settings.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python bench/profile_execute.py [--calls 500] [--agent local] [--html out.html] [--queries]

Recreates the ``fruxon_bench`` database exactly as ``bench/execute.py`` does,
then calls ``POST /v1/bench/agents/<agent>:execute`` through Django's full
request stack (middleware, DRF, view, engine, recording) ``--calls`` times
and prints pyinstrument's call tree. ``--queries`` prints the SQL of one call.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import execute as bench  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--agent", default="local")
    parser.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432")
    parser.add_argument("--db", default="fruxon_bench")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--server-env", action="append", default=[])
    parser.add_argument("--stub-latency-ms", type=float, default=0.0,
                        help="latency of the OpenAI-compatible stub behind agent 'slow' (its own process)")
    parser.add_argument("--html", help="also write pyinstrument's HTML report here")
    parser.add_argument("--queries", action="store_true", help="print the SQL of one execute")
    parser.add_argument("--interval", type=float, default=0.0002, help="pyinstrument's sampling interval")
    parser.add_argument("--profiler", choices=("py-spy", "pyinstrument", "none"), default="py-spy",
                        help="py-spy samples from outside (no overhead; needs ptrace, e.g. root); pyinstrument "
                             "runs inside and inflates deep Python call chains such as the ORM")
    parser.add_argument("--wall", action="store_true",
                        help="py-spy: sample wall time (waits on PostgreSQL/Redis included); default: CPU (--gil)")
    parser.add_argument("--top", type=int, default=45, help="py-spy: functions to list")
    args = parser.parse_args()

    db_url = f"{args.pg.rstrip('/')}/{args.db}"
    env = bench.bench_env(args, db_url)
    bench.recreate_database(f"{args.pg.rstrip('/')}/postgres", args.db)
    subprocess.run([bench.PY, "manage.py", "migrate", "--verbosity", "0"], cwd=bench.ROOT, env=env, check=True)
    stub = subprocess.Popen([bench.PY, bench.__file__, "_stub", str(args.stub_latency_ms)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=bench.ROOT, env=env)
    stub_url = stub.stdout.readline().strip()
    seeded = subprocess.run([bench.PY, bench.__file__, "_seed", stub_url], cwd=bench.ROOT, env=env,
                            check=True, capture_output=True, text=True)
    key = json.loads(seeded.stdout.strip().splitlines()[-1])["key"]
    os.environ.update(env)

    sys.path.insert(0, str(bench.ROOT))
    import django

    django.setup()
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from pyinstrument import Profiler

    client = Client(HTTP_HOST="127.0.0.1", HTTP_X_API_KEY=key)
    path = f"/v1/{bench.ORG}/agents/{args.agent}:execute"
    body = json.dumps({"input": {"question": "where is my order?"}})

    def call():
        response = client.post(path, body, content_type="application/json")
        assert response.status_code == 200, response.content
        return response

    for _ in range(100):
        call()
    if args.queries:
        with CaptureQueriesContext(connection) as captured:
            call()
        print(f"{len(captured.captured_queries)} queries:")
        for query in captured.captured_queries:
            print(f"  [{query['time']}s] {query['sql'][:300]}")

    overheads = []
    profiler = spy = None
    if args.profiler == "pyinstrument":
        profiler = Profiler(interval=args.interval)
        profiler.start()
    elif args.profiler == "py-spy":
        raw = tempfile.NamedTemporaryFile(suffix=".txt", delete=False).name
        spy = subprocess.Popen([str(bench.BIN / "py-spy"), "record", "--pid", str(os.getpid()), "--rate", "1000",
                                "--format", "raw", "--output", raw, "--nonblocking", *([] if args.wall else ["--gil"])],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)  # let it attach
    cpu0, started = time.process_time(), time.monotonic()
    for _ in range(args.calls):
        overheads.append(float(call()["X-Fruxon-Overhead-Ms"]))
    elapsed, cpu = time.monotonic() - started, time.process_time() - cpu0
    print(f"{args.calls} calls in {elapsed:.2f} s, {1000 * cpu / args.calls:.2f} ms CPU each ({args.profiler}); "
          f"overhead p50 {bench.pct(overheads, 0.5):.2f} ms, p99 {bench.pct(overheads, 0.99):.2f} ms")
    if profiler is not None:
        profiler.stop()
        print(profiler.output_text(unicode=True, color=False, show_all=False))
        if args.html:
            with open(args.html, "w") as handle:
                handle.write(profiler.output_html())
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=30)
        summarize_collapsed(raw, args.top)
        print(f"(collapsed stacks in {raw}: feed them to a flame graph tool)")
    stub.stdin.close()
    stub.wait(timeout=10)
    return 0


def summarize_collapsed(path: str, top: int) -> None:
    """Inclusive and self share of each function in py-spy's collapsed stacks (the request thread only)."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    with open(path) as handle:
        for line in handle:
            stack, _, count = line.rstrip().rpartition(" ")
            frames = stack.split(";")
            if not any("call (profile_execute.py" in frame for frame in frames):
                continue  # py-spy's own idle samples of other threads
            n = int(count)
            total += n
            for frame in set(frames):
                inclusive[frame] = inclusive.get(frame, 0) + n
            own[frames[-1]] = own.get(frames[-1], 0) + n
    print(f"py-spy: {total} samples in the request loop; inclusive share of wall time:")
    for frame, n in sorted(inclusive.items(), key=lambda item: -item[1])[:top]:
        print(f"  {100.0 * n / total:5.1f}%  {frame}")
    print("self time:")
    for frame, n in sorted(own.items(), key=lambda item: -item[1])[:25]:
        print(f"  {100.0 * n / total:5.1f}%  {frame}")


if __name__ == "__main__":
    sys.exit(main())
