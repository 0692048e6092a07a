"""Rate limits per org and per API key (issue 14 item 1): set, checked against the org's and the actor's, audited.

Three limits, each a whole number per minute or ``None`` (unlimited):
``requests_per_minute``, ``executions_per_minute``, ``tokens_per_minute``
(API names ``requestsPerMinute``, ...). The org's apply to everyone in it; a
key's apply to that key on top of the org's, and must be within the org's (a
key limit above the org's is 400). No one gives more than they hold
(docs/security.md): a key setting a key's limits must hold the target's
scopes and agents (``orgs.rights``, as for revoking it) and, where it is limited
itself, may give no looser limit than its own (403). The limiter
(``fruxon.ratelimit``) reads the limits from the org and key rows that
authentication and tenancy already load; changing a key's drops its cached row.
"""
from __future__ import annotations

from django.db import transaction

from fruxon.errors import Forbidden, InvalidRequest, NotFound
from orgs.actor import Actor
from orgs.models import ApiKey, Organization
from orgs.rights import Rights, held_by, require_within

FIELDS = ("requests_per_minute", "executions_per_minute", "tokens_per_minute")
API_NAMES = {"requests_per_minute": "requestsPerMinute", "executions_per_minute": "executionsPerMinute",
             "tokens_per_minute": "tokensPerMinute"}
MAXIMUM = {"requests_per_minute": 1_000_000, "executions_per_minute": 1_000_000, "tokens_per_minute": 10**12}


def to_api(row) -> dict:
    """``{"requestsPerMinute": ..., ...}`` of an org or a key."""
    return {API_NAMES[name]: getattr(row, name) for name in FIELDS}


def from_api(data: dict) -> dict:
    """API names -> field names, for the names present."""
    by_api = {v: k for k, v in API_NAMES.items()}
    return {by_api[name]: value for name, value in data.items() if name in by_api}


def _validate(limits: dict, prefix: str = "") -> dict:
    unknown = sorted(set(limits) - set(FIELDS))
    if unknown:
        raise InvalidRequest(f"Unknown rate limits: {', '.join(unknown)}.")
    errors = {}
    for name, value in limits.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAXIMUM[name]:
            errors[prefix + API_NAMES[name]] = [f"A whole number from 1 to {MAXIMUM[name]}, or null for unlimited."]
    if errors:
        raise InvalidRequest("Invalid rate limits: " + "; ".join(errors), details={"fields": errors})
    return limits


def _within_org(organization: Organization, limits: dict, prefix: str) -> None:
    """400 unless every key limit given is within the org's (an unlimited org allows any; a key's null means
    only the org's limit applies to it)."""
    errors = {}
    for name, value in limits.items():
        ceiling = getattr(organization, name)
        if ceiling is not None and value is not None and value > ceiling:
            errors[prefix + API_NAMES[name]] = [f"The organization's limit is {ceiling} per minute; {value} is above it."]
    if errors:
        raise InvalidRequest("A key's rate limits must be within the organization's: " + "; ".join(
            f"{field}: {msgs[0]}" for field, msgs in errors.items()), details={"fields": errors})


def within_actor(actor: Actor, limits: dict) -> None:
    """403 when a limited key would give limits looser than its own (no one gives more than they hold)."""
    key = actor.api_key
    if key is None or actor.system:
        return
    missing = {}
    for name, value in limits.items():
        own = getattr(key, name)
        if own is not None and (value is None or value > own):
            missing[API_NAMES[name]] = {"held": own, "wanted": value}
    if missing:
        raise Forbidden("You cannot give rate limits looser than your own API key's: "
                        + ", ".join(f"{n} {m['wanted'] or 'unlimited'} (yours: {m['held']})" for n, m in missing.items())
                        + ".", details={"rateLimits": missing})


def check_new_key_limits(*, actor: Actor, organization: Organization, limits: dict | None) -> dict:
    """For ``api_keys.create_key``: the limits a new key gets (field names), checked (400/403)."""
    limits = _validate(dict(limits or {}), "rateLimits.")
    within_actor(actor, {name: limits.get(name) for name in FIELDS})
    _within_org(organization, limits, "rateLimits.")
    return limits


def set_org_limits(*, actor: Actor, organization: Organization, limits: dict) -> Organization:
    """Replace the org's three limits (a missing one becomes unlimited); audited ``org.rate_limits_changed``.

    Lowering the org's limits below some key's is allowed: both apply, so the lower one holds.
    """
    limits = _validate({name: limits.get(name) for name in FIELDS})
    from . import audit

    with transaction.atomic():
        org = Organization.objects.select_for_update().get(pk=organization.pk)
        before = to_api(org)
        for name, value in limits.items():
            setattr(org, name, value)
        org.save(update_fields=list(FIELDS))
        audit.record(organization=org, actor=actor, action="org.rate_limits_changed", target_type="organization",
                     target_id=org.slug, data={"before": before, "after": to_api(org)})
    for name in FIELDS:  # the caller's copy too (the admin and the view answer from it)
        setattr(organization, name, getattr(org, name))
    return org


def set_key_limits(*, actor: Actor, organization: Organization, key_id, limits: dict) -> ApiKey:
    """Change the limits given (field names; ``None`` = only the org's apply) of one key; audited
    ``key.rate_limits_changed``. 400 when one is above the org's; 403 when the actor is a key that does
    not hold the target's scopes and agents, or is limited tighter than what it gives."""
    limits = _validate(dict(limits), "rateLimits.")
    from . import audit
    from .api_keys import _forget

    with transaction.atomic():
        key = ApiKey.objects.select_for_update().filter(organization=organization, pk=key_id).first()
        if key is None:
            raise NotFound("API key not found.")
        held = held_by(actor, organization)
        require_within(Rights(held.scopes, held.agents), Rights(frozenset(key.scopes), frozenset(key.agents) or None),
                       what="rate limits to this key")
        within_actor(actor, limits)
        org = Organization.objects.get(pk=organization.pk)  # the org's limits as of now, not the request's copy
        _within_org(org, limits, "rateLimits.")
        changed = {name: value for name, value in limits.items() if getattr(key, name) != value}
        if changed:
            before = to_api(key)
            for name, value in changed.items():
                setattr(key, name, value)
            key.save(update_fields=list(changed))
            audit.record(organization=organization, actor=actor, action="key.rate_limits_changed",
                         target_type="api_key", target_id=key.pk,
                         data={"prefix": key.prefix, "before": before, "after": to_api(key)})
            _forget(key)  # the key's cached row carries its limits
    return key
