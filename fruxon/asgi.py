"""ASGI entry point (``uvicorn fruxon.asgi:application``).

The API views are synchronous: under ASGI Django runs each request's sync code
in a thread of its own, so a request waiting on a model provider holds a thread
(not the event loop). Use a connection pool (``DB_POOL_MAX_SIZE``) rather than
persistent connections (``DB_CONN_MAX_AGE``) under ASGI: per-request threads
cannot reuse a thread-bound persistent connection.
"""
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fruxon.settings")
application = get_asgi_application()
