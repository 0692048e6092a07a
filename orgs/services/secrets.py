"""Secrets: write-only, versioned, encrypted values.

A value goes in through ``put_secret`` and comes out only through
``resolve_value``, which the engine calls at model/tool call time for an
agent in the secret's ``allowedAgents``. No other code path decrypts.
"""
from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from fruxon.errors import Forbidden, InvalidRequest, NotFound
from orgs import crypto
from orgs.actor import Actor
from orgs.models import Organization, Secret, SecretVersion

from . import audit

MAX_VALUE_BYTES = 64 * 1024
_UNSET = object()


class SecretNotAllowed(Forbidden):
    code = "secret_not_allowed"



def put_secret(*, actor: Actor, organization: Organization, name: str, value=_UNSET, description=_UNSET,
               allowed_agents=_UNSET) -> tuple[Secret, bool]:
    """Create a secret or update it. Returns ``(secret, created)``.

    A given ``value`` always makes a new version (rotation); the old version is
    kept. Without a value, only the description and allowed agents change.
    """
    if value is not _UNSET and len(value.encode("utf-8")) > MAX_VALUE_BYTES:
        raise InvalidRequest("A secret value is at most 64 KiB.", details={"fields": {"value": ["Too long."]}})
    with transaction.atomic():
        secret = Secret.objects.select_for_update().filter(organization=organization, name=name).first()
        created = secret is None
        if created:
            if value is _UNSET:
                raise InvalidRequest("A new secret needs a value.", details={"fields": {"value": ["Required for a new secret."]}})
            secret = Secret(organization=organization, name=name)
        changed = []
        if description is not _UNSET:
            secret.description = description
            changed.append("description")
        if allowed_agents is not _UNSET:
            secret.allowed_agents = sorted(set(allowed_agents))
            changed.append("allowedAgents")
        if value is not _UNSET:
            secret.current_version += 1
            changed.append("value")
        secret.updated_at = timezone.now()
        secret.updated_by = actor.user_or_none
        secret.save()
        if value is not _UNSET:
            SecretVersion.objects.create(
                organization=organization, secret=secret, version=secret.current_version,
                ciphertext=crypto.encrypt(value), created_by=actor.user_or_none,
            )
        audit.record(
            organization=organization, actor=actor, action="secret.created" if created else "secret.updated",
            target_type="secret", target_id=name,
            data={"changed": changed, "version": secret.current_version, "allowedAgents": secret.allowed_agents},
        )
    return secret, created


def rollback_secret(*, actor: Actor, organization: Organization, name: str, version: int) -> Secret:
    """Make an earlier version current again, as a new version (history stays linear)."""
    with transaction.atomic():
        secret = get_secret(organization=organization, name=name, lock=True)
        old = secret.versions.filter(version=version).first()
        if old is None:
            raise InvalidRequest(f"Secret '{name}' has no version {version}.", details={"fields": {"version": ["Unknown version."]}})
        secret.current_version += 1
        secret.updated_at = timezone.now()
        secret.updated_by = actor.user_or_none
        secret.save()
        SecretVersion.objects.create(organization=organization, secret=secret, version=secret.current_version,
                                     ciphertext=old.ciphertext, created_by=actor.user_or_none)
        audit.record(organization=organization, actor=actor, action="secret.rolled_back", target_type="secret",
                     target_id=name, data={"fromVersion": version, "version": secret.current_version})
    return secret


def get_secret(*, organization: Organization, name: str, lock: bool = False) -> Secret:
    qs = Secret.objects.filter(organization=organization, name=name)
    secret = (qs.select_for_update() if lock else qs).first()
    if secret is None:
        raise NotFound(f"Secret '{name}' not found.")
    return secret


def delete_secret(*, actor: Actor, organization: Organization, name: str) -> None:
    with transaction.atomic():
        secret = get_secret(organization=organization, name=name, lock=True)
        versions = secret.current_version
        secret.delete()
        audit.record(organization=organization, actor=actor, action="secret.deleted", target_type="secret",
                     target_id=name, data={"versions": versions})


def resolve_value(*, organization_id: int, name: str, agent_slug: str | None) -> str:
    """Decrypt the current value for an agent allowed to use it.

    ``agent_slug=None`` is for integrations' own credentials, which belong to the
    org rather than to one agent. Raises NotFound or SecretNotAllowed, whose
    messages name the secret but never contain its value.
    """
    secret = Secret.objects.filter(organization_id=organization_id, name=name).first()
    if secret is None or secret.current_version == 0:
        raise NotFound(f"Secret '{name}' does not exist in this organization.", code="unknown_secret")
    if agent_slug is not None and not secret.allows_agent(agent_slug):
        raise SecretNotAllowed(f"Agent '{agent_slug}' is not in the allowedAgents of secret '{name}'.")
    version = SecretVersion.objects.get(secret=secret, version=secret.current_version)
    return crypto.decrypt(version.ciphertext)
