"""The ASGI handler of the production server: async routes on the loop, sync routes in ONE thread hop.

Django's ``ASGIHandler`` runs every request down one async middleware chain. Django's own
middleware (and django-csp's) are sync hooks that it adapts with ``sync_to_async``: measured
(``docs/serving.md``), a request then hops between the loop and a thread 18-19 times and starts two
threads, which costs the synchronous API 18-41% of its latency against gthread and the execute
family about 2.5 ms of CPU. This handler:

* routes each request by its resolved view: an async view (the execute family), a static file or
  an operations path (``/healthz``, ``/readyz``, ``/metrics``) goes down the async chain; any other
  request runs the whole sync chain (middleware and view) in one ``sync_to_async`` call;
* in the async chain, runs the hooks of the middleware listed in ``INLINE_MIDDLEWARE`` on the loop
  instead of in a thread: they read and write headers and cookies only, and are lazy about the
  session and the user. The one exception is handled: a session the request touched is saved (or
  its cookie refreshed) in a thread, since that is database I/O;
* reuses each request's thread: Django starts a fresh single-thread executor per request
  (``ThreadSensitiveContext``); here one comes from a free list and goes back when the request
  ended normally (one a cancelled request may still be using is shut down instead).
"""
from __future__ import annotations

import functools
import threading
import types
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import ThreadSensitiveContext, iscoroutinefunction, sync_to_async
from django.conf import settings
from django.contrib.sessions.middleware import SessionMiddleware
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.base import BaseHandler
from django.urls import Resolver404, get_resolver
from django.utils.deprecation import MiddlewareMixin

# Hooks with no I/O of their own (module docstring): headers, cookies, lazy session and user.
INLINE_MIDDLEWARE = (
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
)
MAX_IDLE_EXECUTORS = 64


def _dotted(obj) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


async def _inline_acall(self, request):
    """``MiddlewareMixin.__acall__`` with the hooks run on the loop (see the module docstring)."""
    response = None
    if hasattr(self, "process_request"):
        response = self.process_request(request)
    response = response or await self.get_response(request)
    if hasattr(self, "process_response"):
        if isinstance(self, SessionMiddleware) and request.session.accessed:  # saving it is database I/O
            response = await sync_to_async(self.process_response)(request, response)
        else:
            response = self.process_response(request, response)
    return response


class _RequestThread(ThreadPoolExecutor):
    """One request's thread (one worker), counting the calls submitted and not yet finished."""

    def __init__(self):
        super().__init__(max_workers=1, thread_name_prefix="fruxon-request")
        self.pending = 0
        self._count = threading.Lock()

    def submit(self, fn, /, *args, **kwargs):
        with self._count:
            self.pending += 1
        future = super().submit(fn, *args, **kwargs)
        future.add_done_callback(self._finished)
        return future

    def _finished(self, _future) -> None:
        with self._count:
            self.pending -= 1


class HybridASGIHandler(ASGIHandler):
    def __init__(self):
        super().__init__()
        self._sync = BaseHandler()
        self._sync.load_middleware(is_async=False)
        self._idle: list[ThreadPoolExecutor] = []
        self._static = "/" + settings.STATIC_URL.strip("/") + "/"
        self._inline_hooks()

    def _inline_hooks(self) -> None:
        """Run the listed middleware's hooks on the loop in the async chain (instances only: the sync
        chain and Django's classes are untouched)."""
        node = self._middleware_chain
        while node is not None:
            layer = getattr(node, "__wrapped__", node)  # convert_exception_to_response's wrapper -> the instance
            if isinstance(layer, MiddlewareMixin) and _dotted(layer) in INLINE_MIDDLEWARE:
                layer.__acall__ = types.MethodType(_inline_acall, layer)
            node = getattr(layer, "get_response", None)
        inline = []
        for method in self._view_middleware:
            func = getattr(method, "func", None)  # the SyncToAsync adapter of a sync process_view
            owner = getattr(func, "__self__", None)
            if func is not None and not iscoroutinefunction(func) and _dotted(owner) in INLINE_MIDDLEWARE:
                async def process_view(*args, _func=func, **kwargs):
                    return _func(*args, **kwargs)
                inline.append(process_view)
            else:
                inline.append(method)
        self._view_middleware = inline

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await super().__call__(scope, receive, send)
        executor = self._idle.pop() if self._idle else _RequestThread()
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
        finally:
            # A cancelled request's sync view may still be running on it: that thread is not reused.
            if executor.pending == 0 and len(self._idle) < MAX_IDLE_EXECUTORS:
                self._idle.append(executor)
            else:
                executor.shutdown(wait=False)

    async def get_response_async(self, request):
        if self._is_async_route(request.path_info):
            return await super().get_response_async(request)
        return await sync_to_async(self._sync.get_response)(request)

    def _is_async_route(self, path: str) -> bool:
        if path.startswith(self._static):
            return True
        return _async_view(path)


@functools.lru_cache(maxsize=4096)
def _async_view(path: str) -> bool:
    from fruxon import operations

    if path in operations.PATHS:
        return True
    try:
        match = get_resolver().resolve(path)
    except Resolver404:
        return False
    return iscoroutinefunction(match.func)
