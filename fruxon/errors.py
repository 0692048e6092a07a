"""Domain errors raised by services; the API renders them as the error shape.

Services never import DRF. Each error carries the HTTP status and the
snake_case ``code`` of API.md, a human ``message`` and optional ``details``.
"""
from __future__ import annotations


class FruxonError(Exception):
    status = 400
    code = "invalid_request"

    def __init__(self, message: str, *, code: str | None = None, details: dict | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        if status:
            self.status = status
        self.details = details or {}


class InvalidRequest(FruxonError):
    status, code = 400, "invalid_request"


class Unauthenticated(FruxonError):
    status, code = 401, "unauthenticated"


class Forbidden(FruxonError):
    status, code = 403, "forbidden"


class NotFound(FruxonError):
    status, code = 404, "not_found"


class Conflict(FruxonError):
    status, code = 409, "conflict"
