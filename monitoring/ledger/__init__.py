"""The budget ledger (DESIGN rule 6): reserve worst case, settle to actual, never overshoot.

Before each model call the runtime reserves the call's worst-case cost with
``ledger().reserve(state, amount)``; it is admitted only if
``spent + reserved + amount <= cap`` in ONE atomic operation, so however many
processes race, admitted reservations never exceed the cap. After the call,
``settle`` moves the reservation to ``spent`` at the actual cost. The
reservation is an upper bound of what the provider can bill
(``agents.engine.tokens``); should a provider still report more, the actual is
settled as reported (it was billed) and the run is flagged
``usage_over_reservation``. A reservation left by a killed process is released
by the ``release_stale`` task. A reservation of 0 (a model priced at $0) is as
valid as any other.

Two implementations, same contract:

* ``RedisLedger``: a Lua script per operation (atomic in Redis); the default
  when ``REDIS_URL`` is set. Redis keeps no data on disk here, so a period
  whose key is missing is re-seeded from the database's durable spend.
* ``DatabaseLedger``: a conditional ``UPDATE ... WHERE spent + reserved + x <=
  cap`` on the period row (PostgreSQL re-checks the predicate after a row
  lock wait); the embedded default and the fallback.

Spent only goes up. The database keeps a durable record per agent and period
(``BudgetPeriod``, see ``spend``): the settled spend (or the Redis checkpoint)
and the cost of the period's deleted runs, which retention adds as it deletes
them. Ledgers are seeded from the floor it gives, and reconciliation only
raises a ledger to it (``raise_spent``), never lowers one: recorded runs lag
settled spend (runs in flight). Lowering spent is an explicit, audited
correction (``monitoring.budgets.correct_spent``).

``FRUXON_LEDGER=redis|database`` overrides the choice. Amounts are integers in
units of 1e-8 USD (the precision of recorded costs), so no float rounding can
admit a cent too much. When the ledger cannot be reached, ``reserve`` raises
``LedgerUnavailable``: execution fails closed.
"""
from __future__ import annotations

from functools import lru_cache

from django.conf import settings

from .base import (
    BudgetState,
    Ledger,
    LedgerUnavailable,
    Reservation,
    from_units,
    to_units,
)

__all__ = ["BudgetState", "Ledger", "LedgerUnavailable", "Reservation", "from_units", "ledger", "to_units"]


@lru_cache(maxsize=1)
def _make(kind: str, url: str) -> Ledger:
    if kind == "redis":
        from .redis_ledger import RedisLedger

        return RedisLedger(url)
    from .db_ledger import DatabaseLedger

    return DatabaseLedger()


def ledger() -> Ledger:
    kind = getattr(settings, "FRUXON_LEDGER", "") or ("redis" if settings.REDIS_URL else "database")
    return _make(kind, settings.FRUXON_LEDGER_REDIS_URL or settings.REDIS_URL)


_async_ledgers: dict = {}


def async_ledger():
    """The ledger for the async execute family, on the running event loop: ``reserve`` and ``settle``
    as coroutines with ``ledger()``'s contract. Redis: its scripts over redis.asyncio. The database
    ledger: its own calls, through ``fruxon.adb.run`` (a thread; the loop never blocks)."""
    import asyncio
    import os
    import weakref

    sync = ledger()
    from .redis_ledger import AsyncRedisLedger, RedisLedger

    if not isinstance(sync, RedisLedger):
        return _ThreadedLedger(sync)
    loop = asyncio.get_running_loop()
    per_loop = _async_ledgers.setdefault(id(sync), weakref.WeakKeyDictionary())
    found = per_loop.get(loop)
    if found is None or found[0] != os.getpid():
        found = per_loop[loop] = (os.getpid(), AsyncRedisLedger(sync))
    return found[1]


class _ThreadedLedger:
    def __init__(self, sync: Ledger):
        self.sync = sync

    async def reserve(self, state: BudgetState, units: int) -> Reservation | None:
        from fruxon import adb

        return await adb.run(self.sync.reserve, state, units)

    async def settle(self, reservation: Reservation, actual_units: int) -> int:
        from fruxon import adb

        return await adb.run(self.sync.settle, reservation, actual_units)
