"""Personal tokens for people (``POST/DELETE /v1/auth/token``).

A token ends at ``expires_at`` (``FRUXON_USER_TOKEN_TTL_HOURS`` after it is
issued), when it is revoked, or when its user's password changes
(``revoke_user_tokens``, wired to the user model's save in ``orgs.signals``).
Token lookups are not cached (``fruxon.api.authentication``), so each of these
takes effect on the next request, in every process.

Issuing is guarded by ``orgs.login_throttle``: too many failures for the account
or from the client address answer 429 ``rate_limited``, the right password included.
"""
from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.contrib.auth import authenticate
from django.utils import timezone

from fruxon.errors import Unauthenticated
from orgs import login_throttle
from orgs.credentials import USER_TOKEN_PREFIX, mint
from orgs.models import UserToken


def token_ttl() -> timedelta:
    return timedelta(hours=settings.FRUXON_USER_TOKEN_TTL_HOURS)


def token_expires_at(token: UserToken):
    """When ``token`` ends; a token issued before tokens had an expiry ends a TTL after its creation."""
    return token.expires_at or token.created_at + token_ttl()


def issue_token(*, username: str, password: str, request=None) -> tuple[UserToken, str]:
    address = login_throttle.client_address(request) if request is not None else None
    login_throttle.check(username=username, address=address)
    user = authenticate(request, username=username, password=password)
    if user is None or not user.is_active:
        login_throttle.failed(username=username, address=address)
        raise Unauthenticated("Wrong username or password.")
    login_throttle.succeeded(username=username)
    plaintext, prefix, digest = mint(USER_TOKEN_PREFIX)
    now = timezone.now()
    token = UserToken.objects.create(user=user, prefix=prefix, key_hash=digest, created_at=now,
                                     expires_at=now + token_ttl())
    return token, plaintext


def revoke_token(*, token: UserToken) -> None:
    UserToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())


def revoke_user_tokens(*, user) -> int:
    """Revoke every live token of ``user`` (their password changed). Returns how many."""
    return UserToken.objects.filter(user_id=user.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
