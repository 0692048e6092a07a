"""Database access for the async execute family (DESIGN "The execute hot path").

Django's async ORM runs every query on a thread and may keep a connection across
awaits; an execute must do neither while it waits seconds on a model. So the
execute family reaches PostgreSQL through this module, in one of two modes
(``FRUXON_ASYNC_DB``):

``pool`` (PostgreSQL under the ASGI server, ``fruxon.asgi``; the default there)
    One psycopg ``AsyncConnectionPool`` per process (per event loop), opened with
    Django's own connection parameters and type adapters, so a row converts exactly
    as the ORM converts it (``fruxon.db.PreparedQuery.afirst``). A connection is held
    for ONE statement: the path's lookups (the API key on a cache miss; org, agent,
    budget and deployed revision; a pinned revision; a conversation's owner) and the
    run's record, never while a model is awaited. Sync ORM work off the fast path
    (a person's credentials, secrets, integrations, sub-agents, a conversation turn,
    enqueuing shadow runs and alerts) goes to a bounded executor
    (``FRUXON_ASYNC_DB_THREADS``): a few threads per process, never one per execution.
    A dead pooled connection (PostgreSQL restarted) is discarded at checkout with one
    ``poll()``, as ``fruxon.pg`` does for Django's pool; an outage answers in about a second
    (``_checkout``), then at once (``_connection``), and the first call after it renews the pool.

``thread``
    Every call runs on Django's own connection through
    ``sync_to_async(thread_sensitive=True)``: SQLite (the demo), and tests whose data
    lives in the test case's transaction (pytest-django's ``db``), which no other
    connection can see.

Unreachable PostgreSQL raises as Django's would (``fruxon.resilience.database_unavailable``
recognises psycopg's and the pool's errors): the view answers 503 ``database_unavailable``.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections

from .db import release_connection, server_spoke

logger = logging.getLogger("fruxon.outage")


# Set by fruxon.asgi: this process is the ASGI server, whose one event loop lives as long as the process.
# Anywhere else (the test client, a WSGI server) an async view runs on a short-lived loop per request,
# where a pool per loop would be opened for one request: Django's own connection serves there.
SERVED_BY_ASGI = False


def mode() -> str:
    """``pool`` or ``thread`` (see the module docstring)."""
    chosen = settings.FRUXON_ASYNC_DB
    if chosen:
        return chosen
    return "pool" if SERVED_BY_ASGI and connections[DEFAULT_DB_ALIAS].vendor == "postgresql" else "thread"


# --- the bounded executor for sync ORM work ---------------------------------------------------------

_executor: tuple[int, ThreadPoolExecutor] | None = None


def executor() -> ThreadPoolExecutor:
    """This process's executor for sync database work (a fresh one after a fork)."""
    global _executor
    if _executor is None or _executor[0] != os.getpid():
        _executor = (os.getpid(), ThreadPoolExecutor(max_workers=settings.FRUXON_ASYNC_DB_THREADS,
                                                     thread_name_prefix="fruxon-db"))
    return _executor[1]


def _in_worker(fn, args, kwargs):
    try:
        return fn(*args, **kwargs)
    finally:
        release_connection()  # with Django's pool, give the connection back; a persistent one stays


async def run(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` (sync, may use the ORM) without blocking the event loop.

    ``pool`` mode: on the bounded executor. ``thread`` mode: on Django's connection's own thread.
    """
    if mode() == "pool":
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor(), partial(_in_worker, fn, args, kwargs))
    return await sync_to_async(fn, thread_sensitive=True)(*args, **kwargs)


# --- statements on the pool ---------------------------------------------------------------------------

_pools: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # event loop -> (pid, pool)
_pool_born: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # pool -> time.monotonic() it was made


async def _alive(conn) -> bool:
    """Is this idle pooled connection usable? No round trip unless the server has said something
    (``fruxon.db.connection_alive``'s rule, awaited)."""
    from psycopg_pool import AsyncConnectionPool

    said = server_spoke(conn)
    if said is None:
        return False
    if not said:  # a healthy idle connection has nothing to say
        return True
    try:
        await AsyncConnectionPool.check_connection(conn)
    except Exception:  # noqa: BLE001 - any failure means: do not use it
        return False
    return True


async def _getconn(owner, timeout: float):
    """A live connection from ``owner``. After PostgreSQL restarted every idle connection is dead: the
    first found is discarded, the others are checked at once (``check``), and the checkout repeated
    with no sleep (psycopg_pool's own ``check`` callback backs off a second per dead connection)."""
    for _ in range(owner.max_size + 1):
        conn = await owner.getconn(timeout=timeout)
        try:
            alive = await _alive(conn)
        except BaseException:  # cancelled meanwhile: the connection must go back, whatever its state
            await owner.putconn(conn)
            raise
        if alive:
            return conn
        logger.warning("discarding a pooled PostgreSQL connection the server closed; checking the others")
        await conn.close()
        await owner.putconn(conn)  # closed: the pool discards it and opens a replacement
        await owner.check()
    return await owner.getconn(timeout=timeout)


def _connection_kwargs() -> dict:
    from psycopg import AsyncClientCursor

    wrapper = connections[DEFAULT_DB_ALIAS]
    params = wrapper.get_connection_params()
    # Django's sync cursor class cannot serve an async connection; the client-side binding it uses
    # (same SQL, same parameter quoting) has an async twin.
    params["cursor_factory"] = AsyncClientCursor
    params["autocommit"] = True
    params.pop("pool", None)
    timezone_name = wrapper.timezone_name
    if timezone_name:
        params["options"] = f"{params.get('options', '')} -c TimeZone={timezone_name}".strip()
    return params


async def pool():
    """This event loop's pool, opened on first use."""
    from psycopg_pool import AsyncConnectionPool

    loop = asyncio.get_running_loop()
    found = _pools.get(loop)
    if found is not None and found[0] == os.getpid():
        return found[1]
    created = AsyncConnectionPool(
        kwargs=_connection_kwargs(), min_size=min(2, settings.FRUXON_ASYNC_DB_POOL_SIZE),
        max_size=settings.FRUXON_ASYNC_DB_POOL_SIZE, timeout=settings.FRUXON_ASYNC_DB_POOL_TIMEOUT,
        open=False, name="fruxon-execute",
    )
    _pools[loop] = (os.getpid(), created)
    _pool_born[created] = time.monotonic()
    await created.open(wait=False)
    return created


def _django_fetchone(sql: str, params) -> tuple | None:
    with connections[DEFAULT_DB_ALIAS].cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()


def _django_execute(sql: str, params) -> None:
    with connections[DEFAULT_DB_ALIAS].cursor() as cursor:
        cursor.execute(sql, params)


# A refused connection costs well under a millisecond: probing this often keeps an outage cheap and
# makes recovery immediate.
_PROBE_SECONDS = 0.05


class PoolBusy(Exception):
    """Every connection of the execute pool stayed busy for the whole wait while PostgreSQL itself
    answers: load, not an outage (the view answers 503 ``overloaded``; no breaker opens)."""


@asynccontextmanager
async def _connection(timeout: float | None = None):
    """A pooled connection for one statement. While PostgreSQL is unreachable every call fails at
    once, but for one direct connection attempt (a probe) every ``_PROBE_SECONDS``: the first probe
    that connects renews the pool, so executes recover as soon as PostgreSQL does. ``timeout``: how
    long to wait for a free connection (default ``FRUXON_ASYNC_DB_POOL_TIMEOUT``)."""
    from psycopg_pool import PoolTimeout

    from .resilience import breaker, database_unavailable

    guard = breaker("PostgreSQL (execute pool)", reset_after=_PROBE_SECONDS)
    if not guard.allow():
        raise PoolTimeout("PostgreSQL was unreachable moments ago (circuit open)")
    owner = await pool()
    try:
        if guard.is_open:  # this call probes an outage: the pool itself backs off its reconnections
            await _probe()
            if _pool_born.get(owner, 0.0) < guard.opened_at:  # once per outage: a newer pool is left be
                owner = await _renew_pool(owner)
        conn = await _checkout(owner, timeout or settings.FRUXON_ASYNC_DB_POOL_TIMEOUT)
    except PoolBusy:
        raise
    except Exception as exc:
        if database_unavailable(exc):
            guard.failure(exc)
        raise
    try:
        yield conn
    except Exception as exc:
        if database_unavailable(exc):  # the connection broke under the statement
            guard.failure(exc)
        raise
    finally:
        await owner.putconn(conn)
    guard.success()


async def _checkout(owner, total: float):
    """A connection from ``owner`` within ``total`` seconds. A wait past the first second is either
    load (every connection busy) or an outage (none can be opened): one direct connection attempt
    tells which, so an outage answers in about a second (``PoolTimeout``, 503 ``database_unavailable``)
    and load keeps waiting, then ``PoolBusy``."""
    from psycopg_pool import PoolTimeout

    first = min(1.0, total)
    if total > _PROBE_AFTER_WAIT_UP_TO:  # a run's record: it waits for a connection, it never probes
        try:
            return await _getconn(owner, total)
        except PoolTimeout as exc:
            raise PoolBusy(f"no free connection in the execute pool within {total:.0f} s") from exc
    try:
        return await _getconn(owner, first)
    except PoolTimeout:
        pass
    await _probe()
    try:
        return await _getconn(owner, max(total - first, 0.05))
    except PoolTimeout as exc:
        raise PoolBusy(f"no free connection in the execute pool within {total:.0f} s") from exc


_PROBE_AFTER_WAIT_UP_TO = 10.0  # seconds: checkouts allowed to wait longer (a run's record) never probe
_probing: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # event loop -> the probe under way


async def _probe() -> None:
    """One direct connection attempt, shared by every caller that asks while it runs (hundreds of
    slow checkouts make one probe, not hundreds of connections): raise ``PoolTimeout`` when PostgreSQL
    cannot be reached, ``PoolBusy`` when it does not answer in time."""
    loop = asyncio.get_running_loop()
    under_way = _probing.get(loop)
    if under_way is None or under_way.done():
        under_way = _probing[loop] = asyncio.ensure_future(_probe_once())
    await asyncio.shield(under_way)


async def _probe_once() -> None:
    import psycopg
    from psycopg_pool import PoolTimeout

    try:
        probe = await psycopg.AsyncConnection.connect(**{**_connection_kwargs(), "connect_timeout": 2})
    except psycopg.OperationalError as exc:
        if "timeout" in str(exc).lower():
            # No answer in time is what an overloaded process sees too (its loop is late reading the
            # answer): load, not an outage. A refused or closed connection is an outage.
            raise PoolBusy(f"PostgreSQL did not answer a new connection in time: {exc}") from exc
        raise PoolTimeout(f"PostgreSQL cannot be reached: {exc}") from exc
    await probe.close()


_closing: set = set()


async def _renew_pool(old):
    """PostgreSQL answers again after an outage: a fresh pool, because the old one may still be waiting
    out its reconnection backoff (seconds, doubling) before it opens a connection. The old pool closes
    once the connections it lent are back."""
    loop = asyncio.get_running_loop()
    if _pools.get(loop, (None, None))[1] is old:
        del _pools[loop]
        closing = asyncio.ensure_future(old.close(timeout=30))
        _closing.add(closing)
        closing.add_done_callback(_closing.discard)
        logger.warning("PostgreSQL answers again: renewing the execute path's connection pool")
    return await pool()


async def fetchone(sql: str, params) -> tuple | None:
    """The first row of ``sql`` (Django's SQL and parameters, ``%s`` placeholders), or None."""
    if mode() != "pool":
        return await run(_django_fetchone, sql, params)
    async with _connection() as conn:
        cursor = await conn.execute(sql, params)
        return await cursor.fetchone()


async def execute(sql: str, params, *, timeout: float | None = None) -> None:
    """Run one statement in autocommit (several ``;``-separated ones form one implicit transaction).
    ``timeout``: how long it may wait for a free connection."""
    if mode() != "pool":
        return await run(_django_execute, sql, params)
    async with _connection(timeout) as conn:
        await conn.execute(sql, params)


async def close() -> None:
    """Close this event loop's pool (tests and server shutdown)."""
    found = _pools.pop(asyncio.get_running_loop(), None)
    if found is not None and found[0] == os.getpid():
        await found[1].close()
