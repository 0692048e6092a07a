"""API keys: create (plaintext returned once), revoke, rotate with an overlap window."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from fruxon.errors import Conflict, InvalidRequest, NotFound
from orgs.actor import Actor
from orgs.credentials import API_KEY_PREFIX, mint
from orgs.models import ApiKey, Organization
from orgs.rights import Rights, held_by, require_within
from orgs.roles import ALL_SCOPES, expand_scopes

MAX_OVERLAP = timedelta(days=30)


@dataclass(frozen=True)
class MintedKey:
    key: ApiKey
    plaintext: str  # shown to the caller once, never stored


def _forget(key: ApiKey) -> None:
    """Drop the cached lookup now and again after commit.

    Now, so this process stops honouring the key at once; after commit, because
    a concurrent request may have re-cached the pre-commit row in between.
    """
    from fruxon.api.authentication import forget_key

    forget_key(key)
    transaction.on_commit(lambda: forget_key(key))


def _within_actor(actor: Actor, organization: Organization, *, scopes, agents, expires_at, what: str) -> None:
    """403 unless a key with these scopes, agents and expiry is within what ``actor`` holds (orgs.rights)."""
    wanted = Rights(frozenset(scopes), frozenset(agents) if agents else None, expires_at)
    require_within(held_by(actor, organization), wanted, what=what)


def create_key(*, actor: Actor, organization: Organization, name: str, scopes: list[str] | None = None,
               preset: str | None = None, agents: list[str] | None = None, expires_at=None,
               rate_limits: dict | None = None) -> MintedKey:
    """Mint a key. Its scopes, agent list and expiry must be within the actor's own (403 otherwise):
    a key limited to agents mints only keys limited to some of them, an expiring key only keys that
    expire no later. ``rate_limits`` (field names of ``rate_limits.FIELDS``) must be within the org's
    (400) and, when the actor is a rate-limited key, within its own (403)."""
    unknown = sorted(set(scopes or []) - set(ALL_SCOPES))
    if unknown:
        raise InvalidRequest(f"Unknown scopes: {', '.join(unknown)}.", code="unknown_scope", details={"fields": {"scopes": unknown}})
    expanded = expand_scopes(scopes, preset)
    if not expanded:
        raise InvalidRequest("A key needs at least one scope or a preset.", details={"fields": {"scopes": ["Required."]}})
    _within_actor(actor, organization, scopes=expanded, agents=agents, expires_at=expires_at, what="a key")
    from .rate_limits import check_new_key_limits, to_api

    limits = check_new_key_limits(actor=actor, organization=organization, limits=rate_limits)
    plaintext, prefix, digest = mint(API_KEY_PREFIX)
    from . import audit

    with transaction.atomic():
        key = ApiKey.objects.create(
            organization=organization, name=name, prefix=prefix, key_hash=digest, scopes=expanded,
            agents=sorted(set(agents or [])), created_by=actor.user_or_none, expires_at=expires_at, **limits,
        )
        audit.record(organization=organization, actor=actor, action="key.created", target_type="api_key",
                     target_id=key.pk, data={"name": name, "prefix": prefix, "scopes": expanded, "agents": key.agents,
                                             "rateLimits": to_api(key)})
    return MintedKey(key, plaintext)


def _get_active(organization: Organization, key_id) -> ApiKey:
    key = ApiKey.objects.select_for_update().filter(organization=organization, pk=key_id).first()
    if key is None:
        raise NotFound("API key not found.")
    return key


def revoke_key(*, actor: Actor, organization: Organization, key_id) -> ApiKey:
    """Revoke at once. A key may revoke only keys whose scopes and agents are within its own (403
    otherwise), so a narrow ``keys:write`` key cannot cut off the org's broader keys; expiry does not
    count here, since revoking hands nothing out."""
    from . import audit

    with transaction.atomic():
        key = _get_active(organization, key_id)
        if key.revoked_at is not None:
            raise Conflict("This key is already revoked.", code="already_revoked")
        held = held_by(actor, organization)
        require_within(Rights(held.scopes, held.agents), Rights(frozenset(key.scopes), frozenset(key.agents) or None),
                       what="a revocation of this key")
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
        audit.record(organization=organization, actor=actor, action="key.revoked", target_type="api_key",
                     target_id=key.pk, data={"prefix": key.prefix})
        _forget(key)
    return key


def rotate_key(*, actor: Actor, organization: Organization, key_id, overlap: timedelta) -> MintedKey:
    """Mint a successor with the same scopes and agents; the old key works until now + overlap.

    The old key's scopes, agents and expiry must be within the actor's own (403 otherwise):
    rotating hands out a fresh copy of them."""
    if overlap < timedelta(0) or overlap > MAX_OVERLAP:
        raise InvalidRequest("overlapSeconds must be between 0 and 30 days.", details={"fields": {"overlapSeconds": ["Out of range."]}})
    from . import audit

    with transaction.atomic():
        old = _get_active(organization, key_id)
        if not old.is_active():
            raise Conflict("Only an active key can be rotated.", code="key_inactive")
        _within_actor(actor, organization, scopes=old.scopes, agents=old.agents, expires_at=old.expires_at,
                      what="a copy of this key")
        from .rate_limits import FIELDS, within_actor

        limits = {name: getattr(old, name) for name in FIELDS}  # the successor keeps the key's rate limits
        within_actor(actor, limits)
        plaintext, prefix, digest = mint(API_KEY_PREFIX)
        new = ApiKey.objects.create(
            organization=organization, name=old.name, prefix=prefix, key_hash=digest, scopes=old.scopes,
            agents=old.agents, created_by=actor.user_or_none, expires_at=old.expires_at, rotated_from=old, **limits,
        )
        ends = timezone.now() + overlap
        old.expires_at = min(ends, old.expires_at) if old.expires_at else ends
        old.save(update_fields=["expires_at"])
        audit.record(organization=organization, actor=actor, action="key.rotated", target_type="api_key",
                     target_id=old.pk, data={"oldPrefix": old.prefix, "newPrefix": prefix, "newKeyId": new.pk,
                                             "oldKeyExpiresAt": old.expires_at.isoformat()})
        _forget(old)
    return MintedKey(new, plaintext)
