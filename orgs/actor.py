"""Who is acting: a person, an API key, or the system (Celery, beat).

Services take ``actor`` keyword-only and write it into AuditEvents.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .models import ApiKey


@dataclass(frozen=True)
class Actor:
    user: Any = None
    api_key: "ApiKey | None" = None
    system: bool = False

    @property
    def label(self) -> str:
        if self.system:
            return "system"
        if self.api_key is not None:
            return f"key:{self.api_key.prefix}"
        if self.user is not None:
            return f"user:{self.user.get_username()}"
        return "anonymous"

    @property
    def user_or_none(self):
        return self.user if self.user is not None and getattr(self.user, "pk", None) else None

    @classmethod
    def from_request(cls, request) -> "Actor":
        from .models import ApiKey

        if isinstance(request.auth, ApiKey):
            return cls(api_key=request.auth)
        return cls(user=request.user)


SYSTEM = Actor(system=True)
