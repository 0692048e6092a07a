"""The demo: `manage.py demo` on a fresh SQLite file with no Redis seeds and serves."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from fruxon.demo import DEMO_KEY

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str, headers: dict | None = None):
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status, response.read()


def test_demo_seeds_and_serves_on_fresh_sqlite(tmp_path):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "FRUXON_TESTING"}}
    env |= {"DATABASE_URL": f"sqlite:///{tmp_path / 'demo.sqlite3'}", "DEBUG": "1"}
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "demo", "--addrport", f"127.0.0.1:{port}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                status, body = _get(f"http://127.0.0.1:{port}/v1/schema")
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "demo server did not come up"
                time.sleep(0.3)
        assert status == 200 and b"openapi" in body and b"/v1/{tenant}/secrets/{name}" in body
        status, body = _get(f"http://127.0.0.1:{port}/v1/demo/integrations", {"X-API-KEY": DEMO_KEY})
        assert status == 200 and json.loads(body)["results"][0]["slug"] == "shop-api"
        status, body = _get(f"http://127.0.0.1:{port}/admin/login/")
        assert status == 200 and b"csrfmiddlewaretoken" in body
    finally:
        proc.terminate()
        output = proc.communicate(timeout=10)[0]
    assert "owner / owner-pass-123" in output and DEMO_KEY in output
    assert (tmp_path / "demo.sqlite3").exists()
