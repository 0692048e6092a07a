"""Request timing (``RequestTimerMiddleware``), and URLs PostgreSQL cannot hold
(``RefuseUnstorableURLMiddleware``, see its docstring).

Request timing stamps the start of each request and reports server overhead.

``X-Fruxon-Overhead-Ms`` = total server time minus time spent waiting on model
providers. The execute view sets it precisely (it knows the provider wait);
for every other response, and for execute errors raised before a run, the
whole server time is overhead.

Sync and async capable: under ASGI a sync-only middleware at the top of the
stack would make Django hop threads twice more per request (sync -> async ->
sync), which costs more than the whole header.
"""
import time

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import JsonResponse

from fruxon.db import UNSTORABLE_CHAR


def _stamp(request, response):
    if "X-Fruxon-Overhead-Ms" not in response:
        response["X-Fruxon-Overhead-Ms"] = f"{(time.monotonic() - request.fruxon_started) * 1000.0:.2f}"
    return response


class SyncAndAsyncMiddleware:
    """A middleware that runs in the mode of the stack around it (no thread hop under ASGI).

    Subclasses define ``before(request)``, which may answer at once, and ``after(request, response)``.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self.is_async:
            return self.__acall__(request)
        return self.before(request) or self.after(request, self.get_response(request))

    async def __acall__(self, request):
        return self.before(request) or self.after(request, await self.get_response(request))

    def before(self, request):
        return None

    def after(self, request, response):
        return response


class RequestTimerMiddleware(SyncAndAsyncMiddleware):
    def before(self, request):
        request.fruxon_started = time.monotonic()

    def after(self, request, response):
        return _stamp(request, response)


class RefuseUnstorableURLMiddleware(SyncAndAsyncMiddleware):
    """A URL whose path or query holds a NUL (``%00``) answers 400 ``invalid_request``.

    PostgreSQL cannot store or compare text holding NUL, so such a value used as
    a lookup (``/v1/acme/runs/%00``, ``/v1/%00/agents``, ``?agent=%00``, the
    admin's ``/admin/monitoring/run/%00/change/``) would fail in the database
    with a 500. No object's name or filter value can hold one, so the request is
    refused here, once for every route (API and admin alike, in the error shape
    every 400 of the project has, see ``fruxon.api.errors.handler400``), before
    any view runs.
    (Lone surrogates cannot reach this point: Django decodes URLs with
    replacement; JSON bodies are the parser's business.)
    """

    def before(self, request):
        return _refuse_unstorable(request)


def _refuse_unstorable(request):
    where = None
    if UNSTORABLE_CHAR.search(request.path):
        where = "path"
    else:
        raw = request.META.get("QUERY_STRING", "")
        if "%00" in raw or "\x00" in raw:  # cheap test first: the query is percent-encoded
            where = next((key for key, values in request.GET.lists()
                          if UNSTORABLE_CHAR.search(key) or any(UNSTORABLE_CHAR.search(v) for v in values)), None)
    if where is None:
        return None
    from fruxon.api.errors import error_body  # the API's error shape; imported late (DRF loads settings)

    part = "the URL path" if where == "path" else f"the query parameter {where!r}"
    shown = "path" if where == "path" else UNSTORABLE_CHAR.sub("\ufffd", where)
    return JsonResponse(error_body("invalid_request", f"{part[0].upper()}{part[1:]} holds a NUL character (%00), "
                                                      "which no name, id or filter value can contain.",
                                   {"fields": {shown: ["NUL characters are not allowed."]}}), status=400)
