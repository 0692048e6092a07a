"""One evaluation chunk, delivered more than once: each case runs, is recorded and is charged once.

``evaluate_chunk`` is acked late, so Redis hands a chunk to another worker when
the first one dies. These tests play the deliveries in process: the task called
twice, a worker dying in the middle of a chunk (a crash injected between two
cases), a cancel landing while a chunk is in flight, and the same chunk
evaluated twice at the same moment.
"""
from __future__ import annotations

import logging
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.cache import cache
from django.utils import timezone

from evaluations import tasks
from evaluations.models import CaseResult, EvaluationRun
from evaluations.services import datasets, dispatch, runs
from monitoring.ledger import BudgetState, from_units, ledger
from monitoring.models import Budget, Run
from monitoring.pricing import set_overrides

from .builders import SYSTEM, agent_with_revision, local_spec

CASES = 10


class WorkerKilled(BaseException):
    """Stands for SIGKILL: nothing after it in the process runs (not even ``except Exception``)."""


@pytest.fixture
def evaluation(org, monkeypatch):
    """A queued evaluation of 10 priced cases; the agent has a budget, so every model call is charged."""
    agent, revision = agent_with_revision(org, "support", local_spec("answer {{input.question}}"))
    set_overrides(actor=SYSTEM, organization=org, agent=agent, rows=[{
        "provider": "fruxon-local", "model": "*", "inputPerMillion": Decimal("10000"), "outputPerMillion": Decimal("10000")}])
    Budget.objects.create(organization=org, agent=agent, period="day", amount_usd=Decimal("1000"), enforce=True)
    dataset = datasets.create_dataset(actor=SYSTEM, organization=org, slug="golden", metrics=[{"type": "contains"}])
    datasets.add_cases_bulk(actor=SYSTEM, dataset=dataset, cases=[
        {"input": {"question": f"q{i}"}, "expected": f"q{i}"} for i in range(CASES)])
    monkeypatch.setattr(dispatch, "enqueue", lambda evaluation_id: None)  # deliveries are played by each test
    return runs.start(actor=SYSTEM, agent=agent, revision_id=revision.id, dataset=dataset)


def _runs(evaluation) -> int:
    return Run.objects.filter(agent_id=evaluation.agent_id, source="evaluation").count()


def _charged(evaluation) -> Decimal:
    """What the budget ledger holds as spent for the agent today."""
    state = BudgetState.of(Budget.objects.get(agent_id=evaluation.agent_id), timezone.now())
    return from_units(ledger().usage(state)[0])


def _recorded(evaluation) -> Decimal:
    return sum((r.cost_usd for r in Run.objects.filter(agent_id=evaluation.agent_id)), Decimal("0"))


def _kill_before_case(monkeypatch, number: int) -> None:
    """The worker dies just before evaluating its ``number``-th case (1-based)."""
    real, calls = runs.evaluate_case, {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == number:
            raise WorkerKilled()
        return real(*args, **kwargs)

    monkeypatch.setattr(runs, "evaluate_case", dying)


def _kill_after_recording(monkeypatch, number: int) -> None:
    """The worker dies right after the write that recorded its ``number``-th Run, before anything else."""
    from monitoring import recording

    real, calls = recording.record_runs, {"n": 0}

    def dying(*args, **kwargs):
        written = real(*args, **kwargs)
        calls["n"] += len(written)
        if calls["n"] >= number:
            raise WorkerKilled()
        return written

    monkeypatch.setattr(runs, "record_runs", dying)


KILLS = {"before-case": _kill_before_case, "after-run-recorded": _kill_after_recording}


def test_chunk_task_delivered_twice_runs_each_case_once(evaluation, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        first = tasks.evaluate_chunk.apply(args=[evaluation.id, evaluation.case_ids]).get()
    assert first == CASES and _runs(evaluation) == CASES
    charged = _charged(evaluation)
    assert charged > 0 and charged == _recorded(evaluation)
    with django_capture_on_commit_callbacks(execute=True):
        again = tasks.evaluate_chunk.apply(args=[evaluation.id, evaluation.case_ids]).get()
    assert again == 0
    assert _runs(evaluation) == CASES and _charged(evaluation) == charged  # nothing re-executed, nothing re-charged
    results = CaseResult.objects.filter(evaluation=evaluation)
    assert results.count() == CASES and len({r.run_id for r in results}) == CASES and None not in {r.run_id for r in results}
    evaluation.refresh_from_db()
    assert evaluation.status == "completed" and evaluation.overall_score == 1.0


@pytest.mark.parametrize("kill", sorted(KILLS))
@pytest.mark.parametrize("flush_seconds", [0.0, 3600.0], ids=["flushed-after-each-case", "flushed-at-chunk-end"])
def test_worker_killed_mid_chunk_resumes_without_duplicate_runs(evaluation, monkeypatch, flush_seconds, kill,
                                                                 django_capture_on_commit_callbacks):
    monkeypatch.setattr(runs, "FLUSH_SECONDS", flush_seconds, raising=False)
    KILLS[kill](monkeypatch, 5)
    with pytest.raises(WorkerKilled):
        runs.evaluate_chunk(evaluation.id, evaluation.case_ids)
    written = CaseResult.objects.filter(evaluation=evaluation).count()
    # Runs and results are written together: whatever the dead worker had recorded has its result too
    assert written == (4 if flush_seconds == 0 else 0)
    assert _runs(evaluation) == written
    monkeypatch.undo()  # the chunk comes back to a healthy worker...
    cache.clear()  # ...after the dead worker's case claims expired (FRUXON_EVALUATION_CLAIM_SECONDS)
    with django_capture_on_commit_callbacks(execute=True):
        assert tasks.evaluate_chunk.apply(args=[evaluation.id, evaluation.case_ids]).get() == CASES - written
    assert CaseResult.objects.filter(evaluation=evaluation).count() == CASES
    assert _runs(evaluation) == CASES  # the recorded cases were not executed again
    # What the dead worker had executed but not written (when it flushes only at the chunk's end: at
    # most FLUSH_SECONDS of work per worker slot) was really spent at the provider, so the ledger keeps
    # it; every recorded case was charged exactly once.
    per_case = _recorded(evaluation) / CASES
    if kill == "before-case":
        executed_before_kill = 4
    else:  # killed while writing: after the 5th case (flushing each case), or in the chunk's one flush
        executed_before_kill = 5 if flush_seconds == 0 else CASES
    assert _charged(evaluation) == _recorded(evaluation) + (executed_before_kill - written) * per_case
    assert EvaluationRun.objects.get(pk=evaluation.pk).status == "completed"


def test_cancel_while_a_chunk_is_in_flight_writes_no_result(evaluation):
    chunk = runs._load_chunk(evaluation.id)
    runs.mark_running(evaluation.id)
    cases = list(evaluation.dataset.cases.order_by("id")[:3])
    done = [runs.evaluate_case(chunk, case) for case in cases]  # executed, not yet written...
    runs.cancel(actor=SYSTEM, evaluation=evaluation)  # ...when the cancel commits
    written, running, _ = runs._flush(chunk, done)
    assert (written, running) == (0, False)
    assert not CaseResult.objects.filter(evaluation=evaluation).exists()
    # the model calls did happen: their runs are recorded (and their cost stays on the ledger)
    assert _runs(evaluation) == 3 and _charged(evaluation) == _recorded(evaluation)
    assert runs.evaluate_chunk(evaluation.id, evaluation.case_ids) == 0 and _runs(evaluation) == 3
    assert EvaluationRun.objects.get(pk=evaluation.pk).status == "cancelled"


def test_same_chunk_evaluated_twice_at_once_keeps_the_first_result(evaluation, caplog):
    """Redis re-delivered a chunk past its visibility timeout while the first worker was still on it."""
    chunk = runs._load_chunk(evaluation.id)
    runs.mark_running(evaluation.id)
    case = evaluation.dataset.cases.order_by("id").first()
    first, second = runs.evaluate_case(chunk, case), runs.evaluate_case(chunk, case)
    assert runs._flush(chunk, [first])[0] == 1
    with caplog.at_level(logging.WARNING, logger="evaluations.services.runs"):
        assert runs._flush(chunk, [second])[0] == 0
    assert "evaluated twice at once" in caplog.text
    result = CaseResult.objects.get(evaluation=evaluation, case=case)
    assert result.run_id == first.case_result.run.id
    # both executions really called the model: both runs are recorded and charged, one result counts
    assert _runs(evaluation) == 2 and _charged(evaluation) == _recorded(evaluation)


@pytest.mark.django_db(transaction=True)
def test_the_last_two_chunks_finishing_together_complete_the_evaluation(monkeypatch):
    """Two workers write the last two chunks at the same moment: one of them must finalize."""
    import threading

    from django.db import connection

    from . import factories as f

    org = f.OrganizationFactory(slug="acme")
    agent, revision = agent_with_revision(org, "support", local_spec("answer {{input.question}}"))
    dataset = datasets.create_dataset(actor=SYSTEM, organization=org, slug="golden", metrics=[{"type": "contains"}])
    datasets.add_cases_bulk(actor=SYSTEM, dataset=dataset, cases=[
        {"input": {"question": f"q{i}"}, "expected": f"q{i}"} for i in range(2)])
    monkeypatch.setattr(dispatch, "enqueue", lambda evaluation_id: None)
    evaluation = runs.start(actor=SYSTEM, agent=agent, revision_id=revision.id, dataset=dataset)
    both_inserted = threading.Barrier(2, timeout=30)
    real_insert = runs._insert_results

    def insert_then_wait(rows):
        inserted = real_insert(rows)
        both_inserted.wait()  # neither transaction has committed yet
        return inserted

    monkeypatch.setattr(runs, "_insert_results", insert_then_wait)
    errors = []

    def worker(case_id):
        try:
            runs.evaluate_chunk(evaluation.id, [case_id])
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(case_id,)) for case_id in evaluation.case_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    evaluation.refresh_from_db()
    assert CaseResult.objects.filter(evaluation=evaluation).count() == 2
    assert evaluation.status == "completed" and evaluation.overall_score == 1.0


def test_cases_another_delivery_holds_are_skipped_until_its_claims_expire(evaluation):
    """The same chunk delivered twice at once: the cases one delivery holds, the other does not run."""
    held = evaluation.case_ids[:4]
    for case_id in held:  # the first delivery is running these right now
        assert runs.claim_case(evaluation.id, case_id)
    assert runs.evaluate_chunk(evaluation.id, evaluation.case_ids) == CASES - 4
    assert _runs(evaluation) == CASES - 4 and _charged(evaluation) == _recorded(evaluation)
    assert not CaseResult.objects.filter(evaluation=evaluation, case_id__in=held).exists()
    assert EvaluationRun.objects.get(pk=evaluation.pk).status == "running"  # not complete without them
    for case_id in held:  # the first delivery died; its claims expire
        runs.release_claim(evaluation.id, case_id)
    assert runs.evaluate_chunk(evaluation.id, evaluation.case_ids) == 4
    assert _runs(evaluation) == CASES and EvaluationRun.objects.get(pk=evaluation.pk).status == "completed"


def test_unreachable_ledger_leaves_the_case_for_later_instead_of_scoring_it(evaluation, settings):
    """A ledger outage is not the revision's fault: no result (no 0 score), the evaluation keeps running."""
    assert runs.evaluate_chunk(evaluation.id, evaluation.case_ids[:3]) == 3
    settings.FRUXON_LEDGER, settings.FRUXON_LEDGER_REDIS_URL = "redis", "redis://127.0.0.1:1/0"
    assert runs.evaluate_chunk(evaluation.id, evaluation.case_ids[3:]) == 0
    assert CaseResult.objects.filter(evaluation=evaluation).count() == 3
    failed_run = Run.objects.get(agent_id=evaluation.agent_id, source="evaluation", status="error")
    assert failed_run.error["code"] == "ledger_unavailable" and failed_run.cost_usd == 0
    stuck = EvaluationRun.objects.get(pk=evaluation.pk)
    assert stuck.status == "running" and stuck.error == ""
    settings.FRUXON_LEDGER = "database"  # the ledger is back; the case's claim was released at once
    assert runs.evaluate_chunk(evaluation.id, evaluation.case_ids[3:]) == CASES - 3
    done = EvaluationRun.objects.get(pk=evaluation.pk)
    assert done.status == "completed" and done.overall_score == 1.0


def test_budget_cap_fails_the_evaluation_with_its_reason(evaluation):
    """The agent's cap is reached mid-evaluation: it stops, failed, instead of scoring refused cases 0."""
    assert runs.evaluate_chunk(evaluation.id, evaluation.case_ids[:2]) == 2
    Budget.objects.filter(agent_id=evaluation.agent_id).update(amount_usd=_recorded(evaluation))  # now exhausted
    assert runs.evaluate_chunk(evaluation.id, evaluation.case_ids[2:]) == 0
    failed = EvaluationRun.objects.get(pk=evaluation.pk)
    assert failed.status == "failed" and "budget cap" in failed.error and failed.finished_at
    assert CaseResult.objects.filter(evaluation=evaluation).count() == 2
    assert Run.objects.filter(agent_id=evaluation.agent_id, status="budget_exceeded").count() == 1
    assert runs.evaluate_chunk(evaluation.id, evaluation.case_ids) == 0  # later deliveries do nothing


def test_run_evaluation_delivered_twice_fans_out_once(evaluation, monkeypatch):
    sent = []
    monkeypatch.setattr(tasks.evaluate_chunk, "delay", lambda *args: sent.append(args))
    assert tasks.run_evaluation(evaluation.id) == len(runs.chunks(evaluation.case_ids))
    first = list(sent)
    assert sorted(c for _, part in first for c in part) == sorted(evaluation.case_ids)
    assert tasks.run_evaluation(evaluation.id) == 0 and sent == first  # the redelivery sends nothing


class TestResumeStalled:
    """``resume_stalled``: lost sends and dead workers are resumed, once per window, and not forever."""

    def test_a_running_evaluation_without_progress_gets_its_missing_cases_again(self, evaluation,
                                                                                django_capture_on_commit_callbacks):
        assert runs.evaluate_chunk(evaluation.id, evaluation.case_ids[:4]) == 4  # then the worker died
        later = timezone.now() + tasks.STALL_AFTER + timedelta(seconds=1)
        assert tasks.resume_stalled(now=later - timedelta(minutes=1)) == []  # not stalled yet
        with django_capture_on_commit_callbacks(execute=True):
            assert tasks.resume_stalled(now=later) == [evaluation.id]  # eager Celery: the chunks run at once
        done = EvaluationRun.objects.get(pk=evaluation.pk)
        assert done.status == "completed" and done.resumes == 1 and done.resumed_at == later
        assert _runs(evaluation) == CASES

    def test_a_queued_evaluation_whose_send_was_lost_is_sent_again(self, evaluation):
        later = evaluation.created_at + tasks.STALL_AFTER + timedelta(seconds=1)
        assert tasks.resume_stalled(now=later) == [evaluation.id]
        assert EvaluationRun.objects.get(pk=evaluation.pk).status == "completed"

    def test_once_per_window_and_failed_after_the_cap(self, evaluation, monkeypatch):
        sent = []
        monkeypatch.setattr(tasks.evaluate_chunk, "delay", lambda *args: sent.append(args))  # workers all dead
        runs.mark_running(evaluation.id)
        now = timezone.now() + tasks.STALL_AFTER + timedelta(seconds=1)
        for attempt in range(1, tasks.MAX_RESUMES + 1):
            assert tasks.resume_stalled(now=now) == [evaluation.id]
            assert tasks.resume_stalled(now=now + timedelta(minutes=1)) == []  # a minute later: not again
            assert EvaluationRun.objects.get(pk=evaluation.pk).resumes == attempt
            now += tasks.STALL_AFTER + timedelta(seconds=1)
        assert len(sent) == tasks.MAX_RESUMES * len(runs.chunks(evaluation.case_ids))
        assert tasks.resume_stalled(now=now) == []
        failed = EvaluationRun.objects.get(pk=evaluation.pk)
        assert failed.status == "failed" and "No progress" in failed.error
        assert len(sent) == tasks.MAX_RESUMES * len(runs.chunks(evaluation.case_ids))  # nothing more sent

    def test_progress_between_resumes_resets_the_count(self, evaluation, monkeypatch):
        monkeypatch.setattr(tasks.evaluate_chunk, "delay", lambda *args: None)
        runs.mark_running(evaluation.id)
        now = timezone.now() + tasks.STALL_AFTER + timedelta(seconds=1)
        for _ in range(3):
            tasks.resume_stalled(now=now)
            now += tasks.STALL_AFTER * 2
        assert EvaluationRun.objects.get(pk=evaluation.pk).resumes == 3
        runs.evaluate_chunk(evaluation.id, evaluation.case_ids[:1])  # a worker came back and wrote one result...
        CaseResult.objects.filter(evaluation=evaluation).update(created_at=now - tasks.STALL_AFTER * 1.5)  # after the last resume
        assert tasks.resume_stalled(now=now) == [evaluation.id]  # ...then stalled again
        assert EvaluationRun.objects.get(pk=evaluation.pk).resumes == 1


def test_a_message_delivered_again_takes_its_own_claims_back(evaluation):
    """Its worker died (cold shutdown): Redis hands the same message, same task id, to the next worker at once."""
    for case_id in evaluation.case_ids[:3]:
        assert runs.claim_case(evaluation.id, case_id, owner="task-1")
    assert not runs.claim_case(evaluation.id, evaluation.case_ids[0], owner="task-2")  # another message may not
    assert runs.evaluate_chunk(evaluation.id, evaluation.case_ids, owner="task-1") == CASES
    assert _runs(evaluation) == CASES


def test_claim_lease_covers_two_cases_at_their_timeouts(settings):
    settings.FRUXON_EVALUATION_CLAIM_SECONDS = 240
    assert runs.claim_lease({"timeoutSeconds": 30}, [{"type": "exact"}]) == 240  # never below the setting
    assert runs.claim_lease({"timeoutSeconds": 600}, [{"type": "llmJudge"}]) == 2 * (600 + 60) + 60


def test_resume_waits_while_a_worker_holds_cases_or_the_queue_is_busy(evaluation, monkeypatch):
    sent = []
    monkeypatch.setattr(tasks.evaluate_chunk, "delay", lambda *args: sent.append(args))
    runs.mark_running(evaluation.id)
    later = timezone.now() + tasks.STALL_AFTER + timedelta(seconds=1)
    assert runs.claim_case(evaluation.id, evaluation.case_ids[-1], owner="slow-task")  # a slow case in flight
    assert tasks.resume_stalled(now=later) == [] and sent == []
    runs.release_claim(evaluation.id, evaluation.case_ids[-1])
    monkeypatch.setattr(tasks, "queue_backlog", lambda queue="evaluations": 7)  # its chunks may be waiting
    assert tasks.resume_stalled(now=later) == [] and sent == []
    assert EvaluationRun.objects.get(pk=evaluation.pk).resumes == 0  # neither counts toward failing it
    monkeypatch.setattr(tasks, "queue_backlog", lambda queue="evaluations": 0)
    assert tasks.resume_stalled(now=later) == [evaluation.id] and sent


def test_queue_backlog_reads_the_redis_broker(monkeypatch):
    import os

    from fruxon.celery import app

    url = os.environ.get("FRUXON_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    monkeypatch.setitem(app.conf, "broker_url", url)
    monkeypatch.setitem(app.conf, "task_always_eager", False)
    queue = "fruxon-test-backlog"
    with app.connection_for_write() as connection:
        assert connection.transport.driver_type == "redis"  # the real broker, not the memory transport
        channel = connection.default_channel
        channel.queue_declare(queue=queue)
        channel.queue_purge(queue)
        try:
            assert tasks.queue_backlog(queue) == 0
            for _ in range(3):
                app.send_task("evaluations.evaluate_chunk", args=["eval_x", [1]], queue=queue,
                              connection=connection)
            assert tasks.queue_backlog(queue) == 3
        finally:
            channel.queue_purge(queue)
            channel.queue_delete(queue)


@pytest.mark.django_db(transaction=True)
def test_two_compares_at_once_start_one_deployed_baseline(monkeypatch):
    """Two callers find the deployed baseline missing at the same moment: one evaluation starts, not two."""
    import threading

    from django.db import connection

    from agents.services import create_revision
    from evaluations.services import compare

    from . import factories as f

    org = f.OrganizationFactory(slug="acme")
    agent, deployed = agent_with_revision(org, "support", local_spec("answer {{input.question}}"))
    candidate = create_revision(actor=SYSTEM, agent=agent, spec=local_spec("{{input.question}}!"))
    dataset = datasets.create_dataset(actor=SYSTEM, organization=org, slug="golden", metrics=[{"type": "contains"}])
    datasets.add_cases_bulk(actor=SYSTEM, dataset=dataset, cases=[{"input": {"question": "q"}, "expected": "q"}])
    monkeypatch.setattr(dispatch, "enqueue", lambda evaluation_id: None)
    evaluation = runs.start(actor=SYSTEM, agent=agent, revision_id=candidate.id, dataset=dataset)
    first_inside = threading.Event()
    real_unfinished = compare.unfinished

    def slow_unfinished(**kwargs):
        found = real_unfinished(**kwargs)
        if threading.current_thread().name == "first":
            first_inside.set()
            threading.Event().wait(0.5)  # the second caller arrives while the first has looked, not yet started
        return found

    monkeypatch.setattr(compare, "unfinished", slow_unfinished)
    answers, errors = {}, []

    def caller():
        try:
            agent.refresh_from_db()
            answers[threading.current_thread().name] = compare.compare_with_deployed(
                actor=SYSTEM, evaluation=EvaluationRun.objects.get(pk=evaluation.pk), may_start=True)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    first = threading.Thread(target=caller, name="first")
    second = threading.Thread(target=caller, name="second")
    first.start()
    assert first_inside.wait(10)
    second.start()
    first.join(30)
    second.join(30)
    assert not errors
    baselines = EvaluationRun.objects.filter(revision=deployed, trigger="baseline")
    assert baselines.count() == 1
    assert {a["baselineId"] for a in answers.values()} == {baselines.get().id}


@pytest.mark.django_db(transaction=True)
def test_a_case_deleted_while_an_evaluation_starts_waits_and_is_refused(monkeypatch):
    """Start freezes the case ids with the cases locked: a delete in between cannot orphan the evaluation."""
    import threading

    from django.db import connection

    from fruxon.errors import Conflict

    from . import factories as f

    org = f.OrganizationFactory(slug="acme")
    agent, revision = agent_with_revision(org, "support", local_spec("answer {{input.question}}"))
    dataset = datasets.create_dataset(actor=SYSTEM, organization=org, slug="golden", metrics=[{"type": "contains"}])
    cases = datasets.add_cases_bulk(actor=SYSTEM, dataset=dataset, cases=[
        {"input": {"question": f"q{i}"}, "expected": f"q{i}"} for i in range(3)])
    starting = threading.Event()

    def slow_enqueue(evaluation_id):  # inside start's transaction: case ids read, evaluation not committed
        starting.set()
        threading.Event().wait(0.5)

    monkeypatch.setattr(dispatch, "enqueue", slow_enqueue)
    outcome = {}

    def starter():
        try:
            outcome["evaluation"] = runs.start(actor=SYSTEM, agent=agent, revision_id=revision.id, dataset=dataset)
        finally:
            connection.close()

    def deleter():
        try:
            datasets.delete_case(actor=SYSTEM, case=cases[1])
            outcome["deleted"] = True
        except Conflict as exc:
            outcome["refused"] = exc
        finally:
            connection.close()

    first = threading.Thread(target=starter)
    first.start()
    assert starting.wait(10)
    second = threading.Thread(target=deleter)
    second.start()
    first.join(30)
    second.join(30)
    evaluation = outcome["evaluation"]
    assert "refused" in outcome and "deleted" not in outcome
    assert cases[1].pk in EvaluationRun.objects.get(pk=evaluation.pk).case_ids
    assert dataset.cases.filter(pk=cases[1].pk).exists()
