"""Authentication: API keys (programs), personal tokens (people), sessions (admin).

API keys arrive as ``X-API-KEY: fx_live_...`` or ``Authorization: Bearer
fx_live_...``; personal tokens as ``Authorization: Bearer fxu_...``. A key
lookup is cached for ``FRUXON_KEY_CACHE_SECONDS`` (the execute hot path must not
pay a query for it); revoking or rotating a key clears its cache entry, and a cached
key's expiry is checked on every request. Personal tokens are looked up uncached, so
their expiry (``FRUXON_USER_TOKEN_TTL_HOURS``), revocation and the revocation that
a password change makes (``orgs.signals``) hold on the next request in every process.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone
from rest_framework import authentication, exceptions

from orgs.credentials import API_KEY_PREFIX, USER_TOKEN_PREFIX, hash_credential
from orgs.models import ApiKey, UserToken

LAST_USED_GRANULARITY = timedelta(minutes=1)


@dataclass
class ApiKeyUser:
    """``request.user`` for a request made with an API key: authenticated, no person."""

    api_key: ApiKey
    is_authenticated: bool = True
    is_anonymous: bool = False
    is_active: bool = True
    is_staff: bool = False
    is_superuser: bool = False
    pk = None
    id = None

    def get_username(self) -> str:
        return f"key:{self.api_key.prefix}"

    def __str__(self) -> str:
        return self.get_username()


def key_cache_key(key_hash: str) -> str:
    return f"apikey:{key_hash}"


def forget_key(key: ApiKey) -> None:
    cache.delete(key_cache_key(key.key_hash))


def _bearer(request) -> str | None:
    header = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


class ApiKeyAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request):
        raw = request.META.get("HTTP_X_API_KEY") or _bearer(request)
        if not raw or not raw.startswith(API_KEY_PREFIX):
            return None
        digest = hash_credential(raw)
        key = cache.get(key_cache_key(digest))
        if key is None:
            key = ApiKey.objects.filter(key_hash=digest).first()
            if key is None:
                raise exceptions.AuthenticationFailed("Invalid API key.")
            cache.set(key_cache_key(digest), key, settings.FRUXON_KEY_CACHE_SECONDS)
        now = timezone.now()
        if not key.is_active(now):
            raise exceptions.AuthenticationFailed("This API key is revoked or expired.")
        if key.last_used_at is None or now - key.last_used_at > LAST_USED_GRANULARITY:
            # At most one write a minute per key, so the hot path stays read-only. The
            # cache.add claim keeps the requests (and processes) that see the stale value
            # at the same moment from all writing, and queueing, on the key's row lock.
            key.last_used_at = now
            if cache.add(f"apikey-used:{key.pk}", 1, int(LAST_USED_GRANULARITY.total_seconds())):
                ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
                cache.set(key_cache_key(digest), key, settings.FRUXON_KEY_CACHE_SECONDS)
        return ApiKeyUser(api_key=key), key

    def authenticate_header(self, request):
        return 'Bearer realm="fruxon"'


class UserTokenAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request):
        raw = _bearer(request)
        if not raw or not raw.startswith(USER_TOKEN_PREFIX):
            if raw and not raw.startswith(API_KEY_PREFIX):
                raise exceptions.AuthenticationFailed("Unknown bearer token format.")
            return None
        # Not cached: expiry, revocation and a password change (which revokes) hold on the next request.
        token = UserToken.objects.select_related("user").filter(key_hash=hash_credential(raw)).first()
        if token is None or token.revoked_at is not None or not token.user.is_active:
            raise exceptions.AuthenticationFailed("Invalid or revoked token.")
        now = timezone.now()
        from orgs.services.tokens import token_expires_at

        if token_expires_at(token) <= now:
            raise exceptions.AuthenticationFailed("This token has expired; get a new one from POST /v1/auth/token.")
        if token.last_used_at is None or now - token.last_used_at > LAST_USED_GRANULARITY:
            UserToken.objects.filter(pk=token.pk).update(last_used_at=now)
        return token.user, token

    def authenticate_header(self, request):
        return 'Bearer realm="fruxon"'


class SessionAuthentication(authentication.SessionAuthentication):
    """Django sessions (the admin's login), with CSRF enforced on unsafe methods."""
