"""50 concurrent executes against a real server while the deployed pointer flips.

Each run resolves its revision once at the start (DESIGN rule 5): every answer
must be the output its recorded revision scripts, and none may fail.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from django.db import connection

from agents.models import Agent
from agents.services import create_revision
from monitoring.models import Run

from . import factories as f
from .builders import SYSTEM, agent_with_revision, local_spec


@pytest.mark.django_db(transaction=True)
def test_concurrent_executes_while_deploy_pointer_flips(live_server):
    org = f.OrganizationFactory(slug="acme")
    agent, v1 = agent_with_revision(org, "support", local_spec("answer from v1", latency_ms=30))
    revisions = [v1] + [create_revision(actor=SYSTEM, agent=agent, spec=local_spec(f"answer from v{i}", latency_ms=30))
                        for i in (2, 3)]
    expected = {rev.id: f"answer from v{i}" for i, rev in enumerate(revisions, start=1)}
    _, key = f.api_key(org, preset="runner")

    stop = threading.Event()
    flips = []

    def flip():
        i = 0
        try:
            while not stop.is_set():
                i += 1
                target = revisions[i % len(revisions)]
                Agent.objects.filter(pk=agent.pk).update(deployed_revision=target)
                flips.append(target.id)
                time.sleep(0.02)
        finally:
            connection.close()

    def call(n: int):
        with httpx.Client(base_url=live_server.url, timeout=30) as client:
            return client.post("/v1/acme/agents/support:execute", headers={"X-API-KEY": key},
                               json={"input": {"question": f"q{n}"}})

    flipper = threading.Thread(target=flip)
    flipper.start()
    try:
        with ThreadPoolExecutor(max_workers=16) as pool:
            responses = list(pool.map(call, range(50)))
    finally:
        stop.set()
        flipper.join()

    assert len(set(flips)) >= 3 and len(flips) >= 6, "the pointer must really have changed several times"
    assert [r.status_code for r in responses] == [200] * 50, [r.text for r in responses if r.status_code != 200][:3]
    bodies = [r.json() for r in responses]
    for body in bodies:
        assert body["output"] == expected[body["revisionId"]], body
    runs = {run.id: run for run in Run.objects.filter(agent=agent)}
    assert len(runs) == 50
    for body in bodies:
        run = runs[body["runId"]]
        assert run.revision_id == body["revisionId"] and run.output == expected[run.revision_id] and run.status == "ok"
    assert len({b["revisionId"] for b in bodies}) >= 2, "runs should have landed on more than one revision"
