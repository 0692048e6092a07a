"""Event-loop plumbing of the engine: the per-thread loop of the sync entry points, lanes, and
awaits that must finish even when the awaiting task is cancelled.

* :func:`run_sync` runs a coroutine to completion on the calling thread's own event loop
  (created on first use, kept for the thread's life, replaced after a fork). The sync
  :func:`agents.engine.run` and the providers' sync ``complete`` use it, so a Celery worker
  or a WSGI thread drives exactly the async engine, and keeps its pooled connections
  (:func:`agents.engine.transport.default_async_client` is per loop) from one run to the next.
  It refuses to run inside a running loop: there, ``await`` the async API instead.
* A :class:`Lane` is a sequence of runtime calls that a *sync* runtime must see on one
  thread (its reservations are thread-local): the run's main path is one lane, and each
  step the workflow runs in parallel opens its own. :data:`CURRENT_LANE` holds the lane of
  the running code (a context variable, so tasks inherit it).
* :func:`settle` awaits something to completion even if the awaiting task is cancelled
  meanwhile, then reports whether it was: the engine uses it for budget reservations and
  their settlement, which must never be abandoned half way.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
import types
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


_private_loops: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()


def is_private_loop(loop: asyncio.AbstractEventLoop) -> bool:
    """Is ``loop`` a thread's private loop (:func:`run_sync`: one run at a time on it)?"""
    return loop in _private_loops


class _ThreadLoop:
    """The event loop of one thread; closed when the thread ends (its thread-local goes away)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        _private_loops.add(self.loop)

    def __del__(self) -> None:
        loop = getattr(self, "loop", None)
        if loop is not None and not loop.is_running() and not loop.is_closed() and self.pid == os.getpid():
            try:
                loop.close()
            except Exception:  # interpreter shutdown: nothing left to release
                pass


_local = threading.local()


def thread_loop() -> asyncio.AbstractEventLoop:
    """This thread's private event loop (a fresh one after a fork: an inherited loop is not usable)."""
    holder: _ThreadLoop | None = getattr(_local, "holder", None)
    if holder is None or holder.pid != os.getpid() or holder.loop.is_closed():
        holder = _local.holder = _ThreadLoop()
    return holder.loop


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on this thread's loop (see the module contract)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        coro.close()
        raise RuntimeError("the engine's sync API was called from a running event loop: await the async one "
                           "(agents.engine.arun) instead")
    return thread_loop().run_until_complete(coro)


class Lane:
    """Runtime calls that must share one thread (see the module contract).

    ``inline`` lanes run calls on the event loop's own thread (the sync entry point's loop is
    private to one run, so a short blocking call blocks nothing else), with the loop marked as
    not running meanwhile (see :meth:`call`); other lanes get one
    worker thread each, created at their first call and released by :meth:`close`.
    """

    __slots__ = ("inline", "_executor")

    def __init__(self, *, inline: bool = False):
        self.inline = inline
        self._executor: ThreadPoolExecutor | None = None

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self.inline:
            # The loop is private to this run and blocked on this call, so say so: with no running
            # loop in the thread, a sync host that refuses to run inside one (Django's ORM) runs
            # exactly as it did before the engine was async.
            loop = asyncio.get_running_loop()
            asyncio._set_running_loop(None)
            try:
                return fn(*args, **kwargs)
            finally:
                asyncio._set_running_loop(loop)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fruxon-runtime")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None


CURRENT_LANE: contextvars.ContextVar[Lane | None] = contextvars.ContextVar("fruxon_engine_lane", default=None)


@types.coroutine
def _resume(coro: Any, yielded: Any) -> Any:
    """Go on with ``coro``, which yielded ``yielded`` at its first step, as ``await`` would have."""
    while True:
        try:
            sent = yield yielded
        except BaseException as exc:  # thrown in by the task (its cancellation): pass it on
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                yielded = coro.send(sent)
            except StopIteration as stop:
                return stop.value


async def settle(awaitable: Awaitable[T]) -> tuple[T, bool]:
    """Await ``awaitable`` to its end even if this task is cancelled meanwhile.

    Returns ``(result, cancelled)``; the caller re-raises :class:`asyncio.CancelledError`
    once it has dealt with the result (e.g. released the reservation it holds). An exception
    of ``awaitable`` itself is raised as usual (after the same wait).
    """
    if asyncio.iscoroutine(awaitable) and not isinstance(awaitable, types.GeneratorType):
        # Its first step runs here, at once: most hooks (an in-memory runtime, a sync one on an
        # inline lane) finish in it, and need no task of their own.
        try:
            first = awaitable.send(None)
        except StopIteration as stop:
            return stop.value, False
        future = asyncio.ensure_future(_resume(awaitable, first))
    else:
        future = asyncio.ensure_future(awaitable)
    cancelled = False
    while True:
        try:
            return await asyncio.shield(future), cancelled
        except asyncio.CancelledError:
            if future.done():
                if future.cancelled():
                    raise
                return future.result(), cancelled
            cancelled = True
