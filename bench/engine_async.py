"""CPU per engine run: the async engine (arun, and run driving it) against the old sync engine.

    .venv/bin/python bench/engine_async.py [--runs 2000] [--old-commit 105235d] [--concurrency 50]

A loopback OpenAI stub (0 ms, agents.engine.testing) runs in this process; each engine runs in a
child process of its own, so the figures are the child's own CPU time (user + system, all its
threads) divided by the number of runs, through the ``openai`` provider (HTTP/1.1 keep-alive to the
stub, egress policy on, a secret resolved and checked, budget hooks called). The old engine is
extracted from ``--old-commit`` (the last commit before the async engine) with ``git archive``.
Not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]

CHILD = r'''
import asyncio, json, resource, sys, time
from agents.engine import RunContext, run
from agents.engine import egress
from agents.engine.testing import StaticRuntime, StaticSecret

mode, base_url, runs, concurrency = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
egress.configure(egress.EgressPolicy.from_setting("127.0.0.1"))
spec = {"inputs": {"q": {"type": "string", "required": True}},
        "steps": [{"name": "answer", "prompt": "{{input.q}}",
                   "model": {"provider": "openai", "name": "gpt-4o-mini", "baseUrl": base_url,
                             "apiKey": "{{secret.KEY}}", "maxTokens": 256}}]}
secrets = {"KEY": StaticSecret("sk-bench-0123456789", allowed_hosts=("127.0.0.1",))}

def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime

def one_sync(i):
    result = run(spec, {"q": f"q{i}"}, context=RunContext(agent="bench"), runtime=StaticRuntime(secrets=secrets))
    assert result.status == "ok", result.error

async def one_async(i):
    from agents.engine import arun
    from agents.engine.testing import AsyncStaticRuntime
    result = await arun(spec, {"q": f"q{i}"}, context=RunContext(agent="bench"),
                        runtime=AsyncStaticRuntime(secrets=secrets))
    assert result.status == "ok", result.error

def measure(fn):
    warm = max(50, runs // 10)
    fn(0, warm)
    cpu0, wall0 = cpu(), time.perf_counter()
    fn(warm, runs)
    return (cpu() - cpu0) / runs * 1000, (time.perf_counter() - wall0) / runs * 1000

def sync_loop(start, count):
    for i in range(start, start + count):
        one_sync(i)

def sync_threads(start, count):
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one_sync, range(start, start + count)))

def async_sequential(start, count):
    async def main():
        for i in range(start, start + count):
            await one_async(i)
    loop.run_until_complete(main())

def async_concurrent(start, count):
    async def main():
        sem = asyncio.Semaphore(concurrency)
        async def bounded(i):
            async with sem:
                await one_async(i)
        await asyncio.gather(*(bounded(i) for i in range(start, start + count)))
    loop.run_until_complete(main())

loop = asyncio.new_event_loop()
cpu_ms, wall_ms = measure({"sync": sync_loop, "sync-threads": sync_threads, "arun": async_sequential,
                          "arun-concurrent": async_concurrent}[mode])
print(json.dumps({"mode": mode, "cpu_ms": round(cpu_ms, 3), "wall_ms": round(wall_ms, 3)}))
'''


def child(pythonpath: str, mode: str, base_url: str, runs: int, concurrency: int) -> dict:
    env = {**os.environ, "PYTHONPATH": pythonpath}
    out = subprocess.run([sys.executable, "-c", CHILD, mode, base_url, str(runs), str(concurrency)],
                         env=env, cwd=pythonpath, capture_output=True, text=True, timeout=900)
    if out.returncode:
        raise SystemExit(f"{mode} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--old-commit", default="105235d")
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()

    sys.path.insert(0, str(REPO))
    from agents.engine.testing import start_openai_stub

    base_url, stub = start_openai_stub(latency_ms=0, record=False)
    with tempfile.TemporaryDirectory() as old:
        archive = subprocess.run(["git", "archive", args.old_commit, "agents/engine"], cwd=REPO, check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", old], input=archive, check=True)
        pathlib.Path(old, "agents", "__init__.py").write_text("")
        rows = [("old sync run", child(old, "sync", base_url, args.runs, 1)),
                (f"old sync run, {args.concurrency} threads", child(old, "sync-threads", base_url, args.runs,
                                                                     args.concurrency)),
                ("new run (drives arun)", child(str(REPO), "sync", base_url, args.runs, 1)),
                (f"new run, {args.concurrency} threads", child(str(REPO), "sync-threads", base_url, args.runs,
                                                               args.concurrency)),
                ("new arun, one at a time", child(str(REPO), "arun", base_url, args.runs, 1)),
                (f"new arun, {args.concurrency} at once", child(str(REPO), "arun-concurrent", base_url, args.runs,
                                                                args.concurrency))]
    stub.close()
    print(f"{'engine':32} {'CPU ms/run':>11} {'wall ms/run':>12}   ({args.runs} runs, openai provider, 0 ms stub)")
    for name, row in rows:
        print(f"{name:32} {row['cpu_ms']:>11.3f} {row['wall_ms']:>12.3f}")


if __name__ == "__main__":
    main()
