"""Deploy and roll back 20 times while 200 executes run against a real gunicorn process.

No execute may fail, and each run's output must be the one its recorded
revision scripts: the switch is atomic and in-flight requests keep their
revision (DESIGN rule 5).
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from agents.services import create_revision
from monitoring.models import Run

from . import factories as f
from .builders import SYSTEM, agent_with_revision, local_spec
from .server import gunicorn

EXECUTES, FLIPS = 200, 20


@pytest.mark.django_db(transaction=True)
def test_deploys_and_rollbacks_under_load_drop_nothing():
    org = f.OrganizationFactory(slug="acme")
    owner = f.member(org, "owner", "olivia")
    agent, v1 = agent_with_revision(org, "support", local_spec("served by v1", latency_ms=20), deploy=False)
    v2 = create_revision(actor=SYSTEM, agent=agent, spec=local_spec("served by v2", latency_ms=20))
    expected = {v1.id: "served by v1", v2.id: "served by v2"}
    _, run_key = f.api_key(org, preset="runner")
    _, deploy_key = f.api_key(org, scopes=["revisions:deploy"])
    assert owner.pk

    with gunicorn() as base:
        headers = {"X-API-KEY": deploy_key}
        first = httpx.post(f"{base}/v1/acme/agents/support:deploy", headers=headers, json={"revisionId": v1.id}, timeout=30)
        assert first.status_code == 201, first.text
        flip_answers = []

        def flip():
            with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
                for i in range(FLIPS):
                    if i % 2 == 0:
                        answer = client.post("/v1/acme/agents/support:deploy", json={"revisionId": v2.id, "reason": f"flip {i}"})
                    else:
                        answer = client.post("/v1/acme/agents/support:rollback", json={"reason": f"flip {i}"})
                    flip_answers.append(answer.status_code)

        def execute(n: int):
            with httpx.Client(base_url=base, timeout=60) as client:
                return client.post("/v1/acme/agents/support:execute", headers={"X-API-KEY": run_key},
                                   json={"input": {"question": f"q{n}"}})

        flipper = threading.Thread(target=flip)
        flipper.start()
        with ThreadPoolExecutor(max_workers=16) as pool:
            responses = list(pool.map(execute, range(EXECUTES)))
        flipper.join()

    assert flip_answers == [201] * FLIPS
    bad = [(r.status_code, r.text[:200]) for r in responses if r.status_code != 200]
    assert not bad, bad[:5]
    bodies = [r.json() for r in responses]
    assert all(body["output"] == expected[body["revisionId"]] for body in bodies)
    runs = dict(Run.objects.filter(agent=agent).values_list("id", "revision_id"))
    assert len(runs) == EXECUTES
    assert all(runs[b["runId"]] == b["revisionId"] for b in bodies)
    assert {b["revisionId"] for b in bodies} == {v1.id, v2.id}, "the flips should overlap the executes"
