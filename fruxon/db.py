"""Database helpers for the execute hot path.

``release_connection``: for code that waits on the outside world.

An execute spends most of its life waiting on a model provider. Holding a
PostgreSQL connection through that wait would cap the executions in flight at
the server's ``max_connections``. With a connection pool (``DB_POOL_MAX_SIZE``)
``release_connection`` hands the thread's connection back to the pool; the next
query takes one again (a pool checkout: no round trip, no reconnect).
Without a pool it does nothing: a persistent connection is kept (reconnecting
would cost more than it saves), and so is any connection inside a transaction.

``PreparedQuery``: a lookup compiled once per process (see its docstring).

``pg_json``: JSON text that PostgreSQL's ``jsonb`` accepts, whatever a model replied.
"""
from __future__ import annotations

import json
import math
import re
import threading

from django.db import connections, router
from django.db.models.query import get_related_populators
from django.db.utils import DEFAULT_DB_ALIAS


def is_pooled(alias: str = DEFAULT_DB_ALIAS) -> bool:
    return bool(connections[alias].settings_dict.get("OPTIONS", {}).get("pool"))


def release_connection(alias: str = DEFAULT_DB_ALIAS) -> None:
    """Return this thread's connection to the pool, unless it is in a transaction."""
    connection = connections[alias]
    if connection.connection is not None and not connection.in_atomic_block and is_pooled(alias):
        connection.close()


class PreparedQuery:
    """A hot-path lookup whose queryset shape never changes, compiled ONCE per process.

    Django compiles a queryset to SQL on every evaluation; for a select_related
    lookup that compilation costs more CPU than PostgreSQL spends answering it.
    ``build(*args)`` must return a queryset in which each argument appears
    exactly once as a plain (``exact``) filter value. It is built once with
    sentinel arguments, compiled, and each SQL parameter traced back to its
    argument; ``first(*args)`` then runs that SQL with the real arguments and
    builds the instances exactly as ``QuerySet.__iter__`` would (same row
    converters, same ``select_related`` population). The query goes through
    Django's cursor, so it is logged and counted like any other.
    """

    def __init__(self, build, sentinels: tuple):
        self._build = build
        self._sentinels = sentinels
        self._compiled: dict[str, tuple] = {}
        self._lock = threading.Lock()

    def _compile(self, alias: str) -> tuple:
        queryset = self._build(*self._sentinels)
        compiler = queryset.query.get_compiler(using=alias)
        sql, params = compiler.as_sql()
        slots = []
        for param in params:
            index = next((i for i, s in enumerate(self._sentinels) if type(param) is type(s) and param == s), None)
            slots.append((index, param))
        if sorted(i for i, _ in slots if i is not None) != list(range(len(self._sentinels))):
            raise ValueError(f"each argument must appear exactly once in the query: {sql}")
        return sql, slots, compiler

    def _alias(self) -> str:
        model = getattr(self, "_model", None)
        if model is None:
            model = self._model = self._build(*self._sentinels).model
        return router.db_for_read(model)

    def _prepare(self, args, using: str | None) -> tuple[str, str, list, object]:
        alias = using or self._alias()
        compiled = self._compiled.get(alias)
        if compiled is None:
            with self._lock:
                compiled = self._compiled.get(alias) or self._compiled.setdefault(alias, self._compile(alias))
        sql, slots, compiler = compiled
        return alias, sql, [args[index] if index is not None else constant for index, constant in slots], compiler

    @staticmethod
    def _instance(alias: str, compiler, row):
        if row is None:
            return None
        # As django.db.models.query.ModelIterable.__iter__ does it.
        select, klass_info = compiler.select, compiler.klass_info
        [row] = compiler.results_iter([[row[: compiler.col_count]]])
        start, end = klass_info["select_fields"][0], klass_info["select_fields"][-1] + 1
        init_list = [column[0].target.attname for column in select[start:end]]
        obj = klass_info["model"].from_db(alias, init_list, row[start:end])
        for populator in get_related_populators(klass_info, select, alias):
            populator.populate(row, obj)
        return obj

    def first(self, *args, using: str | None = None):
        alias, sql, params, compiler = self._prepare(args, using)
        with connections[alias].cursor() as cursor:
            cursor.execute(sql, params)
            row = cursor.fetchone()
        return self._instance(alias, compiler, row)

    async def afirst(self, *args):
        """``first`` for the async execute family: the same SQL and row conversion, run by ``fruxon.adb``
        (its pool, or Django's connection in ``thread`` mode). The default database only."""
        from . import adb

        alias, sql, params, compiler = self._prepare(args, DEFAULT_DB_ALIAS)
        return self._instance(alias, compiler, await adb.fetchone(sql, params))


# What PostgreSQL refuses in text and jsonb: NUL, and surrogates (only lone ones survive json.loads).
UNSTORABLE_CHAR = re.compile("[\x00\ud800-\udfff]")
# The same characters as JSON escapes (any case). A false hit (an escaped backslash before "u0000")
# only costs a walk of the document, never a wrong answer.
_UNSTORABLE_ESCAPE = r"\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})"
UNSTORABLE_ESCAPE = re.compile(_UNSTORABLE_ESCAPE)
UNSTORABLE_ESCAPE_BYTES = re.compile(_UNSTORABLE_ESCAPE.encode())


def _scrub(value):
    """``value`` with NUL and lone surrogates as U+FFFD and non-finite numbers as None (iterative: any depth)."""
    def clean_str(text: str) -> str:
        return UNSTORABLE_CHAR.sub("\ufffd", text)

    def clean(item):
        if isinstance(item, str):
            return clean_str(item)
        if isinstance(item, float) and not math.isfinite(item):
            return None
        return item

    root = [value]
    stack = [(root, 0)]
    while stack:
        holder, key = stack.pop()
        item = holder[key]
        if isinstance(item, dict):
            copy = {clean_str(k) if isinstance(k, str) else k: v for k, v in item.items()}
            holder[key] = copy
            stack.extend((copy, k) for k in copy)
        elif isinstance(item, (list, tuple)):
            copy = list(item)
            holder[key] = copy
            stack.extend((copy, i) for i in range(len(copy)))
        else:
            holder[key] = clean(item)
    return root[0]


def pg_json(value) -> str:
    """``value`` as JSON text PostgreSQL's ``jsonb`` (and its text columns) accept.

    Model replies are arbitrary: a NUL character (``jsonb`` refuses ``\\u0000``,
    text columns refuse NUL bytes), a lone surrogate (not Unicode) or a
    NaN/Infinity (``json.loads`` accepts them, JSON does not) would make the
    whole statement fail, and with it the run's record. The common case is one
    ``json.dumps`` and one scan of its text; only a document that may hold one of
    them is rebuilt, NUL and lone surrogates as U+FFFD, non-finite numbers as null.
    """
    try:
        text = json.dumps(value, allow_nan=False)
    except ValueError:
        text = None
    if text is not None and not UNSTORABLE_ESCAPE.search(text):
        return text
    return json.dumps(_scrub(value), allow_nan=False)


def server_spoke(conn) -> bool | None:
    """Has the server sent anything to this idle psycopg connection (sync or async)? None when it has
    no usable socket. A healthy idle connection has nothing to read; one the server closed has its
    final message and EOF waiting. One ``poll``, no round trip."""
    import select

    if conn.closed:
        return None
    try:
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, ValueError):
        return None
    return bool(readable)


def connection_alive(conn) -> bool:
    """Is this idle psycopg connection still usable? No round trip unless the server has said something.

    A healthy idle connection has nothing to read; one the server closed (restart, shutdown,
    ``pg_terminate_backend``) has its final message and EOF waiting. Only then is it checked
    with an empty query.
    """
    said = server_spoke(conn)
    if said is None:
        return False
    if not said:
        return True
    try:
        from psycopg_pool import ConnectionPool

        ConnectionPool.check_connection(conn)
    except Exception:  # noqa: BLE001 - any failure means: do not hand it out
        return False
    return True
