"""A real Celery worker on Redis is killed (kill -9) while it applies a scheduled deploy.

The first worker is made slow inside the deploy's transaction (the test hook
FRUXON_TEST_SCHEDULED_DEPLOY_DELAY, honoured only with FRUXON_TESTING): it has
claimed the row, moved the pointer and written the Deployment row, none of it
committed, when it dies. Nothing is half-applied: no Deployment row, the
pointer unchanged, the schedule still pending. The tick was acked late, so
Redis hands it to a second worker after the visibility timeout, which applies
the deploy exactly once.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import pytest
import redis
from celery import Celery
from django.db import connection, transaction
from django.utils import timezone

from agents.models import Agent
from agents.services import create_revision
from deployments import scheduling
from deployments.models import Deployment, ScheduledDeployment
from orgs.models import AuditEvent

from . import factories as f
from .builders import SYSTEM, agent_with_revision, local_spec
from .server import ROOT, database_url

REDIS_URL = os.environ.get("FRUXON_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def _worker(name: str, log, **extra_env) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != scheduling.TEST_DELAY_ENV}
    env |= {"DATABASE_URL": database_url(), "REDIS_URL": REDIS_URL, "FRUXON_TESTING": "1",
            "FRUXON_VISIBILITY_TIMEOUT": "4", **extra_env}
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "fruxon", "worker", "-Q", "default", "--pool", "threads", "-c", "2",
         "--prefetch-multiplier", "1", "-n", f"{name}@%h", "-l", "info", "--without-mingle", "--without-gossip",
         "--without-heartbeat"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )


def _wait(predicate, timeout: float, what: str, log_path=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    tail = log_path.read_text()[-3000:] if log_path else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


def _uncommitted_deployment_writer() -> bool:
    """Another session holds a write lock on the Deployment table: it inserted a row, not committed."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
            "WHERE d.datname = current_database() AND l.relation = 'deployments_deployment'::regclass "
            "AND l.mode = 'RowExclusiveLock' AND l.granted AND l.pid <> pg_backend_pid()")
        return cursor.fetchone()[0] > 0


def _row_is_locked(pk: int) -> bool:
    with transaction.atomic():
        return not list(ScheduledDeployment.objects.select_for_update(skip_locked=True).filter(pk=pk))


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.mark.django_db(transaction=True)
def test_worker_killed_mid_scheduled_deploy_leaves_it_pending_then_it_is_done_once(tmp_path):
    assert connection.vendor == "postgresql", "this test is about PostgreSQL transactions and row locks"
    redis.Redis.from_url(REDIS_URL).flushdb()
    org = f.OrganizationFactory(slug="acme")
    agent, v1 = agent_with_revision(org, "support", local_spec("v1"))
    v2 = create_revision(actor=SYSTEM, agent=agent, spec=local_spec("v2"), message="v2")
    row = scheduling.schedule(actor=SYSTEM, agent=agent, revision_id=v2.id,
                              run_at=timezone.now() + timedelta(minutes=1), reason="night window")
    ScheduledDeployment.objects.filter(pk=row.pk).update(run_at=timezone.now() - timedelta(seconds=1))  # due now
    producer = Celery("fruxon-test-producer", broker=REDIS_URL, backend=REDIS_URL)
    log_path = tmp_path / "workers.log"
    log = open(log_path, "w")
    t0 = time.monotonic()

    first = _worker("first", log, **{scheduling.TEST_DELAY_ENV: "60"})
    try:
        killed_task = producer.send_task("deployments.tick_scheduled", queue="default")
        _wait(_uncommitted_deployment_writer, 40, "the first worker to write the deploy", log_path)
        assert _row_is_locked(row.pk), "the worker must hold the schedule row while it deploys"
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=10)
    assert first.returncode == -signal.SIGKILL

    # PostgreSQL rolled the dead session back: nothing of the deploy remains, the row is pending again
    _wait(lambda: not _uncommitted_deployment_writer() and not _row_is_locked(row.pk), 20, "the rollback")
    row.refresh_from_db()
    assert row.status == "pending" and row.deployment_id is None and row.finished_at is None
    assert not Deployment.objects.exists()
    assert Agent.objects.get(pk=agent.pk).deployed_revision_id == v1.id
    assert not AuditEvent.objects.filter(action="agent.scheduled").exists()
    killed_at = time.monotonic() - t0

    second = _worker("second", log)
    try:
        # the killed worker's tick was never acked: Redis redelivers it to the second worker
        _wait(lambda: ScheduledDeployment.objects.get(pk=row.pk).status != "pending", 40,
              "the redelivered tick", log_path)
        # and one more tick, now that it is done, changes nothing
        assert producer.send_task("deployments.tick_scheduled", queue="default").get(timeout=30) == []
    finally:
        _stop(second)
        log.close()
    print(f"killed after {killed_at:.1f}s; done after {time.monotonic() - t0:.1f}s")

    row.refresh_from_db()
    worker_log = log_path.read_text()
    assert row.status == "done", worker_log[-3000:]
    # it was the killed worker's own tick, redelivered, that applied it
    assert f"Task deployments.tick_scheduled[{killed_task.id}] succeeded" in worker_log
    assert f"s: [{row.pk}]" in worker_log.split(f"tick_scheduled[{killed_task.id}] succeeded", 1)[1].splitlines()[0]
    deployment = Deployment.objects.get()
    assert (deployment.kind, deployment.from_revision_id, deployment.to_revision_id, deployment.actor_label) == (
        "scheduled", v1.id, v2.id, "system")
    assert row.deployment_id == deployment.pk
    assert Agent.objects.get(pk=agent.pk).deployed_revision_id == v2.id
    assert AuditEvent.objects.filter(action="agent.scheduled").count() == 1
