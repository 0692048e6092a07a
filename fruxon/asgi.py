"""ASGI entry point: the production server (README: gunicorn managing uvicorn workers).

The execute family (``agents.api.execute``) is async and runs on each worker's event loop
with no thread per execution; it reaches PostgreSQL through ``fruxon.adb``'s pool, which
this module switches on (one event loop per process, living as long as it). The rest of
the API and the admin are synchronous Django and DRF: Django runs each such request on a
thread of its own (``ThreadSensitiveContext``) and they use Django's connection pool
(``DB_POOL_MAX_SIZE``) rather than persistent connections.
"""
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fruxon.settings")
os.environ["FRUXON_ASGI"] = "1"  # settings: a connection pool by default (see fruxon/settings.py)
application = get_asgi_application()

from fruxon import adb

adb.SERVED_BY_ASGI = True
