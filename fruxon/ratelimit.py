"""Rate limits on Redis: a weighted sliding-window log, one Lua script per check (issue 14 item 1).

Contract (API.md "Rate limits", "Operations"):

* A limit of N per minute admits at most N units in ANY 60 s: each admitted
  request (cost 1) or token reservation (cost = tokens) is an entry
  ``<id>|<cost>`` in a sorted set scored by its time in ms, with the window's
  running total beside it. An entry counts while ``now - score < 60 s``. The
  burst equals the limit (N at once, then nothing until the oldest leaves).
* One check may hold several limits (an API key's and its org's): ONE script
  evaluates all of them and admits only if every one has room, then records the
  cost in each. Atomic in Redis, so it holds across threads and processes.
  The script is sent once per connection pool and then called by SHA
  (``EVALSHA``; redis-py reloads it if Redis forgot it).
* A refusal says when the request would pass (``retry_after``, whole seconds,
  rounded up) and which limit refused it; an admission says the tightest
  limit's remaining and reset, for the ``RateLimit-*`` headers.
* ``settle`` turns a reservation's cost into the actual (tokens: the upper bound
  before a model call, the usage after it), keeping the entry's time, so a
  smaller actual frees the difference at once. An entry already out of the
  window is left alone.
* The clock is injected: ``now`` comes from the caller (``clock``, a
  ``time.time``-like callable), or, only when ``FRUXON_TESTING`` is set, from a
  Redis key named by ``FRUXON_RATELIMIT_CLOCK_KEY`` (milliseconds), read inside
  the script, so tests drive the time of every server process at once.
* Fail open: when Redis cannot be reached (socket timeout
  ``FRUXON_RATELIMIT_TIMEOUT_MS``), the check admits, the outage is logged at most
  once per ``FRUXON_RATELIMIT_LOG_INTERVAL_SECONDS`` per process, and Redis is not
  tried again for ``FRUXON_RATELIMIT_BREAKER_SECONDS`` (a circuit breaker), so a
  down Redis costs nothing per request after the first failure.

``RateLimiter`` (redis-py) and ``AsyncRateLimiter`` (redis.asyncio) share the
script, the arguments and the answer's reading: same semantics. Keys need one
Redis primary (not a sharded cluster), as the budget ledger's do.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry

logger = logging.getLogger("fruxon.ratelimit")

WINDOW_MS = 60_000

# KEYS: per limit a (log, total) pair, then the clock key if ARGV[5] == '1'.
# ARGV: now_ms, window_ms, member id, cost, use clock key, limit_1, limit_2, ...
# Returns {admitted, index of the limit reported, its limit, remaining, reset_ms, retry_ms, now_ms};
# retry_ms = -1 when the cost exceeds the limit itself (it can never pass).
CHECK = """
local use_clock = ARGV[5] == '1'
local n = (#KEYS - (use_clock and 1 or 0)) / 2
local now = tonumber(ARGV[1])
if use_clock then
  local c = redis.call('GET', KEYS[#KEYS])
  if c then now = tonumber(c) end
end
local window = tonumber(ARGV[2])
local cost = tonumber(ARGV[4])
local cutoff = now - window
local totals = {}
for i = 1, n do
  local log, sum = KEYS[2 * i - 1], KEYS[2 * i]
  local total = tonumber(redis.call('GET', sum) or '0')
  local old = redis.call('ZRANGEBYSCORE', log, '-inf', cutoff)
  if #old > 0 then
    for _, m in ipairs(old) do total = total - tonumber(string.match(m, '|(%d+)$')) end
    redis.call('ZREMRANGEBYRANK', log, 0, #old - 1)
    if total < 0 then total = 0 end
    redis.call('SET', sum, total, 'PX', window + 1000)
  end
  totals[i] = total
end
-- refused: the limit whose room comes back last decides when to retry
local refused, retry = 0, 0
for i = 1, n do
  local limit = tonumber(ARGV[5 + i])
  local total = totals[i]
  if total + cost > limit then
    local wait
    if cost > limit then
      wait = -1
    else
      local need = total + cost - limit
      local freed, start = 0, 0
      while freed < need do
        local batch = redis.call('ZRANGE', KEYS[2 * i - 1], start, start + 63, 'WITHSCORES')
        if #batch == 0 then break end
        for j = 1, #batch, 2 do
          freed = freed + tonumber(string.match(batch[j], '|(%d+)$'))
          if freed >= need then
            wait = tonumber(batch[j + 1]) + window - now
            break
          end
        end
        start = start + 64
      end
      if wait == nil then wait = window end
    end
    if refused == 0 or wait == -1 or (retry ~= -1 and wait > retry) then
      refused, retry = i, wait
    end
  end
end
local function reset_of(i)
  local first = redis.call('ZRANGE', KEYS[2 * i - 1], 0, 0, 'WITHSCORES')
  if #first == 0 then return 0 end
  return tonumber(first[2]) + window - now
end
if refused > 0 then
  local limit = tonumber(ARGV[5 + refused])
  local remaining = limit - totals[refused]
  if remaining < 0 then remaining = 0 end
  return {0, refused, limit, remaining, reset_of(refused), retry, now}
end
local member = ARGV[3] .. '|' .. ARGV[4]
local tightest, best = 1, nil
for i = 1, n do
  local log, sum = KEYS[2 * i - 1], KEYS[2 * i]
  if cost > 0 then
    redis.call('ZADD', log, now, member)
    redis.call('PEXPIRE', log, window + 1000)
    redis.call('INCRBY', sum, cost)
  end
  redis.call('PEXPIRE', sum, window + 1000)
  local remaining = tonumber(ARGV[5 + i]) - totals[i] - cost
  if best == nil or remaining < best then tightest, best = i, remaining end
end
return {1, tightest, tonumber(ARGV[5 + tightest]), best, reset_of(tightest), 0, now}
"""

# KEYS: per limit a (log, total) pair.  ARGV: member id, reserved cost, actual cost.
# The entry keeps its time; an entry already out of the window is left alone.
SETTLE = """
local old = ARGV[1] .. '|' .. ARGV[2]
local new = ARGV[1] .. '|' .. ARGV[3]
local delta = tonumber(ARGV[3]) - tonumber(ARGV[2])
local moved = 0
for i = 1, #KEYS / 2 do
  local log, sum = KEYS[2 * i - 1], KEYS[2 * i]
  local score = redis.call('ZSCORE', log, old)
  if score then
    redis.call('ZREM', log, old)
    if tonumber(ARGV[3]) > 0 then redis.call('ZADD', log, score, new) end
    if delta ~= 0 then
      local total = redis.call('INCRBY', sum, delta)
      if total < 0 then redis.call('SET', sum, 0, 'KEEPTTL') end
    end
    moved = moved + 1
  end
end
return moved
"""


@dataclass(frozen=True)
class Limit:
    """One limit: ``limit`` units per minute on the bucket ``bucket`` (e.g. ``o12:r``), named ``scope`` in answers."""

    bucket: str
    limit: int
    scope: str  # "organization" | "apiKey"
    kind: str  # "requests" | "executions" | "tokens"
    org: str = ""  # the org's slug, for the refusal metric's label

    @property
    def keys(self) -> tuple[str, str]:
        return f"fx:rl:{self.bucket}:log", f"fx:rl:{self.bucket}:sum"


@dataclass
class Decision:
    """The answer of one check. ``enforced`` is False when no limit applied or Redis was away (fail open)."""

    allowed: bool
    enforced: bool = False
    limit: Limit | None = None  # the limit reported (the refusing one, or the tightest)
    remaining: int | None = None
    reset_seconds: int = 0
    retry_after: int = 0  # whole seconds until the refused request would pass
    never: bool = False  # refused because the cost alone exceeds the limit
    member: str | None = None
    cost: int = 0
    limits: tuple[Limit, ...] = field(default=())

    def headers(self) -> dict[str, str]:
        """``RateLimit-Limit/Remaining/Reset`` (and ``Retry-After`` on a refusal); empty when not enforced."""
        if not self.enforced or self.limit is None:
            return {}
        headers = {"RateLimit-Limit": str(self.limit.limit), "RateLimit-Remaining": str(max(self.remaining or 0, 0)),
                   "RateLimit-Reset": str(self.reset_seconds)}
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after)
        return headers


ADMIT_ALL = Decision(allowed=True)


def _seconds(ms: float) -> int:
    return max(0, math.ceil(ms / 1000.0))


class _FailOpen:
    """The circuit breaker and the once-per-interval outage log, shared by both limiters' code.

    A refused or reset connection opens the breaker at once. A timeout may only mean this process was
    busy (a starved thread reads its answer late), so the breaker opens after ``TIMEOUTS_TO_OPEN`` in a
    row: a blackholed Redis still costs a few requests one timeout each, then nothing.
    """

    TIMEOUTS_TO_OPEN = 3

    def __init__(self, breaker_seconds: float, log_interval: float):
        self.breaker_seconds = breaker_seconds
        self.log_interval = log_interval
        self._skip_until = 0.0
        self._timeouts = 0
        self._logged_at: float | None = None
        self._lock = threading.Lock()

    def open(self) -> bool:
        """True while Redis is being skipped after a failure."""
        return time.monotonic() < self._skip_until

    def succeeded(self) -> None:
        self._timeouts = 0

    def failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        with self._lock:
            self._timeouts = self._timeouts + 1 if isinstance(exc, redis.TimeoutError) else self.TIMEOUTS_TO_OPEN
            if self._timeouts >= self.TIMEOUTS_TO_OPEN:
                self._skip_until, self._timeouts = now + self.breaker_seconds, 0
            if self._logged_at is not None and now - self._logged_at < self.log_interval:
                return
            self._logged_at = now
        logger.error("rate limits are not enforced: Redis is unreachable (%s); failing open, retrying in %ss",
                     type(exc).__name__, self.breaker_seconds)


_ids = itertools.count()
_PROCESS = uuid.uuid4().hex[:12]


def _member_id() -> str:
    return f"{_PROCESS}{os.getpid():x}.{next(_ids)}"


class _Base:
    def __init__(self, *, clock: Callable[[], float] = time.time, clock_key: str | None = None,
                 breaker_seconds: float = 5.0, log_interval: float = 60.0):
        self.clock = clock
        self.clock_key = clock_key
        self.fail_open = _FailOpen(breaker_seconds, log_interval)

    def _check_args(self, limits: Sequence[Limit], cost: int) -> tuple[list[str], list, str]:
        keys = [k for limit in limits for k in limit.keys]
        if self.clock_key:
            keys.append(self.clock_key)
        member = _member_id()
        args = [int(self.clock() * 1000), WINDOW_MS, member, int(cost), "1" if self.clock_key else "0",
                *(limit.limit for limit in limits)]
        return keys, args, member

    @staticmethod
    def _decision(answer, limits: Sequence[Limit], member: str, cost: int) -> Decision:
        admitted, index, _limit, remaining, reset_ms, retry_ms, _now = (int(x) for x in answer)
        limit = limits[index - 1]
        if admitted:
            return Decision(True, True, limit, remaining, _seconds(reset_ms), 0, False, member, cost, tuple(limits))
        never = retry_ms < 0
        retry = _seconds(WINDOW_MS if never else retry_ms)
        decision = Decision(False, True, limit, remaining, _seconds(reset_ms), max(retry, 1), never, None, cost,
                            tuple(limits))
        count_refusal(decision)
        return decision

    @staticmethod
    def _settle_args(decision: Decision, actual: int) -> tuple[list[str], list] | None:
        if not decision.enforced or not decision.allowed or decision.member is None:
            return None
        keys = [k for limit in decision.limits for k in limit.keys]
        return keys, [decision.member, decision.cost, max(int(actual), 0)]


class RateLimiter(_Base):
    """The sync limiter (redis-py): the WSGI request path and the engine's threads."""

    def __init__(self, url: str, *, timeout: float = 0.05, **kwargs):
        super().__init__(**kwargs)
        # No retries: a refused or slow connection must cost one short timeout, then the breaker skips Redis.
        self.client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                           retry=Retry(NoBackoff(), 0), retry_on_timeout=False)
        self._check = self.client.register_script(CHECK)
        self._settle = self.client.register_script(SETTLE)

    def check(self, limits: Sequence[Limit], cost: int = 1) -> Decision:
        """Admit ``cost`` units against every limit in ``limits`` at once, or refuse (nothing recorded)."""
        if not limits or self.fail_open.open():
            return ADMIT_ALL
        keys, args, member = self._check_args(limits, cost)
        try:
            answer = self._check(keys=keys, args=args)
        except redis.RedisError as exc:
            self.fail_open.failed(exc)
            return ADMIT_ALL
        self.fail_open.succeeded()
        return self._decision(answer, limits, member, cost)

    def settle(self, decision: Decision, actual: int) -> None:
        """Make an admitted reservation's cost ``actual`` (its time unchanged)."""
        prepared = self._settle_args(decision, actual)
        if prepared is None or self.fail_open.open():
            return
        try:
            self._settle(keys=prepared[0], args=prepared[1])
        except redis.RedisError as exc:
            self.fail_open.failed(exc)


class AsyncRateLimiter(_Base):
    """The async limiter (redis.asyncio), same script and semantics; use one per event loop."""

    def __init__(self, url: str, *, timeout: float = 0.05, **kwargs):
        super().__init__(**kwargs)
        self.client = redis.asyncio.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                                   retry=Retry(NoBackoff(), 0), retry_on_timeout=False)
        self._check = self.client.register_script(CHECK)
        self._settle = self.client.register_script(SETTLE)

    async def check(self, limits: Sequence[Limit], cost: int = 1) -> Decision:
        if not limits or self.fail_open.open():
            return ADMIT_ALL
        keys, args, member = self._check_args(limits, cost)
        try:
            answer = await self._check(keys=keys, args=args)
        except redis.RedisError as exc:
            self.fail_open.failed(exc)
            return ADMIT_ALL
        self.fail_open.succeeded()
        return self._decision(answer, limits, member, cost)

    async def settle(self, decision: Decision, actual: int) -> None:
        prepared = self._settle_args(decision, actual)
        if prepared is None or self.fail_open.open():
            return
        try:
            await self._settle(keys=prepared[0], args=prepared[1])
        except redis.RedisError as exc:
            self.fail_open.failed(exc)

    async def aclose(self) -> None:
        await self.client.aclose()


# --- from settings ------------------------------------------------------------------------------

def _options() -> tuple[str, dict]:
    from django.conf import settings

    def setting(name: str, default: str):
        # fruxon/settings.py's "Rate limits" block reads the same environment variables, with these defaults.
        value = getattr(settings, name, None)
        return os.environ.get(name, default) if value is None else value

    url = setting("FRUXON_RATELIMIT_REDIS_URL", "") or settings.REDIS_URL
    clock_key = setting("FRUXON_RATELIMIT_CLOCK_KEY", "") if settings.TESTING else ""
    return url, {"timeout": float(setting("FRUXON_RATELIMIT_TIMEOUT_MS", "50")) / 1000.0,
                 "clock_key": clock_key or None,
                 "breaker_seconds": float(setting("FRUXON_RATELIMIT_BREAKER_SECONDS", "5")),
                 "log_interval": float(setting("FRUXON_RATELIMIT_LOG_INTERVAL_SECONDS", "60"))}


class _NoRedis:
    """No Redis configured: limits cannot be enforced across processes; admit, and say so once."""

    def __init__(self):
        self._warned = False

    def _warn(self, limits) -> None:
        if limits and not self._warned:
            self._warned = True
            logger.warning("rate limits are set but not enforced: no REDIS_URL (or FRUXON_RATELIMIT_REDIS_URL)")

    def check(self, limits, cost: int = 1) -> Decision:
        self._warn(limits)
        return ADMIT_ALL

    def settle(self, decision, actual) -> None:
        return None


@lru_cache(maxsize=4)
def _make(url: str, timeout: float, clock_key: str | None, breaker_seconds: float, log_interval: float):
    if not url:
        return _NoRedis()
    return RateLimiter(url, timeout=timeout, clock_key=clock_key, breaker_seconds=breaker_seconds,
                       log_interval=log_interval)


def limiter() -> RateLimiter:
    """This process's sync limiter, as configured (one client and breaker per configuration)."""
    url, options = _options()
    return _make(url, options["timeout"], options["clock_key"], options["breaker_seconds"], options["log_interval"])


# On an event loop a socket timeout also counts the loop's own lag: under load, a Redis that answers
# in 1 ms may be read 100 ms later. The async limiter waits at least this long before failing open.
ASYNC_MIN_TIMEOUT = 0.25


def async_limiter() -> AsyncRateLimiter | _NoRedis:
    """A new async limiter as configured; keep one per event loop (its connections belong to that loop)."""
    url, options = _options()
    if not url:
        return _NoRedis()
    return AsyncRateLimiter(url, **{**options, "timeout": max(options["timeout"], ASYNC_MIN_TIMEOUT)})


_loop_limiters: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # event loop -> (ident, limiter)


def loop_limiter() -> AsyncRateLimiter | _NoRedis:
    """The running event loop's async limiter (created on first use, as configured)."""
    loop = asyncio.get_running_loop()
    url, options = _options()
    ident = (os.getpid(), url, tuple(sorted(options.items())))
    found = _loop_limiters.get(loop)
    if found is None or found[0] != ident:
        created = async_limiter()
        if isinstance(created, AsyncRateLimiter):
            # One view of Redis per process and configuration: the sync limiter's breaker and outage log.
            created.fail_open = limiter().fail_open
        found = _loop_limiters[loop] = (ident, created)
    return found[1]


# --- what applies to a caller -------------------------------------------------------------------

KINDS = {"requests": ("requests_per_minute", "r"), "executions": ("executions_per_minute", "x"),
         "tokens": ("tokens_per_minute", "t")}


def limits_for(kind: str, *, organization, api_key=None) -> tuple[Limit, ...]:
    """The limits of ``kind`` that apply: the API key's (if it has one) and its org's. No query:
    both rows are already loaded by authentication and tenancy resolution."""
    attribute, suffix = KINDS[kind]
    found = []
    if api_key is not None:
        value = getattr(api_key, attribute, None)
        if value is not None:
            found.append(Limit(f"k{api_key.pk}:{suffix}", value, "apiKey", kind, organization.slug))
    value = getattr(organization, attribute, None)
    if value is not None:
        found.append(Limit(f"o{organization.pk}:{suffix}", value, "organization", kind, organization.slug))
    return tuple(found)


def admit(kind: str, *, organization, api_key=None, cost: int = 1) -> Decision:
    """Check ``cost`` units of ``kind`` for this caller; raise the 429 ``rate_limited`` error when refused."""
    limits = limits_for(kind, organization=organization, api_key=api_key)
    if not limits:
        return ADMIT_ALL
    decision = limiter().check(limits, cost)
    if not decision.allowed:
        raise refusal(decision)
    return decision


async def acheck(limits: Sequence[Limit], cost: int = 1) -> Decision:
    """The running loop's limiter's ``check`` (fail open, as the sync one)."""
    limiter_ = loop_limiter()
    if isinstance(limiter_, AsyncRateLimiter):
        return await limiter_.check(limits, cost)
    return limiter_.check(limits, cost)


async def asettle(decision: Decision, actual: int) -> None:
    limiter_ = loop_limiter()
    if isinstance(limiter_, AsyncRateLimiter):
        await limiter_.settle(decision, actual)
    else:
        limiter_.settle(decision, actual)


async def aadmit(kind: str, *, organization, api_key=None, cost: int = 1) -> Decision:
    """``admit`` on the event loop (the async execute family)."""
    limits = limits_for(kind, organization=organization, api_key=api_key)
    if not limits:
        return ADMIT_ALL
    decision = await acheck(limits, cost)
    if not decision.allowed:
        raise refusal(decision)
    return decision


def refusal(decision: Decision):
    """The 429 ``rate_limited`` error for a refused decision, with its headers."""
    from fruxon.errors import FruxonError

    limit = decision.limit
    who = "this API key" if limit.scope == "apiKey" else "this organization"
    if decision.never:
        message = (f"This needs {decision.cost} {limit.kind}, more than {who}'s limit of {limit.limit} "
                   f"{limit.kind} per minute allows at once.")
    else:
        message = (f"Rate limit exceeded: {who} may make {limit.limit} {limit.kind} per minute; "
                   f"retry in {decision.retry_after} s.")
    error = FruxonError(message, code="rate_limited", status=429,
                        details={"limit": limit.kind, "scope": limit.scope, "perMinute": limit.limit,
                                 "retryAfter": decision.retry_after})
    error.headers = decision.headers()
    return error


def count_refusal(decision: Decision) -> None:
    """The ONE call site of the rate-limit refusal metric (``/metrics``: ``monitoring.observability.rate_limited``,
    labelled e.g. ``key:requests`` and the org's slug). Every refusal of either limiter passes here."""
    try:
        from monitoring import observability
    except ImportError:
        return
    hook = getattr(observability, "rate_limited", None)
    if hook is None:
        return
    limit = decision.limit
    try:
        hook(f"{'key' if limit.scope == 'apiKey' else 'org'}:{limit.kind}", org=limit.org)
    except Exception:  # a metrics failure never changes an answer
        logger.exception("could not count a rate-limit refusal")
