"""Authentication: API keys (programs), personal tokens (people), sessions (admin).

API keys arrive as ``X-API-KEY: fx_live_...`` or ``Authorization: Bearer
fx_live_...``; personal tokens as ``Authorization: Bearer fxu_...``. A key
lookup is cached for ``FRUXON_KEY_CACHE_SECONDS`` (the execute hot path must not
pay a query for it); revoking or rotating a key clears its cache entry, and a cached
key's expiry is checked on every request. Personal tokens are looked up uncached, so
their expiry (``FRUXON_USER_TOKEN_TTL_HOURS``), revocation and the revocation that
a password change makes (``orgs.signals``) hold on the next request in every process.
While Redis is unreachable, keys are read from PostgreSQL on every request
(``lookup_api_key``); personal tokens do not need Redis at all.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core.cache import cache
from django.core.cache.backends.locmem import LocMemCache
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


def lookup_api_key(digest: str) -> ApiKey | None:
    """The API key whose hash is ``digest`` (active or not), or None: the cache, else the database.

    The cache never raises (``fruxon.cache``): while Redis is unreachable every lookup
    reads the database, and nothing is cached anywhere else, so a revocation holds
    at once in every process. A database that cannot be reached raises (503 upstream).
    """
    key = cache.get(key_cache_key(digest))
    if key is None:
        key = ApiKey.objects.filter(key_hash=digest).first()
        if key is not None:
            cache.set(key_cache_key(digest), key, settings.FRUXON_KEY_CACHE_SECONDS)
    return key


_key_by_hash = None


async def alookup_api_key(digest: str) -> ApiKey | None:
    """``lookup_api_key`` for the async execute family: the cache over redis.asyncio, else one
    statement through ``fruxon.adb``; same answers, same caching."""
    global _key_by_hash
    key = await cache.aget(key_cache_key(digest))
    if key is None:
        if _key_by_hash is None:
            from fruxon.db import PreparedQuery

            _key_by_hash = PreparedQuery(lambda digest: ApiKey.objects.filter(key_hash=digest).order_by()[:1],
                                         sentinels=("\x00digest-sentinel",))
        key = await _key_by_hash.afirst(digest)
        if key is not None:
            await cache.aset(key_cache_key(digest), key, settings.FRUXON_KEY_CACHE_SECONDS)
    return key


def raw_api_key(request) -> str | None:
    """The API key the request presents (``X-API-KEY`` or a bearer ``fx_live_...``), or None."""
    raw = request.META.get("HTTP_X_API_KEY") or _bearer(request)
    return raw if raw and raw.startswith(API_KEY_PREFIX) else None


def refuse_inactive(key: ApiKey | None, now) -> ApiKey:
    """``key``, or the 401 for an unknown, revoked or expired one."""
    if key is None:
        raise exceptions.AuthenticationFailed("Invalid API key.")
    if not key.is_active(now):
        raise exceptions.AuthenticationFailed("This API key is revoked or expired.")
    return key


def key_use_is_stale(key: ApiKey, now) -> bool:
    """Whether ``note_key_used`` would write (so an async caller can skip the thread hop)."""
    return key.last_used_at is None or now - key.last_used_at > LAST_USED_GRANULARITY


# Claims of the last_used_at write while the shared cache is unreachable: per process (so at most one
# write a minute per key and process), never a reason to refuse or to write on every request.
_local_claims = LocMemCache("fruxon-key-used", {"TIMEOUT": 60, "OPTIONS": {"MAX_ENTRIES": 10_000}})


def note_key_used(key: ApiKey, now) -> None:
    """Record ``last_used_at``, at most once a minute per key (the hot path stays read-only)."""
    if not key_use_is_stale(key, now):
        return
    # The cache.add claim keeps the requests (and processes) that see the stale value at the
    # same moment from all writing, and queueing, on the key's row lock.
    key.last_used_at = now
    # Imported here, not at module level: with a local-memory cache (tests, the demo) the Redis client
    # modules stay unloaded until something needs them (see tests/test_budget_race.py's warm-up).
    from fruxon.cache import CacheUnavailable
    from fruxon.cache import strict as strict_cache

    claim, seconds = f"apikey-used:{key.pk}", int(LAST_USED_GRANULARITY.total_seconds())
    try:
        claimed = strict_cache("add", claim, 1, seconds)
    except CacheUnavailable:
        claimed = _local_claims.add(claim, 1, seconds)
    if claimed:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        cache.set(key_cache_key(key.key_hash), key, settings.FRUXON_KEY_CACHE_SECONDS)


def _bearer(request) -> str | None:
    header = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


class ApiKeyAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request):
        raw = raw_api_key(request)
        if raw is None:
            return None
        now = timezone.now()
        key = refuse_inactive(lookup_api_key(hash_credential(raw)), now)
        note_key_used(key, now)
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
