"""Django's Redis cache backend, with one client and pool per process instead of per call.

Django's ``RedisCacheClient`` builds a new ``redis.Redis`` client for every cache
operation (its constructor fills a large table of response callbacks), and the
cache handler builds a backend, and so a connection pool, per thread: under
ASGI's per-request threads, that is a new Redis connection per request. Both
sit on the execute hot path (the API-key lookup, the price table). A
``redis.Redis`` client and its pool are thread-safe; this backend shares them
per process (the pid in the key keeps a forked child from using its parent's
sockets). Keys are not checked for memcached's limits, which Redis does not have.
"""
from __future__ import annotations

import os
import threading

from django.core.cache.backends.redis import RedisCache, RedisCacheClient

_clients: dict[tuple, object] = {}
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


class SharedRedisCache(RedisCache):
    def __init__(self, server, params):
        super().__init__(server, params)
        self._class = SharedRedisCacheClient

    def validate_key(self, key):
        """No memcached key checks (a scan of every character of every key): this is Redis."""
