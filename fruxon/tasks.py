"""Deferring work past the response: ``defer(task, *args)``.

With a broker, the task goes through the outbox (``fruxon.outbox``): a row written
in the current transaction, sent after it commits, and swept by beat if the broker
was down then, so no deferred task is lost. In
eager mode (no ``REDIS_URL``: the demo), it runs on a daemon thread after
commit so the response is not held up by it; under tests it runs inline at
commit, so tests can observe it deterministically.
"""
from __future__ import annotations

import logging
import threading

from django.conf import settings
from django.db import connection, transaction

from fruxon import outbox  # also how the worker finds the outbox sweep task (fruxon.outbox.sweep)

logger = logging.getLogger(__name__)


def _run_in_thread(task, args) -> None:
    def target():
        try:
            task.apply(args=args)
        except Exception:  # a background failure must not crash the server thread
            logger.exception("deferred task %s failed", task.name)
        finally:
            connection.close()

    threading.Thread(target=target, name=f"defer-{task.name}", daemon=True).start()


def defer(task, *args) -> None:
    if not settings.CELERY_TASK_ALWAYS_EAGER:
        outbox.enqueue(task, *args)
    elif settings.TESTING:
        transaction.on_commit(lambda: task.apply(args=args))
    else:
        transaction.on_commit(lambda: _run_in_thread(task, args))
