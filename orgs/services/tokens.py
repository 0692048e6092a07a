"""Personal tokens for people (``POST/DELETE /v1/auth/token``)."""
from __future__ import annotations

from django.contrib.auth import authenticate
from django.utils import timezone

from fruxon.errors import Unauthenticated
from orgs.credentials import USER_TOKEN_PREFIX, mint
from orgs.models import UserToken


def issue_token(*, username: str, password: str, request=None) -> tuple[UserToken, str]:
    user = authenticate(request, username=username, password=password)
    if user is None or not user.is_active:
        raise Unauthenticated("Wrong username or password.")
    plaintext, prefix, digest = mint(USER_TOKEN_PREFIX)
    token = UserToken.objects.create(user=user, prefix=prefix, key_hash=digest)
    return token, plaintext


def revoke_token(*, token: UserToken) -> None:
    UserToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
