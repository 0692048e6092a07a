"""The Redis ledger: each operation is one Lua script, atomic inside Redis.

Keys per period (``{fx:ledger:<agent>:<period>:<start>}``): ``:totals``
(hash: spent, reserved), ``:res`` (hash: reservation id -> units). A global
sorted set ``fx:ledger:open`` holds open reservations by creation time for the
stale sweep. Scripts touch keys of one period plus that set, so the ledger
needs one Redis primary (not a sharded cluster). Periods expire a day
after they end.

Redis keeps no data on disk here. A missing ``:totals`` (Redis restarted or
flushed, or a new period) makes ``reserve`` answer "unseeded"; the ledger then
seeds spent with HSETNX from the database's durable floor
(``spend.durable_spent_units``: the runs still recorded, plus the cost of the
period's runs deleted since, or the checkpoint in the period's ``BudgetPeriod``
row if higher) and retries. Seeding and ``open_period`` also create that row,
so the deletion of any of the period's runs is counted there. Reconciliation
checkpoints the Redis total into the row (a high-water mark), which covers
spend settled by runs that were never recorded (a process killed mid-run).
What a restart can still forget is what runs IN FLIGHT at that moment had
settled since the last checkpoint; each such run is part of the floor once it
is recorded, and the next reconciliation raises Redis to it.
"""
from __future__ import annotations

import time
import uuid
from datetime import datetime

import redis

from .base import BudgetState, LedgerUnavailable, Reservation

OPEN = "fx:ledger:open"

RESERVE = """
-- KEYS: totals, res, open   ARGV: units, cap, enforce, id, now, expire_at, member
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent') or '0')
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')
local units = tonumber(ARGV[1])
if ARGV[3] == '1' and spent + reserved + units > tonumber(ARGV[2]) then return 0 end
redis.call('HINCRBY', KEYS[1], 'reserved', units)
redis.call('HSET', KEYS[2], ARGV[4], units)
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[7])
redis.call('EXPIREAT', KEYS[1], ARGV[6])
redis.call('EXPIREAT', KEYS[2], ARGV[6])
return 1
"""

# A zero reservation (a model priced at $0) must not become HINCRBY ... -0: Lua's -0 reaches
# Redis as the string "-0", which HINCRBY refuses, and a failed script is not rolled back
# (the entry would stay in the open set). So: 0 - n (never -0), and no increment by zero.
SETTLE = """
-- KEYS: totals, res, open   ARGV: id, actual, member
redis.call('ZREM', KEYS[3], ARGV[3])
local units = redis.call('HGET', KEYS[2], ARGV[1])
if units then
  redis.call('HDEL', KEYS[2], ARGV[1])
  units = tonumber(units)
  if units ~= 0 then redis.call('HINCRBY', KEYS[1], 'reserved', 0 - units) end
end
local actual = tonumber(ARGV[2])
if actual == 0 then return tonumber(redis.call('HGET', KEYS[1], 'spent') or '0') end
return redis.call('HINCRBY', KEYS[1], 'spent', actual)
"""

RELEASE = """
-- KEYS: totals, res, open   ARGV: id, member
local units = redis.call('HGET', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[2])
if not units then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
units = tonumber(units)
if units ~= 0 then redis.call('HINCRBY', KEYS[1], 'reserved', 0 - units) end
return 1
"""

RAISE_SPENT = """
-- KEYS: totals   ARGV: floor, expire_at.  spent = max(spent, floor); returns the previous spent (floor if unseeded)
local previous = redis.call('HGET', KEYS[1], 'spent')
local floor = tonumber(ARGV[1])
if not previous then
  redis.call('HSET', KEYS[1], 'spent', floor)
  redis.call('HSETNX', KEYS[1], 'reserved', 0)
  redis.call('EXPIREAT', KEYS[1], ARGV[2])
  return floor
end
previous = tonumber(previous)
if previous < floor then redis.call('HSET', KEYS[1], 'spent', floor) end
return previous
"""

SET_SPENT = """
local previous = tonumber(redis.call('HGET', KEYS[1], 'spent') or '0')
redis.call('HSET', KEYS[1], 'spent', ARGV[1])
redis.call('HSETNX', KEYS[1], 'reserved', 0)
redis.call('EXPIREAT', KEYS[1], ARGV[2])
return previous
"""


def _keys(state: BudgetState) -> tuple[str, str, str]:
    base = f"{{fx:ledger:{state.key}}}"
    return f"{base}:totals", f"{base}:res", OPEN


def _expire_at(state: BudgetState) -> int:
    return int(state.period_end.timestamp()) + 86_400


class RedisLedger:
    """Fails closed, and fast: short socket timeouts, one immediate retry, and a circuit breaker.

    While Redis is unreachable every operation raises ``LedgerUnavailable``; after the first
    failure the process's breaker (``fruxon.resilience``) refuses at once for
    ``FRUXON_BREAKER_RESET_SECONDS`` before one call probes Redis again, so an execute under an
    enforced budget answers 503 in milliseconds instead of each paying a timeout.
    """

    def __init__(self, url: str):
        from django.conf import settings

        from fruxon.cache import QUICK_RETRY
        from fruxon.resilience import breaker

        self.url = url
        self.client = redis.Redis.from_url(url, socket_timeout=settings.FRUXON_REDIS_SOCKET_TIMEOUT,
                                           socket_connect_timeout=settings.FRUXON_REDIS_CONNECT_TIMEOUT,
                                           retry=QUICK_RETRY, health_check_interval=30)
        self.breaker = breaker(f"Redis ledger {url.rpartition('@')[2]}")
        self._reserve = self.client.register_script(RESERVE)
        self._settle = self.client.register_script(SETTLE)
        self._release = self.client.register_script(RELEASE)
        self._set_spent = self.client.register_script(SET_SPENT)
        self._raise_spent = self.client.register_script(RAISE_SPENT)

    def _seed(self, state: BudgetState) -> None:
        """Make sure the period's database row exists; seed a missing Redis total from the durable floor.

        HSETNX: a total another process seeded (or already moved) meanwhile is never overwritten.
        """
        from .spend import durable_spent_units, period_row

        totals, _, _ = _keys(state)
        if self.client.exists(totals):
            period_row(state)  # one lookup; creates the row (seeded from the runs) if it is missing
            return
        floor = durable_spent_units(state)
        pipe = self.client.pipeline()
        pipe.hsetnx(totals, "spent", floor)
        pipe.hsetnx(totals, "reserved", 0)
        pipe.expireat(totals, _expire_at(state))
        pipe.execute()

    def _admit(self) -> None:
        if not self.breaker.allow():
            raise LedgerUnavailable("Redis ledger unavailable: unreachable moments ago (circuit open)")

    def _unavailable(self, exc: redis.RedisError) -> LedgerUnavailable:
        if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
            self.breaker.failure(exc)
        return LedgerUnavailable(f"Redis ledger unavailable: {type(exc).__name__}")

    def open_period(self, state: BudgetState) -> None:
        self._admit()
        try:
            self._seed(state)
        except redis.RedisError as exc:
            raise self._unavailable(exc) from exc
        self.breaker.success()

    @staticmethod
    def reserve_args(state: BudgetState, units: int) -> tuple[str, list]:
        """A new reservation's id and the RESERVE script's arguments."""
        rid = uuid.uuid4().hex
        member = f"{state.key}|{rid}"
        return rid, [units, state.cap_units, "1" if state.enforce else "0", rid, time.time(), _expire_at(state), member]

    def reserve(self, state: BudgetState, units: int) -> Reservation | None:
        rid, args = self.reserve_args(state, units)
        self._admit()
        try:
            for _ in range(2):
                answer = self._reserve(keys=list(_keys(state)), args=args)
                if answer != -1:
                    self.breaker.success()
                    return Reservation(rid, state, units) if answer == 1 else None
                self._seed(state)
            raise LedgerUnavailable("the Redis ledger could not be seeded")
        except redis.RedisError as exc:
            raise self._unavailable(exc) from exc

    def settle(self, reservation: Reservation, actual_units: int) -> int:
        member = f"{reservation.state.key}|{reservation.id}"
        return int(self._settle(keys=list(_keys(reservation.state)), args=[reservation.id, actual_units, member]))

    def usage(self, state: BudgetState) -> tuple[int, int]:
        totals, _, _ = _keys(state)
        self._admit()
        try:
            spent, reserved = self.client.hmget(totals, "spent", "reserved")
        except redis.RedisError as exc:
            raise self._unavailable(exc) from exc
        self.breaker.success()
        if spent is None:  # not seeded (yet): what the next reservation would be seeded with
            from .spend import durable_spent_units

            return durable_spent_units(state, create=False), 0
        return int(spent), int(reserved or 0)

    def raise_spent(self, state: BudgetState, floor_units: int) -> int:
        """Reconciliation: ``spent = max(spent, floor)`` atomically; returns the previous spent."""
        totals, _, _ = _keys(state)
        try:
            return int(self._raise_spent(keys=[totals], args=[floor_units, _expire_at(state)]))
        except redis.RedisError as exc:
            raise LedgerUnavailable(f"Redis ledger unavailable: {type(exc).__name__}") from exc

    def set_spent(self, state: BudgetState, spent_units: int) -> int:
        """An explicit correction (``monitoring.budgets.correct_spent``): overwrite spent; returns the previous value."""
        totals, _, _ = _keys(state)
        return int(self._set_spent(keys=[totals], args=[spent_units, _expire_at(state)]))

    def release_stale(self, older_than: datetime) -> int:
        released = 0
        for member in self.client.zrangebyscore(OPEN, 0, older_than.timestamp(), start=0, num=10_000):
            key, _, rid = member.decode().rpartition("|")
            base = f"{{fx:ledger:{key}}}"
            released += int(self._release(keys=[f"{base}:totals", f"{base}:res", OPEN], args=[rid, member]))
        return released


class AsyncRedisLedger:
    """``RedisLedger``'s reserve and settle over redis.asyncio, for the async execute family.

    The same scripts, keys, breaker and answers as the sync ledger it is built on (``sync``);
    one per event loop (its connections belong to that loop). Seeding an unseeded period
    reads the database, so it runs the sync ledger's ``_seed`` through ``fruxon.adb.run``.
    """

    def __init__(self, sync: RedisLedger):
        import redis.asyncio
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.sync = sync
        kwargs = sync.client.connection_pool.connection_kwargs
        # The same URL (TLS, unix sockets, credentials as it says), timeouts and retry as the sync ledger.
        self.client = redis.asyncio.Redis.from_url(
            sync.url, socket_timeout=kwargs.get("socket_timeout"),
            socket_connect_timeout=kwargs.get("socket_connect_timeout"), retry=Retry(NoBackoff(), 1),
            health_check_interval=30,
        )
        self._reserve = self.client.register_script(RESERVE)
        self._settle = self.client.register_script(SETTLE)

    async def reserve(self, state: BudgetState, units: int) -> Reservation | None:
        from fruxon import adb

        rid, args = self.sync.reserve_args(state, units)
        self.sync._admit()
        try:
            for _ in range(2):
                answer = await self._reserve(keys=list(_keys(state)), args=args)
                if answer != -1:
                    self.sync.breaker.success()
                    return Reservation(rid, state, units) if answer == 1 else None
                await adb.run(self.sync._seed, state)
            raise LedgerUnavailable("the Redis ledger could not be seeded")
        except redis.RedisError as exc:
            raise self.sync._unavailable(exc) from exc

    async def settle(self, reservation: Reservation, actual_units: int) -> int:
        member = f"{reservation.state.key}|{reservation.id}"
        return int(await self._settle(keys=list(_keys(reservation.state)),
                                      args=[reservation.id, actual_units, member]))
