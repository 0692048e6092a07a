"""Database connection handling for code that waits on the outside world.

An execute spends most of its life waiting on a model provider. Holding a
PostgreSQL connection through that wait would cap the executions in flight at
the server's ``max_connections``. With a connection pool (``DB_POOL_MAX_SIZE``)
``release_connection`` hands the thread's connection back to the pool; the next
query takes one again (a pool checkout: no round trip, no reconnect).
Without a pool it does nothing: a persistent connection is kept (reconnecting
would cost more than it saves), and so is any connection inside a transaction.
"""
from __future__ import annotations

from django.db import connections
from django.db.utils import DEFAULT_DB_ALIAS


def is_pooled(alias: str = DEFAULT_DB_ALIAS) -> bool:
    return bool(connections[alias].settings_dict.get("OPTIONS", {}).get("pool"))


def release_connection(alias: str = DEFAULT_DB_ALIAS) -> None:
    """Return this thread's connection to the pool, unless it is in a transaction."""
    connection = connections[alias]
    if connection.connection is not None and not connection.in_atomic_block and is_pooled(alias):
        connection.close()
