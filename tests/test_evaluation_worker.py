"""200 cases on a real Celery worker with Redis; the worker is killed mid-run, a new one finishes.

Exactly 200 results must exist at the end: chunks are acked late, a killed
worker's chunk comes back from Redis after the visibility timeout, and results
are unique per (evaluation, case), so the resumed work adds what is missing and
nothing twice.

Exactly 200 Runs too: a case's Run and its result are written in one
transaction, so a case that has a Run is never executed again, and what the
killed worker had executed but not written is simply executed once more (its
Runs were never recorded).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import redis
from celery import Celery

from evaluations.models import CaseResult, EvaluationRun
from evaluations.services import datasets, dispatch, runs
from monitoring.models import Run

from . import factories as f
from .builders import SYSTEM, agent_with_revision, local_spec
from .server import ROOT, database_url

CASES = 200
REDIS_URL = os.environ.get("FRUXON_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def _worker(name: str, log) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items()}
    env |= {"DATABASE_URL": database_url(), "REDIS_URL": REDIS_URL, "FRUXON_TESTING": "1",
            "FRUXON_VISIBILITY_TIMEOUT": "4"}
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "fruxon", "worker", "-Q", "evaluations,default", "--pool", "threads",
         "-c", "4", "--prefetch-multiplier", "1", "-n", f"{name}@%h", "-l", "warning", "--without-mingle",
         "--without-gossip", "--without-heartbeat"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.django_db(transaction=True)
def test_killed_worker_resumes_without_duplicates(monkeypatch, tmp_path):
    redis.Redis.from_url(REDIS_URL).flushdb()
    org = f.OrganizationFactory(slug="acme")
    agent, revision = agent_with_revision(org, "support", local_spec("answer {{input.question}}", latency_ms=40))
    dataset = datasets.create_dataset(actor=SYSTEM, organization=org, slug="golden", metrics=[{"type": "contains"}])
    datasets.add_cases_bulk(actor=SYSTEM, dataset=dataset, cases=[
        {"input": {"question": f"q{i}"}, "expected": f"q{i}"} for i in range(CASES)])
    monkeypatch.setattr(dispatch, "enqueue", lambda evaluation_id: None)  # sent to the real broker below
    evaluation = runs.start(actor=SYSTEM, agent=agent, revision_id=revision.id, dataset=dataset)
    producer = Celery("fruxon-test-producer", broker=REDIS_URL)

    log = open(tmp_path / "workers.log", "w")
    t0 = time.monotonic()
    first = _worker("first", log)
    try:
        producer.send_task("evaluations.run_evaluation", args=[evaluation.id], queue="evaluations")
        _wait(lambda: CaseResult.objects.filter(evaluation=evaluation).count() >= 30, 90, "the first results")
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
    killed_at = CaseResult.objects.filter(evaluation=evaluation).count()
    assert killed_at < CASES, "the worker must be killed mid-run"
    assert Run.objects.filter(agent=agent, source="evaluation").count() == killed_at  # no Run without its result

    t_killed = time.monotonic() - t0
    second = _worker("second", log)
    try:
        _wait(lambda: EvaluationRun.objects.get(pk=evaluation.pk).status == "completed", 120, "completion")
    finally:
        second.send_signal(signal.SIGTERM)
        try:
            second.wait(timeout=20)
        except subprocess.TimeoutExpired:
            second.kill()
    log.close()
    print(f"killed after {t_killed:.1f}s with {killed_at} results; done after {time.monotonic() - t0:.1f}s")
    results = CaseResult.objects.filter(evaluation=evaluation)
    assert results.count() == CASES, (tmp_path / "workers.log").read_text()[-3000:]
    assert len(set(results.values_list("case_id", flat=True))) == CASES
    evaluation_runs = Run.objects.filter(agent=agent, source="evaluation")
    assert evaluation_runs.count() == CASES, "a case recorded before the kill was executed again"
    assert set(results.values_list("run_id", flat=True)) == set(evaluation_runs.values_list("id", flat=True))
    evaluation.refresh_from_db()
    assert evaluation.status == "completed" and evaluation.pass_rate == 1.0 and evaluation.overall_score == 1.0
