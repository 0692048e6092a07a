"""Password guessing limits, shared by ``POST /v1/auth/token`` and the admin's login form.

Failed logins are counted per account (the username as typed, case-folded, whether
or not it exists, so the answer reveals nothing) and per client address. Past
``FRUXON_LOGIN_MAX_FAILURES_PER_ACCOUNT`` failures for an account, or
``FRUXON_LOGIN_MAX_FAILURES_PER_ADDRESS`` from one address, within
``FRUXON_LOGIN_WINDOW_SECONDS``, every login for that account or from that
address is refused, the right password included, until the lock's window has
passed. A successful login clears its account's count (not the address's: one
known account must not reset the guesses made against others).

The client address is ``REMOTE_ADDR``, unless that is one of the proxies in
``FRUXON_TRUSTED_PROXIES`` (IPs or CIDRs; none by default): then the
``X-Forwarded-For`` chain is read from the right, skipping trusted proxies, and
the first address no trusted proxy vouches for is the client. A header sent by
anyone else is ignored, so a new ``X-Forwarded-For`` per try buys nothing.

Counters live in Django's cache (Redis in production): ``add`` then ``incr`` is
atomic there, so the limits hold across processes. While Redis is unreachable the
counters fall back to this process's memory (neither fail open nor closed): logins
keep working, which the admin needs most during an outage, and guessing stays
limited, per process (so at most the limits times the number of server processes),
on top of the password hash's own cost. Counts made during the outage are not
carried over when Redis is back; locks set in Redis before it stay in force. Hand-written rather than
django-axes: the API must answer 429 ``rate_limited`` with ``Retry-After`` in the
project's error shape and the admin form must show its own error, both of which
axes reaches only through its middleware, lockout responses and extra tables.
"""
from __future__ import annotations

import hashlib
import ipaddress
import math
import time
from functools import lru_cache

from django.conf import settings
from django.core.cache.backends.locmem import LocMemCache

from fruxon.errors import FruxonError

# Where counters go while the shared cache is unreachable (see the module docstring).
_local = LocMemCache("fruxon-login-throttle", {"TIMEOUT": None, "OPTIONS": {"MAX_ENTRIES": 100_000}})


def _cache(name: str, *args):
    from fruxon.cache import (  # not at import: see fruxon.api.authentication
        CacheUnavailable,
        strict,
    )

    try:
        return strict(name, *args)
    except CacheUnavailable:
        return getattr(_local, name)(*args)


class LoginThrottled(FruxonError):
    """429 ``rate_limited``: too many failed logins for this account or from this address."""

    status, code = 429, "rate_limited"

    def __init__(self, retry_after: int):
        minutes = max(1, math.ceil(retry_after / 60))
        super().__init__(f"Too many failed logins; try again in {minutes} minute{'s' if minutes > 1 else ''}.",
                         details={"retryAfter": retry_after})
        self.retry_after = retry_after
        self.headers = {"Retry-After": str(retry_after)}  # rendered by fruxon.api.errors


@lru_cache(maxsize=8)
def _networks(spec: tuple[str, ...]) -> tuple:
    return tuple(ipaddress.ip_network(item.strip(), strict=False) for item in spec if item.strip())


def _trusted(address: str) -> bool:
    networks = _networks(tuple(settings.FRUXON_TRUSTED_PROXIES))
    if not networks:
        return False
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_address(request) -> str:
    """The client's IP: REMOTE_ADDR, or the X-Forwarded-For hop the trusted proxies vouch for."""
    remote = (request.META.get("REMOTE_ADDR") or "").strip() or "unknown"
    if not _trusted(remote):
        return remote
    hops = [h.strip() for h in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if h.strip()]
    client = remote
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            break  # a malformed hop: nothing left of it can be trusted
        client = hop
        if not _trusted(hop):
            break
    return client


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _subjects(username: str | None, address: str | None) -> list[tuple[str, int]]:
    """(cache key stem, max failures) for the account and the address."""
    out = []
    if username:
        out.append((f"login:acct:{_digest(username.strip().casefold())}", settings.FRUXON_LOGIN_MAX_FAILURES_PER_ACCOUNT))
    if address:
        out.append((f"login:addr:{_digest(address)}", settings.FRUXON_LOGIN_MAX_FAILURES_PER_ADDRESS))
    return out


def retry_after(*, username: str | None, address: str | None) -> int:
    """Seconds until a login for ``username`` from ``address`` may be tried again; 0 when it may now."""
    now = time.time()
    waits = [0]
    locks = _cache("get_many", [f"{stem}:lock" for stem, _ in _subjects(username, address)])
    for until in locks.values():
        waits.append(max(0, math.ceil(until - now)))
    return max(waits)


def check(*, username: str | None, address: str | None) -> None:
    """Raise ``LoginThrottled`` when this account or address is locked."""
    wait = retry_after(username=username, address=address)
    if wait:
        raise LoginThrottled(wait)


def _incr(key: str, window: int) -> int:
    for _ in range(3):
        _cache("add", key, 0, window)  # the window starts at the first failure
        try:
            return _cache("incr", key)
        except ValueError:  # expired between add and incr: start again
            continue
    return 1


def failed(*, username: str | None, address: str | None) -> None:
    """Count one failed login; lock the account or address that reached its limit."""
    window = settings.FRUXON_LOGIN_WINDOW_SECONDS
    for stem, limit in _subjects(username, address):
        if _incr(f"{stem}:n", window) >= limit:
            # The lock outlives the counter: a full window from the failure that reached the limit.
            _cache("set", f"{stem}:lock", time.time() + window, window)


def succeeded(*, username: str | None) -> None:
    """A successful login clears its account's failures (an address's count stays)."""
    for stem, _ in _subjects(username, None):
        _cache("delete", f"{stem}:n")
