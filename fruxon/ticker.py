"""An in-process stand-in for Celery beat, for the embedded setup (no Redis).

``manage.py demo`` starts it so scheduled rollouts and auto-rollbacks happen
in the demo too. It runs the same tasks beat would, from
``CELERY_BEAT_SCHEDULE``, eagerly on one daemon thread. With a broker, run
``celery beat`` instead; never both.
"""
from __future__ import annotations

import logging
import threading
import time

from django.conf import settings
from django.db import connection

logger = logging.getLogger(__name__)


def start() -> threading.Thread:
    from fruxon.celery import app

    app.loader.import_default_modules()  # registers the apps' tasks modules, as a worker would
    schedule = [(entry["task"], float(entry["schedule"])) for entry in settings.CELERY_BEAT_SCHEDULE.values()]
    due = {name: 0.0 for name, _ in schedule}

    def loop():
        while True:
            now = time.monotonic()
            for name, every in schedule:
                if now >= due[name]:
                    due[name] = now + every
                    try:
                        app.tasks[name].apply()
                    except Exception:
                        logger.exception("periodic task %s failed", name)
                    finally:
                        connection.close()
            time.sleep(1.0)

    thread = threading.Thread(target=loop, name="fruxon-ticker", daemon=True)
    thread.start()
    return thread
