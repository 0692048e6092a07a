"""Start the app as production does (the README's command: gunicorn managing uvicorn workers, ASGI)
against the test database. ``kind="gthread"`` starts the former WSGI command, for comparisons."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_url() -> str:
    s = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{s['NAME']}"
    host, port = s.get("HOST") or "127.0.0.1", s.get("PORT") or 5432
    auth = s["USER"] + (f":{s['PASSWORD']}" if s.get("PASSWORD") else "") + "@" if s.get("USER") else ""
    return f"postgres://{auth}{host}:{port}/{s['NAME']}"


@contextmanager
def gunicorn(workers: int = 2, threads: int = 16, extra_env: dict | None = None, kind: str = "asgi"):
    """Yield the base URL of a server on the current test database (data must be committed)."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL"}}
    env |= {"DATABASE_URL": database_url(), "FRUXON_TESTING": "1", "DEBUG": "0", **(extra_env or {})}
    if kind == "asgi":
        command = ["fruxon.asgi:application", "-k", "uvicorn_worker.UvicornWorker", "--workers", str(workers)]
    else:
        command = ["fruxon.wsgi", "-k", "gthread", "--workers", str(workers), "--threads", str(threads)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", *command, "-b", f"127.0.0.1:{port}", "--log-level", "warning"],
        cwd=ROOT, env=env, stderr=subprocess.STDOUT, text=True,
        # FRUXON_TEST_SERVER_LOG=path keeps the server's log (to see why a live test failed).
        stdout=open(os.environ["FRUXON_TEST_SERVER_LOG"], "a") if os.environ.get("FRUXON_TEST_SERVER_LOG") else subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):  # not listening yet
                if httpx.get(f"{base}/v1/schema", timeout=5).status_code == 200:
                    break
            if proc.poll() is not None:
                raise RuntimeError("gunicorn exited: " + (proc.stdout.read() if proc.stdout else ""))
            if time.monotonic() > deadline:
                raise RuntimeError("gunicorn did not come up")
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
