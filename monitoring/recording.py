"""Writing what ran: one Run and all its spans, all or nothing, in one statement."""
from __future__ import annotations

import json
from datetime import date, datetime
from decimal import Decimal

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections, router, transaction
from django.db.models import F
from django.utils import timezone
from psycopg.types.json import Jsonb

from agents.engine import RunResult
from fruxon.db import pg_json

from . import observability
from .models import Conversation, Run, Span


def _clip_ms(value: float) -> int:
    return max(0, int(round(value)))


def continue_conversation(*, organization_id: int, agent_id: int, key: str) -> Conversation:
    """Get or create the org's conversation ``key`` and count one more turn (row-locked)."""
    conversation, _ = Conversation.objects.get_or_create(organization_id=organization_id, key=key,
                                                         defaults={"agent_id": agent_id})
    Conversation.objects.filter(pk=conversation.pk).update(turns=F("turns") + 1, updated_at=timezone.now())
    return conversation


_MISSING = object()


def _jsonable(value):
    """A prepared column value as a JSON-native value, or ``_MISSING`` for a type not handled here."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, Jsonb):
        # The JSON column's own value; re-read through its encoder when it has one.
        return value.obj if value.dumps in (None, json.dumps) else json.loads(value.dumps(value.obj))
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return _MISSING


def may_commit_asynchronously(connection) -> bool:
    """Whether a run record's transaction may skip waiting for the WAL flush (``SET LOCAL synchronous_commit``).

    Not with ``FRUXON_RUN_SYNCHRONOUS_COMMIT``, and not with server-side binding
    (the prefix rides as a second statement in the same query string, which the
    extended protocol does not allow).
    """
    return not settings.FRUXON_RUN_SYNCHRONOUS_COMMIT and not connection.settings_dict["OPTIONS"].get(
        "server_side_binding")


def json_records(objs: list, connection) -> str | None:
    """``objs`` as one JSON array of ``{column: value}``, values prepared as the ORM prepares them.

    For ``jsonb_populate_recordset`` against the model's table; None when a
    value has a type not handled here (the caller then takes the ORM's way).
    """
    fields = [field for field in type(objs[0])._meta.concrete_fields if not field.generated]
    records = []
    for obj in objs:
        record = {}
        for field in fields:
            value = _jsonable(field.get_db_prep_save(field.pre_save(obj, True), connection=connection))
            if value is _MISSING:
                return None
            record[field.column] = value
        records.append(record)
    return pg_json(records)


def _write_run_and_spans(run: Run, spans: list[Span]) -> None:
    _write_runs_and_spans([run], spans)


def _write_runs_and_spans(runs: list[Run], spans: list[Span]) -> None:
    """Runs + spans as ONE statement (a data-modifying CTE): atomic by itself, one round trip.

    Rows travel as JSON documents (``jsonb_populate_record[set]`` against the
    tables' own row types): two parameters however many spans, instead of one
    per column and row, which psycopg would otherwise quote one by one.
    Inside a caller's transaction the statement simply joins it. The spans'
    foreign key to the run is checked at commit (Django's constraints are
    deferred). Outside one, the commit does not wait for the WAL flush unless
    ``FRUXON_RUN_SYNCHRONOUS_COMMIT`` (see settings).
    """
    using = router.db_for_write(Run)
    connection = connections[using]
    prepared = _statement(runs, spans, connection, autocommit=not connection.in_atomic_block)
    if prepared is None:
        # SQLite (the demo) has no data-modifying CTEs, and a value of a type not
        # handled above takes the ORM's way: two statements in a transaction.
        with transaction.atomic(using=using):
            for run in runs:
                run.save(force_insert=True, using=using)
            Span.objects.using(using).bulk_create(spans)
        return
    with connection.cursor() as cursor:
        cursor.execute(*prepared)
    _saved(runs, spans, using)


def _saved(runs: list[Run], spans: list[Span], using: str) -> None:
    for obj in (*runs, *spans):
        obj._state.adding, obj._state.db = False, using


def _statement(runs: list[Run], spans: list[Span], connection, *, autocommit: bool) -> tuple[str, list] | None:
    """The one statement writing ``runs`` and ``spans`` (see ``_write_runs_and_spans``) and its two
    parameters, or None where the ORM's way is needed (not PostgreSQL, or a value of a type not
    handled by ``json_records``). ``autocommit``: the statement is its own transaction."""
    run_json = json_records(runs, connection) if connection.vendor == "postgresql" else None
    spans_json = json_records(spans, connection) if spans and run_json is not None else "[]"
    if run_json is None or spans_json is None:
        return None
    quote = connection.ops.quote_name
    run_table, span_table = quote(Run._meta.db_table), quote(Span._meta.db_table)
    statement = (f"WITH run_row AS (INSERT INTO {run_table} SELECT * FROM jsonb_populate_recordset(NULL::{run_table}, %s)) "
                 f"INSERT INTO {span_table} SELECT * FROM jsonb_populate_recordset(NULL::{span_table}, %s)")
    if autocommit and may_commit_asynchronously(connection):
        # Sent together (one round trip, simple query protocol) the two statements form one
        # implicit transaction: SET LOCAL applies to this commit only, and a failure
        # rolls both back, leaving the connection idle.
        statement = "SET LOCAL synchronous_commit TO OFF; " + statement
    return statement, [run_json, spans_json]


def _build(*, organization_id: int, agent_id: int, revision_id: str, result: RunResult, source: str,
           input: dict, api_key_id: int | None = None, run_id: str | None = None) -> tuple[Run, list[Span]]:
    run = Run(
        **({"id": run_id} if run_id else {}),
        organization_id=organization_id, agent_id=agent_id, revision_id=revision_id,
        source=source, status=result.status, input=input,
        output=result.output, error=result.error,
        input_tokens=result.totals.input_tokens, cached_input_tokens=result.totals.cached_input_tokens,
        output_tokens=result.totals.output_tokens, reasoning_tokens=result.totals.reasoning_tokens,
        cost_usd=result.totals.cost_usd, latency_ms=_clip_ms(result.latency_ms),
        provider_ms=_clip_ms(result.provider_ms), api_key_id=api_key_id, created_at=result.started_at,
        usage_over_reservation=result.usage_over_reservation,
    )
    spans = [
        Span(
            id=span.id, organization_id=organization_id, run_id=run.id, parent_id=span.parent_id or "",
            position=index, kind=span.kind, name=span.name[:200], status=span.status, started_at=span.started_at,
            latency_ms=_clip_ms(span.latency_ms), provider=span.provider or "", model=(span.model or "")[:200],
            input=span.input, output=span.output, error=span.error, attributes=span.attributes,
            input_tokens=span.input_tokens, cached_input_tokens=span.cached_input_tokens,
            output_tokens=span.output_tokens, reasoning_tokens=span.reasoning_tokens, cost_usd=span.cost_usd,
        )
        for index, span in enumerate(result.spans)
    ]
    return run, spans


def record_run(*, organization_id: int, agent_id: int, revision_id: str, result: RunResult, source: str,
               input: dict, api_key_id: int | None = None, conversation_key: str | None = None,
               run_id: str | None = None) -> Run:
    """Write the run, its conversation turn and its spans atomically: all or nothing.

    Without a conversation (the execute hot path) that is one statement and no
    explicit transaction; a conversation turn adds a row lock, so that case
    runs in a transaction. ``run_id``: the id already announced (a stream's ``run.started``).
    """
    run, spans = _build(organization_id=organization_id, agent_id=agent_id, revision_id=revision_id, result=result,
                        source=source, input=input, api_key_id=api_key_id, run_id=run_id)
    if conversation_key is None:
        _write_run_and_spans(run, spans)
    else:
        with transaction.atomic():
            run.conversation = continue_conversation(organization_id=organization_id, agent_id=agent_id,
                                                     key=conversation_key)
            _write_run_and_spans(run, spans)
    observability.run_recorded(run, result)  # metrics and OTLP export, once committed
    return run


async def arecord_run(*, organization_id: int, agent_id: int, revision_id: str, result: RunResult, source: str,
                      input: dict, api_key_id: int | None = None, conversation_key: str | None = None,
                      run_id: str | None = None) -> Run:
    """``record_run`` for the async execute family, with the same contract.

    Without a conversation, on ``fruxon.adb``'s pool: the same one statement, awaited on the
    loop. Otherwise (a conversation's row lock needs a transaction, SQLite, ``thread`` mode)
    ``record_run`` itself, through ``fruxon.adb.run``.
    """
    from fruxon import adb

    using = router.db_for_write(Run)
    if conversation_key is None and using == DEFAULT_DB_ALIAS and adb.mode() == "pool":
        run, spans = _build(organization_id=organization_id, agent_id=agent_id, revision_id=revision_id,
                            result=result, source=source, input=input, api_key_id=api_key_id, run_id=run_id)
        prepared = _statement([run], spans, connections[using], autocommit=True)
        if prepared is not None:
            # The run happened (and was paid for): its record waits for a connection as long as it takes
            # under load, FRUXON_RUN_RECORD_TIMEOUT at most; an outage still fails it at once.
            try:
                await adb.execute(*prepared, timeout=settings.FRUXON_RUN_RECORD_TIMEOUT)
            except adb.PoolBusy as exc:  # the run happened: never "overloaded, nothing was run"
                from psycopg_pool import PoolTimeout

                raise PoolTimeout(f"run {run.id} could not be recorded: {exc}") from exc
            _saved([run], spans, using)
            observability.run_recorded(run, result)
            return run
    return await adb.run(record_run, organization_id=organization_id, agent_id=agent_id, revision_id=revision_id,
                         result=result, source=source, input=input, api_key_id=api_key_id,
                         conversation_key=conversation_key, run_id=run_id)


def record_runs(*, organization_id: int, agent_id: int, revision_id: str, source: str,
                entries: list[tuple[RunResult, dict]]) -> list[Run]:
    """Several runs of one agent, without conversations, and all their spans in ONE statement.

    ``entries`` are ``(result, input)`` pairs; the runs come back in their
    order. For batch writers (an evaluation chunk's flush): one round trip
    however many runs.
    """
    runs, spans = [], []
    for result, run_input in entries:
        run, run_spans = _build(organization_id=organization_id, agent_id=agent_id, revision_id=revision_id,
                                result=result, source=source, input=run_input)
        runs.append(run)
        spans.extend(run_spans)
    if runs:
        _write_runs_and_spans(runs, spans)
        for run, (result, _) in zip(runs, entries):
            observability.run_recorded(run, result)
    return runs
