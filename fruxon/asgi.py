"""ASGI entry point: the production server (README: gunicorn managing uvicorn workers).

The execute family (``agents.api.execute``) is async and runs on each worker's event loop
with no thread per execution; it reaches PostgreSQL through ``fruxon.adb``'s pool, which
this module switches on (one event loop per process, living as long as it). The rest of
the API and the admin are synchronous Django and DRF, run whole in one thread hop per
request by ``fruxon.asgi_handler.HybridASGIHandler``, on Django's connection pool
(a default here: ``fruxon/settings.py``).
"""
import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fruxon.settings")
os.environ["FRUXON_ASGI"] = "1"  # settings: a connection pool by default (see fruxon/settings.py)
django.setup(set_prefix=False)

from fruxon import adb  # noqa: E402  (after Django is set up)
from fruxon.asgi_handler import HybridASGIHandler  # noqa: E402

adb.SERVED_BY_ASGI = True
application = HybridASGIHandler()
