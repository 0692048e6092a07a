"""``ENGINE = "fruxon.pg"``: Django's PostgreSQL backend; a pooled connection the server closed is never handed out.

After PostgreSQL restarts, every idle connection in a process's pool is dead, and
without a check each would fail one request when it is next checked out. psycopg_pool's
own check (``CONN_HEALTH_CHECKS``) costs a round trip on every checkout and, when it
finds a dead connection, sleeps a second or more before trying the next one. Here a
checkout costs one ``poll()`` of the socket: a live idle connection has nothing to read,
one the server closed (its FATAL message, then EOF) does. Only then is a round trip made
(``fruxon.db.connection_alive``); a dead connection is closed and given back (the pool
discards it and opens a new one), the pool's other idle connections are checked at once
(they died with it), and the checkout is repeated, with no sleep. Non-pooled connections
keep Django's own per-request health check (``CONN_HEALTH_CHECKS``).
"""
from __future__ import annotations

import logging

from django.db.backends.postgresql import base

logger = logging.getLogger("fruxon.outage")


class DatabaseWrapper(base.DatabaseWrapper):
    def get_new_connection(self, conn_params):
        from fruxon.db import connection_alive

        pool = self.pool
        if not pool:
            return super().get_new_connection(conn_params)
        for _ in range(pool.max_size + 1):
            connection = super().get_new_connection(conn_params)
            if connection_alive(connection):
                return connection
            logger.warning("discarding a pooled PostgreSQL connection the server closed; checking the others")
            try:
                connection.close()
            finally:
                pool.putconn(connection)  # closed: the pool discards it and opens a replacement
            pool.check()  # the idle ones died with it: drop them now rather than one request at a time
        return super().get_new_connection(conn_params)
