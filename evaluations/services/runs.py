"""Evaluation runs: start, evaluate cases idempotently, finalize, cancel.

An evaluation freezes its dataset's metrics, threshold and case ids at start.
Cases are evaluated in chunks by Celery tasks (``evaluate_chunk``).

What one chunk does, and why it is safe to run twice (``acks_late``: a killed
worker's chunk is delivered again):

* it loads what every case needs ONCE: the evaluation with its agent, revision
  spec and budget (one query), the cases still without a result (two), the
  prices (one cache read);
* it runs each missing case through the engine, the same way
  ``agents.execution.execute`` does (input validation, budget reservation per
  model call, the immutable revision), scores it, and keeps the Run, its spans
  and the CaseResult in memory;
* it writes them in ONE transaction per flush (the end of the chunk, or every
  ``FLUSH_SECONDS`` for slow models): the evaluation row is locked, cases that
  got a result meanwhile are dropped, and the Runs, spans and CaseResults of the
  others are inserted together. A Run of an evaluation therefore never exists
  without its CaseResult (both commit or neither does): a redelivered chunk
  finds either a result (and skips the case) or nothing at all, so it never
  re-executes a case whose Run was recorded, and a killed worker leaves no
  orphan Run behind. The work lost to a kill is what was in memory: at most
  ``FLUSH_SECONDS`` (plus one case) per worker slot, executed again on resume.
* the lock makes cancel final: once ``cancel`` commits, no flush writes a
  result. Runs that already executed are still recorded (they cost money; the
  budget ledger is reconciled against recorded runs), without results.

Two deliveries of one chunk at the same time (Redis handed it out again past
its visibility timeout while the first worker was still busy, or
``resume_stalled`` re-sent the cases of an evaluation stuck behind a long
queue) do not both run a case: each case is claimed (``claim_case``, a cache
``add`` with a lease) right before it runs, and a claimed case is skipped. The
lease (``FRUXON_EVALUATION_CLAIM_SECONDS``) is at most the visibility timeout,
so a killed worker's cases are free again by the time its chunk comes back.
Should two executions still meet (a case running longer than its lease), the
second flush finds the result written and records only its Run (that model
call did happen and cost money).

A case whose run (or judge) was refused by the agent's budget cap, or stopped
because the budget ledger was unreachable, is not scored: that says nothing of
the revision, and a 0 would fail the gate and fire the score-drop alert. The
budget cap fails the evaluation with the reason (``fail``); an unreachable
ledger ends the chunk and leaves the case for ``resume_stalled``. The Run is
recorded either way.

llmJudge metrics run their judge model through the same per-case runtime: the
judge's calls are priced, reserved against the evaluated agent's budget (an
evaluation spends that agent's money), and recorded as spans of the case's Run
(a ``step`` span named ``judge:<metric>`` with its ``llm`` span, attribute
``judge: true``); the Run's cost includes them, so the ledger's reconciliation
against recorded runs agrees with what was reserved. The CaseResult keeps the
agent's own cost (``cost_usd``, what ``costCeiling`` checks) and the judge's
(``judge_cost_usd``) apart; the evaluation's ``cost_usd`` is their sum.

Progress is the count of results.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from decimal import Decimal
from statistics import fmean

from django.conf import settings
from django.core.cache import cache
from django.db import connections, router, transaction
from django.utils import timezone

from agents import engine
from agents.engine.spec import DEFAULT_TIMEOUT_SECONDS
from agents.execution import validate_input
from agents.models import Agent, Revision
from agents.runtime import DjangoRuntime
from fruxon.db import PreparedQuery, release_connection
from fruxon.errors import Conflict, FruxonError, InvalidRequest, NotFound
from monitoring import pricing
from monitoring.recording import json_records, may_commit_asynchronously, record_runs
from orgs.actor import Actor
from orgs.services import audit

from .. import metrics as metric_lib
from ..models import Case, CaseResult, Dataset, EvaluationRun

logger = logging.getLogger(__name__)
# Cases per chunk, i.e. per Celery task. A task has a fixed cost (Celery's Django fixup opens a fresh
# database connection for each one), so chunks are not tiny; not large either, so the last round of
# chunks leaves few worker slots idle (bench/evaluations.py measured 5, 10, 20 and shrinking chunks).
CHUNK_SIZE = 20
MIN_CHUNK_SIZE = 2
EXPECTED_SLOTS = 16
# A chunk's finished cases are written at its end, or sooner once this long has passed since
# the last write: what a killed worker loses (and re-executes on resume) stays small with slow models.
FLUSH_SECONDS = 2.0
ZERO = Decimal("0")


def start(*, actor: Actor, agent: Agent, revision_id: str, dataset: Dataset, trigger: str = "api") -> EvaluationRun:
    revision = Revision.objects.filter(agent=agent, pk=revision_id).first()
    if revision is None:
        raise NotFound(f"Revision '{revision_id}' not found for agent '{agent.slug}'.")
    if dataset.organization_id != agent.organization_id:
        raise NotFound(f"Dataset '{dataset.slug}' not found.")
    with transaction.atomic():
        # The cases are locked until the evaluation row commits: ``delete_case`` (which locks its case,
        # then looks for unfinished evaluations holding it) either runs first, and the case is not
        # frozen in, or waits and then sees this evaluation (409). A frozen case that vanished would
        # never get its result, and the evaluation would never complete.
        case_ids = list(Case.objects.select_for_update().filter(dataset=dataset).order_by("id")
                        .values_list("id", flat=True))
        if not case_ids:
            raise InvalidRequest(f"Dataset '{dataset.slug}' has no cases: add some before evaluating.",
                                 code="empty_dataset")
        evaluation = EvaluationRun.objects.create(
            organization_id=agent.organization_id, agent=agent, revision=revision, dataset=dataset, trigger=trigger,
            metrics=dataset.metrics, pass_threshold=dataset.pass_threshold, case_ids=case_ids, total=len(case_ids),
            created_by=actor.user_or_none, created_by_label=actor.label,
        )
        audit.record(organization=agent.organization, actor=actor, action="evaluation.started", target_type="evaluation",
                     target_id=evaluation.id, data={"agent": agent.slug, "revisionId": revision.id,
                                                    "dataset": dataset.slug, "cases": len(case_ids)})
        from . import dispatch

        dispatch.enqueue(evaluation.id)
    return evaluation


def _end(evaluation_id: str, *, status: str, actor: Actor, action: str, error: str = ""):
    """queued/running -> ``status``, row-locked and audited; returns (the row or None, whether it moved).

    The FOR UPDATE waits for flushes in progress (they hold FOR SHARE), and
    flushes after it see the final status: no result is written once it commits.
    """
    with transaction.atomic():
        locked = (EvaluationRun.objects.select_for_update(of=("self",)).select_related("organization")
                  .filter(pk=evaluation_id).first())
        if locked is None or locked.status not in ("queued", "running"):
            return locked, False
        locked.status, locked.error, locked.finished_at = status, error[:2000], timezone.now()
        locked.save(update_fields=["status", "error", "finished_at"])
        data = {"completed": locked.results.count(), "total": locked.total} | ({"error": locked.error} if error else {})
        audit.record(organization=locked.organization, actor=actor, action=action, target_type="evaluation",
                     target_id=locked.id, data=data)
    return locked, True


def cancel(*, actor: Actor, evaluation: EvaluationRun) -> EvaluationRun:
    """queued/running -> cancelled (409 otherwise). Row-locked: no result is written after it commits."""
    locked, ended = _end(evaluation.pk, status="cancelled", actor=actor, action="evaluation.cancelled")
    if not ended:
        raise Conflict(f"Evaluation {evaluation.pk} is {locked.status if locked else 'gone'}; only queued or running "
                       "ones can be cancelled.")
    return locked


_STAGGER = (1.0, 0.85, 0.7, 0.55)


def chunks(case_ids: list[int], size: int | None = None) -> list[list[int]]:
    size = size or CHUNK_SIZE
    parts, start = [], 0
    while start < len(case_ids):
        remaining = len(case_ids) - start
        full = max(1, round(size * _STAGGER[len(parts) % len(_STAGGER)]))
        take = max(min(MIN_CHUNK_SIZE, size), min(full, -(-remaining // EXPECTED_SLOTS)))
        parts.append(case_ids[start:start + take])
        start += take
    return parts


def begin(evaluation_id: str) -> bool:
    """queued -> running; True only for the one call that made the move (so only it fans the chunks out)."""
    return bool(EvaluationRun.objects.filter(pk=evaluation_id, status="queued").update(status="running",
                                                                                       started_at=timezone.now()))


def mark_running(evaluation_id: str) -> bool:
    """queued -> running; False when the evaluation is gone or no longer runnable."""
    return begin(evaluation_id) or EvaluationRun.objects.filter(pk=evaluation_id, status="running").exists()


class EvaluationRuntime(DjangoRuntime):
    """A case's runtime (agent run and judge calls): the chunk's price table instead of a cache read per run."""

    def __init__(self, *, prices: dict, **kwargs):
        super().__init__(**kwargs)
        self._prices = prices


@dataclass
class _Done:
    """One evaluated case, not yet written."""

    case: Case
    result: engine.RunResult | None  # None: the case could not run (e.g. its input no longer fits)
    case_result: CaseResult | None  # None: the outcome says nothing of the revision (see _stop_reason)
    runtime: EvaluationRuntime
    judged: list = dataclasses.field(default_factory=list)


@dataclass
class _Chunk:
    """What every case of one chunk shares, loaded once."""

    evaluation: EvaluationRun
    agent: Agent
    revision: Revision
    budget: object
    prices: dict
    lease: int = 0  # seconds a case claim lasts (claim_lease)

    def runtime(self) -> EvaluationRuntime:
        return EvaluationRuntime(organization_id=self.agent.organization_id, agent_id=self.agent.pk,
                                 budget=self.budget, prices=self.prices)


def _judge(chunk: _Chunk, runtime: EvaluationRuntime, judged: list[tuple[str, engine.RunResult]]):
    """The llmJudge callable for one case: runs ``config["model"]`` through the case's runtime."""

    def judge(config: dict, observation, expected) -> tuple[float, str]:
        # The prompt travels as an input value, so text in it is never parsed as a template.
        spec = {"inputs": {"prompt": {"type": "string", "required": True}},
                "steps": [{"name": "judge", "model": config["model"], "prompt": "{{input.prompt}}"}]}
        prompt = metric_lib.local_judge_prompt(config, observation, expected)
        result = engine.run(spec, {"prompt": prompt}, context=engine.RunContext.for_spec(spec, agent=chunk.agent.slug),
                            runtime=runtime)
        judged.append((metric_lib.metric_name(config), result))
        if not result.ok:
            return 0.0, f"the judge failed: {result.error['message'] if result.error else result.status}"
        return metric_lib.parse_judge_reply(result.output if isinstance(result.output, str) else str(result.output))

    return judge


def _with_judges(result: engine.RunResult, judged: list[tuple[str, engine.RunResult]]) -> engine.RunResult:
    """The case's run with its judges' spans appended and their cost in the totals.

    Each judge's step span is named ``judge:<metric>``; all its spans carry
    ``{"judge": true, "metric": <metric>}`` in their attributes.
    """
    if not judged:
        return result
    spans = list(result.spans)
    for metric, judge_run in judged:
        for span in judge_run.spans:
            name = f"judge:{metric}"[:200] if span.parent_id is None else span.name
            spans.append(dataclasses.replace(span, name=name,
                                             attributes={**span.attributes, "judge": True, "metric": metric}))
    return dataclasses.replace(result, spans=spans, totals=engine.Totals.of(spans))


def evaluate_case(chunk: _Chunk, case: Case) -> _Done:
    """Run and score one case, in memory (nothing is written here)."""
    evaluation, revision = chunk.evaluation, chunk.revision
    runtime = chunk.runtime()
    result = None
    try:
        values = validate_input(revision.spec, case.input)
        context = engine.RunContext.for_spec(revision.spec, agent=chunk.agent.slug, revision_id=revision.id)
        release_connection()  # the engine may wait seconds on providers: do not hold a pooled connection
        result = engine.run(revision.spec, values, context=context, runtime=runtime)
        observation = metric_lib.Observation(output=result.output, status=result.status,
                                             cost_usd=result.totals.cost_usd,
                                             latency_ms=max(0, int(round(result.latency_ms))), input=case.input)
    except FruxonError as exc:  # e.g. the case input no longer fits the revision's inputs
        observation = metric_lib.Observation(output=None, status="error", cost_usd=ZERO, latency_ms=0,
                                             input=case.input)
        logger.info("evaluation %s case %s could not run: %s", evaluation.id, case.pk, exc.message)
    judged: list[tuple[str, engine.RunResult]] = []
    scores = metric_lib.evaluate_all(evaluation.metrics, observation, case.expected,
                                     judge=_judge(chunk, runtime, judged))
    score = fmean(s.score for s in scores) if scores else 0.0
    passed = all(s.passed for s in scores) and score >= evaluation.pass_threshold
    if result is not None:
        result = _with_judges(result, judged)
    case_result = CaseResult(
        organization_id=evaluation.organization_id, evaluation_id=evaluation.pk, case=case,
        output=observation.output, run_status=observation.status, scores=[s.to_dict() for s in scores],
        score=score, passed=passed, critical=case.critical, cost_usd=observation.cost_usd,
        judge_cost_usd=sum((r.totals.cost_usd for _, r in judged), ZERO), latency_ms=observation.latency_ms,
    )
    return _Done(case=case, result=result, case_result=case_result, runtime=runtime, judged=judged)


def _stop_reason(item: _Done) -> tuple[str, str] | None:
    """Why a case's outcome must not be scored: ``("budget", why)`` or ``("ledger", why)``; None to score it.

    A run (the agent's, or a judge's) refused by the agent's budget cap, or
    stopped because the budget ledger could not be reached, says nothing about
    the revision's quality; scoring it 0 would fail the gate and fire the
    score-drop alert for the wrong reason.
    """
    for result in [item.result, *(run for _, run in item.judged)]:
        if result is None:
            continue
        code = (result.error or {}).get("code")
        if result.status == "budget_exceeded" or code == "budget_exceeded":
            return "budget", (f"The agent's budget cap stopped the evaluation at case {item.case.pk}: raise the "
                              "budget or wait for its next period, then start the evaluation again.")
        if code == "ledger_unavailable":
            return "ledger", f"The budget ledger could not be reached at case {item.case.pk}."
    return None


def _claim_key(evaluation_id: str, case_id: int) -> str:
    return f"eval-claim:{evaluation_id}:{case_id}"


def claim_lease(spec: dict, metrics: list) -> int:
    """How long a case claim lasts: long enough for the case to finish and be written.

    A case's result is written at the latest after the chunk's next case (the
    flush comes after a case), so the lease covers two cases at their timeouts:
    the revision's ``timeoutSeconds`` plus each llmJudge's (the engine default),
    plus a minute; never less than ``FRUXON_EVALUATION_CLAIM_SECONDS``.
    """
    judges = sum(1 for m in metrics if isinstance(m, dict) and m.get("type") == "llmJudge")
    case_seconds = float(spec.get("timeoutSeconds", DEFAULT_TIMEOUT_SECONDS)) + judges * DEFAULT_TIMEOUT_SECONDS
    return max(settings.FRUXON_EVALUATION_CLAIM_SECONDS, int(2 * case_seconds) + 60)


def claim_case(evaluation_id: str, case_id: int, *, owner: str = "", lease: int | None = None) -> bool:
    """Take (evaluation, case) for ``owner`` until its result is written or the claim expires.

    A chunk delivered twice at the same time (Redis past its visibility timeout
    while the first worker is still busy, or ``resume_stalled`` re-sending work)
    finds the cases the other delivery holds taken, and skips them: no case is
    executed (and charged) twice. ``owner`` is the Celery task id, so the same
    message delivered again (its worker died; Redis hands it back) takes its own
    claims back at once instead of waiting for them to expire.
    """
    key = _claim_key(evaluation_id, case_id)
    if cache.add(key, owner or "-", timeout=lease or settings.FRUXON_EVALUATION_CLAIM_SECONDS):
        return True
    return bool(owner) and cache.get(key) == owner


def held_claims(evaluation_id: str, case_ids: list[int]) -> int:
    """How many of these cases a worker holds right now (one cache round trip)."""
    return len(cache.get_many([_claim_key(evaluation_id, c) for c in case_ids])) if case_ids else 0


def release_claim(evaluation_id: str, case_id: int) -> None:
    cache.delete(_claim_key(evaluation_id, case_id))


def fail(evaluation_id: str, error: str) -> bool:
    """queued/running -> failed with ``error`` (row-locked, audited as the system); False if already final."""
    from orgs.actor import SYSTEM

    _, ended = _end(evaluation_id, status="failed", actor=SYSTEM, action="evaluation.failed", error=error)
    if ended:
        logger.warning("evaluation %s failed: %s", evaluation_id, error)
    return ended


def _status_for_share(evaluation_id: str) -> str | None:
    """The evaluation's status, its row locked FOR SHARE until the transaction ends.

    Flushes share the lock (they never wait for each other); ``cancel`` and the
    final ``maybe_finalize`` take FOR UPDATE, so they wait for flushes in
    progress, and flushes that start after them see the new status.
    """
    connection = connections[router.db_for_write(EvaluationRun)]
    table = connection.ops.quote_name(EvaluationRun._meta.db_table)
    if connection.vendor != "postgresql":  # SQLite: one writer at a time anyway
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT status FROM {table} WHERE id = %s", [evaluation_id])
            row = cursor.fetchone()
        return row[0] if row else None
    # Like every run record (FRUXON_RUN_SYNCHRONOUS_COMMIT, see settings), this transaction's commit
    # does not wait for the WAL flush: only a PostgreSQL crash right after it can lose it, and then
    # the chunk's cases simply have no result yet, which resume_stalled sends out again.
    sync = "SET LOCAL synchronous_commit TO OFF; " if may_commit_asynchronously(connection) else ""
    with connection.cursor() as cursor:
        cursor.execute(f"{sync}SELECT status FROM {table} WHERE id = %s FOR SHARE", [evaluation_id])
        if sync:
            cursor.nextset()
        row = cursor.fetchone()
    return row[0] if row else None


_RESULT_COLUMNS = [f.column for f in CaseResult._meta.concrete_fields if not f.primary_key]


def _insert_results(rows: list[CaseResult]) -> set[int]:
    """Insert results, skipping (evaluation, case) pairs that have one; returns the case ids inserted.

    On PostgreSQL one statement: the rows travel as one JSON array read against
    the table's own row type (as ``monitoring.recording`` writes runs), with
    ``ON CONFLICT DO NOTHING RETURNING``, so a concurrent flush of the same
    cases is detected without a query of its own. Elsewhere (SQLite, the demo)
    the ORM.
    """
    if not rows:
        return set()
    connection = connections[router.db_for_write(CaseResult)]
    records = json_records(rows, connection) if connection.vendor == "postgresql" else None
    if records is None:
        have = set(CaseResult.objects.filter(evaluation_id=rows[0].evaluation_id,
                                             case_id__in=[r.case_id for r in rows]).values_list("case_id", flat=True))
        fresh = [r for r in rows if r.case_id not in have]
        CaseResult.objects.bulk_create(fresh, ignore_conflicts=True)
        return {r.case_id for r in fresh}
    quote = connection.ops.quote_name
    table = quote(CaseResult._meta.db_table)
    columns = ", ".join(quote(column) for column in _RESULT_COLUMNS)  # the id column is left to its sequence
    with connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM jsonb_populate_recordset(NULL::{table}, %s) "
                       f"ON CONFLICT ({quote('evaluation_id')}, {quote('case_id')}) DO NOTHING "
                       f"RETURNING {quote('case_id')}", [records])
        return {row[0] for row in cursor.fetchall()}


def _flush(chunk: _Chunk, done: list[_Done]) -> tuple[int, bool, int]:
    """Write evaluated cases in one transaction.

    Returns (results written, evaluation still running, results the evaluation has now).
    """
    evaluation = chunk.evaluation
    with transaction.atomic():
        running = _status_for_share(evaluation.pk) in ("queued", "running")
        ran = [item for item in done if item.result is not None]
        recorded = record_runs(organization_id=evaluation.organization_id, agent_id=chunk.agent.pk,
                               revision_id=chunk.revision.id, source="evaluation",
                               entries=[(item.result, item.case.input) for item in ran])
        run_of = {id(item): run for item, run in zip(ran, recorded)}
        rows = []
        for item in done:
            if item.case_result is not None:  # None: recorded (it ran, it may have spent), not scored
                item.case_result.run = run_of.get(id(item))
                rows.append(item.case_result)
        inserted, results = set(), 0
        if running:  # after a cancel: the runs are recorded (they ran), their results are not
            # A concurrent flush of the same cases (the chunk delivered twice at once) may have committed
            # first: its results stay, these are dropped (ON CONFLICT DO NOTHING on (evaluation, case)).
            inserted = _insert_results(rows)
            for row in rows:
                if row.case_id not in inserted:
                    logger.warning("evaluation %s case %s was evaluated twice at once; the first result stays",
                                   evaluation.pk, row.case_id)
    if running:
        # Counted after the commit: of two flushes finishing at once, the later committer sees both
        # (inside the transaction neither would see the other's rows, and neither would finalize).
        results = CaseResult.objects.filter(evaluation_id=evaluation.pk).count()
    for item in done:
        item.runtime.alert_if_needed()  # budget thresholds crossed by these runs, once they are recorded
    return len(inserted), running, results


_CHUNK_LOOKUP = PreparedQuery(
    lambda evaluation_id: EvaluationRun.objects.select_related("agent", "agent__budget", "revision")
    .filter(pk=evaluation_id), ("eval-prepared-lookup",))


def _load_chunk(evaluation_id: str) -> _Chunk | None:
    """The evaluation, its agent (with its budget) and revision spec in one query compiled once per process."""
    evaluation = _CHUNK_LOOKUP.first(evaluation_id)
    if evaluation is None or evaluation.status not in ("queued", "running"):
        return None
    agent = evaluation.agent
    return _Chunk(evaluation=evaluation, agent=agent, revision=evaluation.revision,
                  budget=getattr(agent, "budget", None),
                  prices=pricing.cached_prices(organization_id=agent.organization_id, agent_id=agent.pk),
                  lease=claim_lease(evaluation.revision.spec, evaluation.metrics))


def evaluate_chunk(evaluation_id: str, case_ids: list[int], *, owner: str = "") -> int:
    """Evaluate the cases of one chunk that have no result yet; returns how many this call wrote.

    About a dozen queries per chunk however many cases it holds, plus one
    statement per flush for its Runs and spans (``monitoring.recording.record_runs``).
    """
    chunk = _load_chunk(evaluation_id)
    if chunk is None:
        return 0
    if chunk.evaluation.status == "queued" and not mark_running(evaluation_id):
        return 0
    cases = list(Case.objects.filter(pk__in=case_ids, dataset_id=chunk.evaluation.dataset_id)
                 .exclude(pk__in=CaseResult.objects.filter(evaluation_id=evaluation_id).values("case_id"))
                 .order_by("id").only("id", "input", "expected", "critical"))
    written, pending, last_flush, results = 0, [], time.monotonic(), None
    for case in cases:
        if not claim_case(evaluation_id, case.pk, owner=owner, lease=chunk.lease):
            logger.info("evaluation %s case %s is in another worker's hands; skipped", evaluation_id, case.pk)
            continue
        item = evaluate_case(chunk, case)
        stop = _stop_reason(item)
        if stop is not None:
            item.case_result = None
        pending.append(item)
        if stop is not None or time.monotonic() - last_flush >= FLUSH_SECONDS:
            count, running, results = _flush(chunk, pending)
            written, pending, last_flush = written + count, [], time.monotonic()
            if stop is not None:
                kind, why = stop
                if kind == "budget":
                    fail(evaluation_id, why)
                else:  # transient: the case is left without a result; resume_stalled sends it out again
                    release_claim(evaluation_id, case.pk)
                    logger.warning("evaluation %s: %s The chunk stops here; it is resumed later.", evaluation_id, why)
                return written
            if not running:
                return written
    if pending:
        count, running, results = _flush(chunk, pending)
        written += count
        if not running:
            return written
    if results is None or results >= chunk.evaluation.total:  # nothing left here, or maybe the last chunk
        maybe_finalize(evaluation_id)
    return written


def aggregate(evaluation: EvaluationRun) -> dict:
    results = list(evaluation.results.all())
    per_metric: dict[str, list[dict]] = {}
    for result in results:
        for score in result.scores:
            per_metric.setdefault(score["metric"], []).append(score)
    metrics = {
        name: {"meanScore": round(fmean(s["score"] for s in scores), 6),
               "passRate": round(sum(1 for s in scores if s["passed"]) / len(scores), 6), "count": len(scores)}
        for name, scores in per_metric.items()
    }
    agent_cost = sum((r.cost_usd for r in results), ZERO)
    judge_cost = sum((r.judge_cost_usd for r in results), ZERO)
    return {
        "metrics": metrics,
        "overallScore": round(fmean(r.score for r in results), 6) if results else None,
        "passRate": round(sum(1 for r in results if r.passed) / len(results), 6) if results else None,
        "criticalFailures": sum(1 for r in results if r.critical and not r.passed),
        "agentCostUsd": agent_cost, "judgeCostUsd": judge_cost, "costUsd": agent_cost + judge_cost,
    }


def maybe_finalize(evaluation_id: str) -> bool:
    """Complete the evaluation once every case has a result (idempotent, row-locked).

    Called after every chunk: the lock-free count comes first, so chunks still
    running do not queue behind a lock for nothing.
    """
    total = EvaluationRun.objects.filter(pk=evaluation_id).values_list("total", flat=True).first()
    if total is None or CaseResult.objects.filter(evaluation_id=evaluation_id).count() < total:
        return False
    with transaction.atomic():
        evaluation = EvaluationRun.objects.select_for_update().filter(pk=evaluation_id).first()
        if evaluation is None or evaluation.status not in ("queued", "running"):
            return False
        if evaluation.results.count() < evaluation.total:
            return False
        summary = aggregate(evaluation)
        evaluation.aggregates = {"metrics": summary["metrics"], "criticalFailures": summary["criticalFailures"],
                                 "agentCostUsd": format(summary["agentCostUsd"], "f"),
                                 "judgeCostUsd": format(summary["judgeCostUsd"], "f")}
        evaluation.overall_score, evaluation.pass_rate = summary["overallScore"], summary["passRate"]
        evaluation.cost_usd = summary["costUsd"]
        evaluation.status, evaluation.finished_at = "completed", timezone.now()
        evaluation.started_at = evaluation.started_at or evaluation.finished_at
        evaluation.save()
        from . import scheduled

        transaction.on_commit(lambda: scheduled.after_completion(evaluation_id))
    return True


def progress(evaluation: EvaluationRun) -> dict:
    done = evaluation.results.count()
    return {"completed": done, "total": evaluation.total,
            "fraction": round(done / evaluation.total, 4) if evaluation.total else 1.0}
