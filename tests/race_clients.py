"""Load for the concurrency tests (test_budget_race, test_budget_alerts): client processes and overlap counting.

No Django here: ``fire`` runs in processes started with ``spawn``, which import
this module afresh, and it must start fast and touch no database.
"""
from __future__ import annotations

import http.client
import json
import multiprocessing
import threading
import time
from urllib.parse import urlsplit


def fire(base: str, key: str, path: str, first: int, count: int, barrier, queue, questions=None,
         headers: tuple[str, ...] = ()) -> None:
    """In a client process: ``count`` threads, one execute each, released together with the other processes.

    Every thread connects first and waits; when ``barrier`` (shared by all
    client processes) trips, all send at once. Plain ``http.client`` keeps the
    clients' CPU small (two cores serve clients and server alike). Puts a list of
    ``(status, started, ended, error code or "")`` (wall-clock seconds) on ``queue``.
    Call ``n`` asks ``questions[n % len(questions)]`` when given, else ``q<n>``. With ``headers``,
    each row gets a fifth element: ``{name: value or None}`` of those response headers.
    """
    host, _, port = urlsplit(base).netloc.partition(":")
    ready = threading.Barrier(count + 1)
    results: list = [None] * count

    def one(index: int) -> None:
        number = first + index
        question = questions[number % len(questions)] if questions else f"q{number}"
        body = json.dumps({"input": {"question": question}})
        conn = http.client.HTTPConnection(host, int(port), timeout=90)
        try:
            conn.connect()
            try:
                ready.wait(timeout=120)
            except threading.BrokenBarrierError:
                results[index] = (0, 0.0, 0.0, "barrier")
                return
            started = time.time()
            try:
                conn.request("POST", path, body, {"X-API-KEY": key, "Content-Type": "application/json"})
                response = conn.getresponse()
                payload = response.read()
            except OSError as exc:
                results[index] = (0, started, time.time(), type(exc).__name__)
                return
            code = ""
            if response.status != 200:
                try:
                    code = json.loads(payload)["error"]["code"]
                except Exception:  # noqa: BLE001 - reported as the raw status
                    code = "?"
            row = (response.status, started, time.time(), code)
            results[index] = row + ({name: response.getheader(name) for name in headers},) if headers else row
        finally:
            conn.close()

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    try:
        barrier.wait(timeout=120)  # every client process has its threads connected
    finally:
        ready.wait(timeout=120)
    for thread in threads:
        thread.join(timeout=180)
    queue.put(results)


def fire_from_processes(base: str, key: str, path: str, *, processes: int, threads: int,
                        questions=None, headers: tuple[str, ...] = ()) -> list[tuple]:
    """``processes`` spawned client processes of ``threads`` calls each, all released at once; every row."""
    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=fire, args=(base, key, path, n * threads, threads, barrier, queue, questions, headers),
                         daemon=True) for n in range(processes)]
    for proc in procs:
        proc.start()
    try:
        return [row for _ in procs for row in queue.get(timeout=150)]
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals ``[start, end)`` open at one instant."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    best = current = 0
    for _, delta in events:
        current += delta
        best = max(best, current)
    return best
