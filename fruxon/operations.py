"""``GET /healthz``, ``GET /readyz`` and ``GET /metrics``: outside ``/v1`` and the tenant scheme.

Answered by ``OperationsMiddleware``, which sits before the session, host-checking
(CommonMiddleware), CSRF and authentication middleware: these paths never touch
the database or Redis through Django (no session, no user, no connection), so
they answer fast while PostgreSQL is down, and a probe or scraper that reaches a
pod by its IP is not refused by ``ALLOWED_HOSTS`` (no URL is built from the Host
header here). The security headers (CSP, nosniff) still apply.

* ``/healthz``: 200 ``{"status": "ok"}`` when the process answers. Nothing else.
* ``/readyz``: PostgreSQL (a fresh connection, ``SELECT 1``) and Redis (``PING`` on
  ``REDIS_URL``, and ``FRUXON_LEDGER_REDIS_URL`` when set apart) are checked in
  parallel, each within ``FRUXON_READINESS_TIMEOUT_SECONDS`` (1 s): 200 with each
  component's state, else 503 ``service_unavailable`` naming the failed components.
  Redis is ``disabled`` (and not a failure) without ``REDIS_URL``. Errors name the
  exception class only, never a host or a password.
* ``/metrics``: 404 unless ``FRUXON_METRICS_TOKEN`` is set; then 401 without
  ``Authorization: Bearer <token>`` (compared in constant time), else the
  Prometheus text exposition (``monitoring.observability``).
"""
from __future__ import annotations

import concurrent.futures
import hmac
import os
import threading
import time

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpResponse, JsonResponse

from fruxon.middleware import SyncAndAsyncMiddleware

PATHS = ("/healthz", "/readyz", "/metrics")

_executor: concurrent.futures.ThreadPoolExecutor | None = None
_executor_pid: int | None = None
_executor_lock = threading.Lock()


def _pool() -> concurrent.futures.ThreadPoolExecutor:
    """A few threads for the checks (per process: a forked worker starts its own)."""
    global _executor, _executor_pid
    if _executor_pid != os.getpid():
        with _executor_lock:
            if _executor_pid != os.getpid():
                _executor = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="fruxon-readyz")
                _executor_pid = os.getpid()
    return _executor


_LIBPQ_OPTIONS = {"sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword", "application_name", "options",
                  "target_session_attrs", "service", "passfile", "gssencmode", "channel_binding"}


def _check_database() -> None:
    from django.db import connections

    alias = connections["default"]
    if alias.vendor != "postgresql":
        # SQLite (the demo): a file next to the process; Django's own connection is the honest check.
        with alias.cursor() as cursor:
            cursor.execute("SELECT 1")
        return
    import psycopg

    params = alias.settings_dict
    kwargs = {key: value for key, value in (params.get("OPTIONS") or {}).items() if key in _LIBPQ_OPTIONS}
    kwargs |= {"dbname": params.get("NAME") or "postgres", "user": params.get("USER") or None,
               "password": params.get("PASSWORD") or None, "host": params.get("HOST") or None,
               "port": params.get("PORT") or None}
    # A connection of its own (not the pool's: a pool waits DB_POOL_TIMEOUT for a connection); libpq's
    # connect timeout cannot be below 2 s, the caller stops waiting sooner.
    timeout = max(2, int(settings.FRUXON_READINESS_TIMEOUT_SECONDS + 0.999))
    with psycopg.connect(**{k: v for k, v in kwargs.items() if v is not None}, connect_timeout=timeout,
                         autocommit=True) as conn:
        conn.execute("SELECT 1")


_redis_clients: dict[str, object] = {}


def _check_redis(url: str) -> None:
    client = _redis_clients.get(url)
    if client is None:
        import redis

        timeout = settings.FRUXON_READINESS_TIMEOUT_SECONDS
        client = _redis_clients[url] = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    client.ping()


def readiness() -> tuple[bool, dict]:
    """``(ready, components)``: each component ``{"status": "up"|"down"|"disabled", "latencyMs"?, "error"?}``."""
    checks = {"database": _check_database}
    urls = [url for url in dict.fromkeys([settings.REDIS_URL, getattr(settings, "FRUXON_LEDGER_REDIS_URL", "")]) if url]
    if urls:
        checks["redis"] = lambda: [_check_redis(url) for url in urls]
    started = time.monotonic()
    pool = _pool()
    futures = {name: pool.submit(_timed, check) for name, check in checks.items()}
    concurrent.futures.wait(futures.values(), timeout=settings.FRUXON_READINESS_TIMEOUT_SECONDS)
    components = {} if urls else {"redis": {"status": "disabled"}}
    for name, future in futures.items():
        if not future.done():
            components[name] = {"status": "down", "error": "timeout",
                                "latencyMs": round((time.monotonic() - started) * 1000.0, 1)}
            continue
        elapsed, error = future.result()
        components[name] = {"status": "up" if error is None else "down", "latencyMs": elapsed}
        if error is not None:
            components[name]["error"] = error
    return all(c["status"] != "down" for c in components.values()), dict(sorted(components.items()))


def _timed(check) -> tuple[float, str | None]:
    started = time.monotonic()
    try:
        check()
        error = None
    except Exception as exc:  # the class only: messages can hold hosts, users, even a password
        error = type(exc).__name__
    return round((time.monotonic() - started) * 1000.0, 1), error


def _error(status: int, code: str, message: str, details: dict | None = None) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "message": message, "details": details or {}}}, status=status)


def healthz(request) -> HttpResponse:
    return JsonResponse({"status": "ok"})


def readyz(request) -> HttpResponse:
    ready, components = readiness()
    if ready:
        return JsonResponse({"status": "ready", "components": components})
    down = [name for name, component in components.items() if component["status"] == "down"]
    return _error(503, "service_unavailable", f"Not ready: {', '.join(down)} unreachable.",
                  {"components": components})


def metrics(request) -> HttpResponse:
    token = settings.FRUXON_METRICS_TOKEN
    if not token:
        return _error(404, "not_found", "Not found.")
    given = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, value = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
        response = _error(401, "unauthenticated", "GET /metrics needs Authorization: Bearer <FRUXON_METRICS_TOKEN>.")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    from monitoring.observability import exposition

    body, content_type = exposition()
    return HttpResponse(body, content_type=content_type)


_VIEWS = {"/healthz": healthz, "/readyz": readyz, "/metrics": metrics}
_BLOCKING = {"/readyz", "/metrics"}  # network I/O: off the event loop under ASGI


class OperationsMiddleware(SyncAndAsyncMiddleware):
    """Answers ``GET``/``HEAD`` on the operations paths before sessions, hosts and authentication."""

    def _view(self, request):
        view = _VIEWS.get(request.path_info)
        if view is None:
            return None
        if request.method not in ("GET", "HEAD"):
            return lambda request: _error(405, "method_not_allowed", f"Method \"{request.method}\" not allowed.")
        return view

    def __call__(self, request):
        if self.is_async:
            return self.__acall__(request)
        view = self._view(request)
        return view(request) if view is not None else self.get_response(request)

    async def __acall__(self, request):
        view = self._view(request)
        if view is None:
            return await self.get_response(request)
        if request.path_info in _BLOCKING:
            return await sync_to_async(view, thread_sensitive=False)(request)
        return view(request)
