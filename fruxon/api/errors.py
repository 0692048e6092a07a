"""Every error the API answers has one shape (API.md "Errors")::

    {"error": {"code": "snake_case", "message": "human sentence", "details": {}}}

This module renders DRF exceptions, domain errors (``fruxon.errors``) and
Django's own 400/403/404/500 handlers, so unknown routes, wrong methods and
unhandled exceptions answer in that shape too. A 500 never shows a stack trace
(outside DEBUG it carries only a generic message). An unreachable PostgreSQL is a
503 ``database_unavailable`` with ``Retry-After`` (a plain 503 page in the admin).
"""
from __future__ import annotations

import logging
import sys

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, HttpResponse, JsonResponse
from rest_framework import exceptions as drf
from rest_framework.response import Response
from rest_framework.views import set_rollback

from fruxon.errors import FruxonError
from fruxon.resilience import breaker, database_unavailable

logger = logging.getLogger("fruxon.api")


def error_body(code: str, message: str, details: dict | None = None) -> dict:
    return {"error": {"code": code, "message": message, "details": details or {}}}


_DRF_CODES = {
    drf.ParseError: (400, "invalid_request"),
    drf.ValidationError: (400, "invalid_request"),
    drf.NotAuthenticated: (401, "unauthenticated"),
    drf.AuthenticationFailed: (401, "unauthenticated"),
    drf.PermissionDenied: (403, "forbidden"),
    drf.NotFound: (404, "not_found"),
    drf.MethodNotAllowed: (405, "method_not_allowed"),
    drf.NotAcceptable: (406, "not_acceptable"),
    drf.UnsupportedMediaType: (415, "unsupported_media_type"),
    drf.Throttled: (429, "rate_limited"),
}


def _flatten_detail(detail) -> dict:
    """DRF validation detail -> {"field.path": ["message", ...]}."""
    out: dict[str, list[str]] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), sub)
        elif isinstance(value, list) and value and all(isinstance(v, (str, drf.ErrorDetail)) for v in value):
            out.setdefault(prefix or "body", []).extend(str(v) for v in value)
        elif isinstance(value, list):
            for index, sub in enumerate(value):
                if sub:
                    walk(f"{prefix}[{index}]" if prefix else f"[{index}]", sub)
        else:
            out.setdefault(prefix or "body", []).append(str(value))

    walk("", detail)
    return out


def exception_handler(exc, context):
    """DRF's EXCEPTION_HANDLER: map every exception to the error shape."""
    headers = {}
    if isinstance(exc, FruxonError):
        set_rollback()
        return Response(error_body(exc.code, exc.message, exc.details), status=exc.status, headers=getattr(exc, "headers", None))
    if isinstance(exc, RequestDataTooBig):
        # Raised when a view first reads a body over DATA_UPLOAD_MAX_MEMORY_SIZE (before parsing it).
        set_rollback()
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return Response(error_body("payload_too_large", f"The request body is larger than {limit} bytes.",
                                   {"limitBytes": limit}), status=413)
    if isinstance(exc, Http404):
        exc = drf.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = drf.PermissionDenied()
    if isinstance(exc, drf.APIException):
        set_rollback()
        status, code = next(((s, c) for cls, (s, c) in _DRF_CODES.items() if isinstance(exc, cls)), (exc.status_code, "error"))
        if isinstance(exc, drf.AuthenticationFailed | drf.NotAuthenticated):
            status = 401
        if getattr(exc, "auth_header", None):
            headers["WWW-Authenticate"] = exc.auth_header
        if getattr(exc, "wait", None):
            headers["Retry-After"] = str(int(exc.wait))
        if isinstance(exc, drf.ValidationError):
            details = {"fields": _flatten_detail(exc.detail)}
            message = "The request failed validation: " + "; ".join(
                f"{field}: {' '.join(msgs)}" for field, msgs in details["fields"].items()
            )
            return Response(error_body(code, message, details), status=status, headers=headers)
        message = str(exc.detail) if not isinstance(exc.detail, (dict, list)) else "Request failed."
        if isinstance(exc, drf.ParseError):
            message = f"Malformed JSON body: {exc.detail}"
        return Response(error_body(code, message), status=status, headers=headers)
    set_rollback()
    if database_unavailable(exc):
        return Response(*_database_unavailable(exc))
    logger.exception("Unhandled exception in %s", context.get("view").__class__.__name__, exc_info=exc)
    # Only the exception's class, in DEBUG too: its text may carry data (a resolved secret, a row);
    # the server log has the whole story.
    message = (f"An internal error occurred ({type(exc).__name__}); see the server log." if settings.DEBUG
               else "An internal error occurred.")
    return Response(error_body("internal_error", message), status=500)


# Django-level handlers (fruxon.urls): unknown routes and errors outside DRF views.
def handler400(request, exception=None):
    return JsonResponse(error_body("invalid_request", "Bad request."), status=400)


def handler403(request, exception=None):
    return JsonResponse(error_body("forbidden", "You do not have permission to do this."), status=403)


def handler404(request, exception=None):
    return JsonResponse(error_body("not_found", f"No route matches {request.path}."), status=404)


def _database_unavailable(exc) -> tuple[dict, int, None, dict]:
    """(body, 503, None, headers) for an unreachable database; the outage is logged once a minute, not per request."""
    breaker("PostgreSQL").failure(exc)
    retry = settings.FRUXON_DB_RETRY_AFTER
    body = error_body("database_unavailable", "The database cannot be reached right now; nothing was done. "
                      f"Retry in {retry} seconds.", {"retryAfter": retry})
    return body, 503, None, {"Retry-After": str(retry)}


ADMIN_UNAVAILABLE_PAGE = ("<!doctype html><html><head><title>Service unavailable</title></head><body>"
                          "<h1>Service unavailable</h1><p>The database cannot be reached right now. "
                          "Nothing was changed; try again in a few seconds.</p></body></html>")


def handler500(request):
    """Django's 500 handler (errors outside DRF views: the admin, middleware).

    Called while the exception is being handled: an unreachable database answers 503
    (JSON ``database_unavailable``, or a plain page under /admin/), not 500.
    """
    exc = sys.exc_info()[1]
    if exc is not None and database_unavailable(exc):
        body, status, _, headers = _database_unavailable(exc)
        if request.path.startswith("/admin"):
            response = HttpResponse(ADMIN_UNAVAILABLE_PAGE, status=status, content_type="text/html; charset=utf-8")
        else:
            response = JsonResponse(body, status=status)
        for name, value in headers.items():
            response[name] = value
        return response
    return JsonResponse(error_body("internal_error", "An internal error occurred."), status=500)


def csrf_failure(request, reason=""):
    return JsonResponse(error_body("forbidden", f"CSRF verification failed: {reason}"), status=403)
