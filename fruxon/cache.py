"""Django's Redis cache backend, with one client and pool per process instead of per call.

Django's ``RedisCacheClient`` builds a new ``redis.Redis`` client for every cache
operation (its constructor fills a large table of response callbacks), and the
cache handler builds a backend, and so a connection pool, per thread: under
ASGI's per-request threads, that is a new Redis connection per request. Both
sit on the execute hot path (the API-key lookup, the price table). A
``redis.Redis`` client and its pool are thread-safe; this backend shares them
per process (the pid in the key keeps a forked child from using its parent's
sockets). Keys are not checked for memcached's limits, which Redis does not have.

An unreachable Redis is a cache miss, never an exception: every operation that
fails with a connection error or a timeout answers as if the key were absent
(``get`` -> default, ``add`` -> False, ``get_many`` -> {}, writes -> nothing), a
process-wide circuit breaker (``fruxon.resilience``) then skips Redis for
``FRUXON_BREAKER_RESET_SECONDS`` so requests do not each pay a timeout, and the
outage is logged once per minute, not per call. Sockets time out after
``FRUXON_REDIS_CONNECT_TIMEOUT`` / ``FRUXON_REDIS_SOCKET_TIMEOUT``, retried once at once.
Deletes that failed (a key revoked while Redis was away) are replayed when it is
back, so no invalidation is lost. Callers that must know the difference (the login
throttle) use ``strict(name, ...)``, which raises ``CacheUnavailable`` instead.
"""
from __future__ import annotations

import os
import threading
import weakref

import redis
from django.core.cache import cache as default_cache
from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.core.cache.backends.redis import RedisCache, RedisCacheClient
from redis.backoff import NoBackoff
from redis.retry import Retry

from fruxon.resilience import breaker

# What an outage looks like from redis-py (BusyLoadingError, a restarting Redis, is a ConnectionError).
OUTAGE_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
# One immediate retry (no backoff) of a failed connect or command: a connection dropped under a burst
# is replaced at once, while an unreachable Redis costs two refused connects (or two timeouts) before
# the breaker opens. No retry at all made bursts of the budget race measurably worse.
QUICK_RETRY = Retry(NoBackoff(), 1)
_MAX_PENDING_DELETES = 10_000
_pending_deletes: set[str] = set()  # made keys whose delete failed, replayed when Redis answers again


class CacheUnavailable(Exception):
    """The shared cache (Redis) cannot be reached (raised by ``strict`` only)."""

_clients: dict[tuple, object] = {}
_async_clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # event loop -> (pid, client)
_lock = threading.Lock()


class SharedRedisCacheClient(RedisCacheClient):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._options_key = repr(sorted(self._pool_options.items(), key=lambda item: item[0]))

    def get_client(self, key=None, *, write=False):
        index = self._get_connection_pool_index(write)
        ident = (os.getpid(), self._servers[index], self._options_key)
        client = _clients.get(ident)
        if client is None:
            with _lock:
                client = _clients.get(ident)
                if client is None:
                    pool = self._pool_class.from_url(self._servers[index], **self._pool_options)
                    client = _clients[ident] = self._client(connection_pool=pool)
        return client


def _pool_defaults(options: dict) -> dict:
    """Short socket timeouts and no retries (an outage must cost milliseconds, not seconds)."""
    from django.conf import settings

    options = dict(options)
    options.setdefault("socket_connect_timeout", settings.FRUXON_REDIS_CONNECT_TIMEOUT)
    options.setdefault("socket_timeout", settings.FRUXON_REDIS_SOCKET_TIMEOUT)
    options.setdefault("retry", QUICK_RETRY)  # one object: the shared-client key (its repr) stays the same
    return options


class SharedRedisCache(RedisCache):
    def __init__(self, server, params):
        params = {**params, "OPTIONS": _pool_defaults(params.get("OPTIONS") or {})}
        super().__init__(server, params)
        self._class = SharedRedisCacheClient
        self.breaker = breaker(f"Redis cache {self._servers[0].rpartition('@')[2]}")

    def validate_key(self, key):
        """No memcached key checks (a scan of every character of every key): this is Redis."""

    # Every operation goes through _call: an outage is a miss (see the module docstring).
    def _call(self, name, default, strict, *args, **kwargs):
        if not self.breaker.allow():
            if strict:
                raise CacheUnavailable(self.breaker.name)
            return default
        try:
            if _pending_deletes:
                self._replay_deletes()  # first: an entry invalidated during the outage must not be read
            result = getattr(RedisCache, name)(self, *args, **kwargs)
        except OUTAGE_ERRORS as exc:
            self.breaker.failure(exc)
            if strict:
                raise CacheUnavailable(self.breaker.name) from exc
            return default
        self.breaker.success()
        return result

    def _forget_later(self, keys, version) -> None:
        if len(_pending_deletes) < _MAX_PENDING_DELETES:
            _pending_deletes.update(self.make_and_validate_key(key, version=version) for key in keys)

    def _replay_deletes(self) -> None:
        keys = list(_pending_deletes)
        self._cache.get_client(write=True).delete(*keys)  # an outage error propagates: the keys stay pending
        _pending_deletes.difference_update(keys)

    def strict(self, name, *args, **kwargs):
        """``name``'s operation, raising ``CacheUnavailable`` when Redis cannot be reached."""
        return self._call(name, None, True, *args, **kwargs)

    def get(self, key, default=None, version=None):
        return self._call("get", default, False, key, default, version)

    def get_many(self, keys, version=None):
        return self._call("get_many", {}, False, keys, version)

    # --- async reads and writes for the execute family (redis.asyncio, one client per event loop) ----
    # Django's own aget/aset run the sync call in a thread; these await Redis on the loop. Same keys,
    # same serializer, same breaker and outage rule (a miss, never an exception). Deletes stay sync:
    # nothing on the async path deletes.
    def _async_client(self):
        import asyncio

        import redis.asyncio

        loop = asyncio.get_running_loop()
        client = _async_clients.get(loop)
        if client is None or client[0] != os.getpid():
            options = self._cache._pool_options
            client = _async_clients[loop] = (os.getpid(), redis.asyncio.Redis.from_url(
                self._servers[0], socket_connect_timeout=options.get("socket_connect_timeout"),
                socket_timeout=options.get("socket_timeout"),
                retry=redis.asyncio.retry.Retry(NoBackoff(), 1)))
        return client[1]

    async def _acall(self, default, operation):
        if _pending_deletes:  # the sync path replays them first (and keeps the breaker's rule)
            return await _in_thread(operation.sync)
        if not self.breaker.allow():
            return default
        try:
            result = await operation(self._async_client())
        except OUTAGE_ERRORS as exc:
            self.breaker.failure(exc)
            return default
        self.breaker.success()
        return result

    async def aget(self, key, default=None, version=None):
        made = self.make_and_validate_key(key, version=version)

        async def get(client):
            value = await client.get(made)
            return default if value is None else self._cache._serializer.loads(value)

        get.sync = lambda: self.get(key, default, version)
        return await self._acall(default, get)

    async def aget_many(self, keys, version=None):
        keys = list(keys)
        made = [self.make_and_validate_key(key, version=version) for key in keys]

        async def get_many(client):
            values = await client.mget(made)
            loads = self._cache._serializer.loads
            return {key: loads(value) for key, value in zip(keys, values) if value is not None}

        get_many.sync = lambda: self.get_many(keys, version)
        return await self._acall({}, get_many)

    async def aset(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        made = self.make_and_validate_key(key, version=version)
        seconds = self.get_backend_timeout(timeout)

        async def set_(client):
            data = self._cache._serializer.dumps(value)
            if seconds == 0:
                await client.delete(made)
            else:
                await client.set(made, data, ex=seconds)

        set_.sync = lambda: self.set(key, value, timeout, version)
        await self._acall(None, set_)

    def has_key(self, key, version=None):
        return self._call("has_key", False, False, key, version)

    def add(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        return self._call("add", False, False, key, value, timeout, version)

    def set(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        self._call("set", None, False, key, value, timeout, version)

    def set_many(self, data, timeout=DEFAULT_TIMEOUT, version=None):
        return self._call("set_many", list(data), False, data, timeout, version)

    def touch(self, key, timeout=DEFAULT_TIMEOUT, version=None):
        return self._call("touch", False, False, key, timeout, version)

    def incr(self, key, delta=1, version=None):
        # As if the counter were new: a counter that cannot be read counts from zero (callers that
        # must fail closed use strict("incr", ...)).
        return self._call("incr", delta, False, key, delta, version)

    def delete(self, key, version=None):
        deleted = self._call("delete", None, False, key, version)
        if deleted is None:
            self._forget_later([key], version)
            return False
        return deleted

    def delete_many(self, keys, version=None):
        keys = list(keys)
        if self._call("delete_many", "failed", False, keys, version) == "failed":
            self._forget_later(keys, version)

    def clear(self):
        return self._call("clear", False, False)


async def _in_thread(fn, *args):
    from asgiref.sync import sync_to_async

    return await sync_to_async(fn, thread_sensitive=False)(*args)


def strict(name: str, *args, backend=None, **kwargs):
    """Run cache operation ``name`` on ``backend`` (the default cache), raising ``CacheUnavailable`` on an outage.

    Backends other than ``SharedRedisCache`` (the local-memory cache of tests and the demo) cannot be
    unreachable: the operation is simply run.
    """
    backend = backend if backend is not None else default_cache
    method = getattr(backend, "strict", None)
    if method is None:
        return getattr(backend, name)(*args, **kwargs)
    return method(name, *args, **kwargs)
