"""Surviving outages of Redis and PostgreSQL: a circuit breaker and the "is this an outage?" tests.

``CircuitBreaker``: after a dependency fails (an unreachable Redis), calls to it
fail fast for ``reset_after`` seconds instead of each paying a connect timeout;
then ONE caller probes it (half-open) while the others keep failing fast, and its
success closes the breaker. The outage is logged when it starts, at most once per
``log_every`` seconds while it lasts, and when it ends, never once per request.
Breakers are per process (``breaker(name)``) and thread-safe; they hold no I/O, so
the async execute path can share them as they are.

``database_unavailable(exc)``: whether an exception means PostgreSQL cannot be
reached (a refused or broken connection, a pool that could not hand one out, a
server shutting down), as opposed to an error of the query itself.
"""
from __future__ import annotations

import logging
import threading
import time

logger = logging.getLogger("fruxon.outage")


class CircuitBreaker:
    def __init__(self, name: str, *, reset_after: float = 1.0, log_every: float = 60.0):
        self.name = name
        self.reset_after = reset_after
        self.log_every = log_every
        self._lock = threading.Lock()
        self._opened_at: float | None = None  # monotonic; None while closed
        self._retry_at = 0.0
        self._logged_at = 0.0
        self._failures = 0

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    @property
    def opened_at(self) -> float:
        """When (``time.monotonic()``) the current outage began; 0 while closed."""
        return self._opened_at or 0.0

    def allow(self) -> bool:
        """May the caller try the dependency now? (closed: yes; open: only the one half-open probe)."""
        if self._opened_at is None:
            return True
        with self._lock:
            now = time.monotonic()
            if self._opened_at is None:
                return True
            if now < self._retry_at:
                return False
            self._retry_at = now + self.reset_after  # this caller probes; the others fail fast meanwhile
            return True

    def success(self) -> bool:
        """Record a call that worked; True when it ended an outage."""
        if self._opened_at is None:
            return False
        with self._lock:
            if self._opened_at is None:
                return False
            lasted, failures = time.monotonic() - self._opened_at, self._failures
            self._opened_at, self._failures = None, 0
        logger.warning("%s is reachable again after %.1f s (%d failed calls)", self.name, lasted, failures)
        return True

    def failure(self, exc: BaseException | None = None) -> None:
        """Record a failed call: open (or keep open) the breaker; log once per ``log_every``."""
        with self._lock:
            now = time.monotonic()
            self._failures += 1
            self._retry_at = now + self.reset_after
            first = self._opened_at is None
            if first:
                self._opened_at = now
            if not (first or now - self._logged_at >= self.log_every):
                return
            self._logged_at = now
            since = now - self._opened_at
        reason = f"{type(exc).__name__}: {exc}" if exc is not None else "failed"
        if first:
            logger.error("%s is unreachable (%s); failing fast, retrying every %.1f s", self.name, reason,
                         self.reset_after)
        else:
            logger.error("%s still unreachable after %.0f s (%s)", self.name, since, reason)

    def reset(self) -> None:
        with self._lock:
            self._opened_at, self._failures, self._retry_at = None, 0, 0.0


_breakers: dict[str, CircuitBreaker] = {}
_breakers_lock = threading.Lock()


def breaker(name: str, *, reset_after: float | None = None) -> CircuitBreaker:
    """The process's breaker for ``name`` (created on first use)."""
    found = _breakers.get(name)
    if found is None:
        with _breakers_lock:
            found = _breakers.get(name)
            if found is None:
                if reset_after is None:
                    from django.conf import settings

                    reset_after = getattr(settings, "FRUXON_BREAKER_RESET_SECONDS", 1.0)
                found = _breakers[name] = CircuitBreaker(name, reset_after=reset_after)
    return found


# SQLSTATEs that mean "no usable connection": class 08 (connection exception), the server shutting
# down or starting (57P01-57P03), too many connections (53300).
_UNAVAILABLE_SQLSTATES = {"57P01", "57P02", "57P03", "53300"}


def database_unavailable(exc: BaseException) -> bool:
    """Is ``exc`` (Django's wrapper or psycopg's own) a failure to reach PostgreSQL at all?"""
    from django.db import utils as db_utils

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        try:
            import psycopg
            import psycopg_pool
        except ImportError:  # SQLite-only install
            psycopg = psycopg_pool = None
        if psycopg_pool is not None and isinstance(exc, psycopg_pool.PoolTimeout | psycopg_pool.PoolClosed):
            return True
        if psycopg is not None and isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
            state = getattr(exc, "sqlstate", None)
            return state is None or state.startswith("08") or state in _UNAVAILABLE_SQLSTATES
        if psycopg is not None and isinstance(exc, psycopg.Error):
            return False
        if isinstance(exc, db_utils.InterfaceError) and "closed" in str(exc):
            return True  # Django's "connection already closed" (a connection that died under it)
        if not isinstance(exc, db_utils.OperationalError | db_utils.InterfaceError):
            return False
        exc = exc.__cause__ or exc.__context__
    return False
