"""Secrets: write-only, versioned, encrypted values.

A value goes in through ``put_secret`` and comes out only through
``resolve_value`` (``resolve`` adds the hosts it may go to), which the engine
calls at model/tool call time for an agent in the secret's ``allowedAgents``.
No other code path decrypts. A value is only ever sent to a host of its
``allowedHosts`` or of the integrations whose credentials it is: checked when a
revision is created (``check_destinations``) and again by the engine per call.
"""
from __future__ import annotations

import json

from django.db import transaction
from django.utils import timezone

from fruxon.errors import Forbidden, InvalidRequest, NotFound
from orgs import crypto
from orgs.actor import Actor
from agents.engine import destinations
from orgs.models import Integration, Organization, Secret, SecretVersion

from . import audit

MAX_VALUE_BYTES = 64 * 1024
MAX_ALLOWED_HOSTS = 100
_UNSET = object()


class SecretNotAllowed(Forbidden):
    code = "secret_not_allowed"



def clean_allowed_hosts(hosts) -> list[str]:
    """``allowedHosts`` canonical (lowercase, IDNA, sorted, unique); 400 naming the first bad entry."""
    if len(hosts) > MAX_ALLOWED_HOSTS:
        raise InvalidRequest(f"A secret has at most {MAX_ALLOWED_HOSTS} allowed hosts.",
                             details={"fields": {"allowedHosts": ["Too many hosts."]}})
    try:
        return destinations.normalize_host_entries(hosts)
    except destinations.HostError as exc:
        raise InvalidRequest(f"allowedHosts: {exc}.", details={"fields": {"allowedHosts": [str(exc)]}}) from None


def put_secret(*, actor: Actor, organization: Organization, name: str, value=_UNSET, description=_UNSET,
               allowed_agents=_UNSET, allowed_hosts=_UNSET) -> tuple[Secret, bool]:
    """Create a secret or update it. Returns ``(secret, created)``.

    A given ``value`` always makes a new version (rotation); the old version is
    kept. Without a value, only the description, allowed agents and allowed hosts
    change. ``allowed_hosts`` (host or host:port entries) is validated and stored
    canonical; the audit event records the hosts before and after.
    """
    if value is not _UNSET and len(value.encode("utf-8")) > MAX_VALUE_BYTES:
        raise InvalidRequest("A secret value is at most 64 KiB.", details={"fields": {"value": ["Too long."]}})
    if allowed_hosts is not _UNSET:
        allowed_hosts = clean_allowed_hosts(allowed_hosts)
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
        hosts_before = list(secret.allowed_hosts or [])
        if allowed_hosts is not _UNSET:
            secret.allowed_hosts = allowed_hosts
            changed.append("allowedHosts")
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
            data={"changed": changed, "version": secret.current_version, "allowedAgents": secret.allowed_agents,
                  "allowedHosts": secret.allowed_hosts,
                  **({"allowedHostsBefore": hosts_before} if "allowedHosts" in changed and not created else {})},
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


def integration_hosts(*, organization_id: int, names) -> dict[str, set[str]]:
    """Secret name -> hosts of the org's integrations whose credentialsSecret it is (their baseUrl host)."""
    hosts: dict[str, set[str]] = {name: set() for name in names}
    rows = Integration.objects.filter(organization_id=organization_id, credentials_secret__in=list(hosts))
    for secret_name, config in rows.values_list("credentials_secret", "config"):
        host = destinations.url_host((config or {}).get("baseUrl") if isinstance(config, dict) else None)
        if host is not None:
            hosts[secret_name].add(str(host))
    return hosts


def allowed_hosts_by_name(*, organization_id: int, names) -> dict[str, list[str]]:
    """For each existing secret among ``names``: the host entries it may be sent to
    (its ``allowedHosts`` and its integrations' hosts), sorted. Missing secrets are absent."""
    rows = dict(Secret.objects.filter(organization_id=organization_id, name__in=list(names))
                .values_list("name", "allowed_hosts"))
    extra = integration_hosts(organization_id=organization_id, names=rows)
    return {name: sorted(set(hosts or []) | extra[name]) for name, hosts in rows.items()}


def check_destinations(*, organization_id: int, spec, model_path: str | None = None) -> None:
    """400 ``secret_destination`` if the spec would send an existing secret to a host it does not allow.

    Every credential use (a model's ``apiKey`` and headers) is checked against the
    secret's allowed hosts and its integrations' hosts; the error names the secret,
    the position and the host of the first offending use (``details.uses`` lists all).
    A secret that does not exist yet is not checked here (readiness reports it
    missing, and the engine checks the hosts again at call time). ``model_path``
    names the position of a lone model passed as ``{"steps": [{"model": ...}]}``.
    """
    uses = destinations.secret_destinations(spec)
    if model_path:  # a model outside a revision (an llmJudge metric's): name its own position
        uses = [destinations.SecretUse(u.secret, u.path.replace("$.steps[0].model", model_path, 1), u.host)
                for u in uses]
    if not uses:
        return
    allowed = allowed_hosts_by_name(organization_id=organization_id, names={u.secret for u in uses})
    refused = destinations.disallowed_uses(uses, allowed)
    if refused:
        first = refused[0]
        where = f"host '{first.host}'" if first.host else "a host that is not fixed in the spec (a templated baseUrl)"
        raise InvalidRequest(
            f"Secret '{first.secret}' at {first.path} would be sent to {where}, which is not among its allowed "
            f"hosts ({', '.join(allowed[first.secret]) or 'none'}). Add the host to the secret's allowedHosts "
            "(PUT /secrets/NAME) or send the request elsewhere.",
            code="secret_destination",
            details={"secret": first.secret, "path": first.path, "host": str(first.host) if first.host else None,
                     "allowedHosts": allowed[first.secret], "uses": [u.to_dict() for u in refused]},
        )


def resolve(*, organization_id: int, name: str, agent_slug: str | None) -> tuple[str, frozenset[str]]:
    """The current value and the host entries it may be sent to (see :func:`allowed_hosts_by_name`).

    Same checks and errors as :func:`resolve_value`; the engine sends the value only
    to a URL one of the hosts matches.
    """
    secret, value = _resolve(organization_id=organization_id, name=name, agent_slug=agent_slug)
    hosts = set(secret.allowed_hosts or []) | integration_hosts(organization_id=organization_id, names=[name])[name]
    return value, frozenset(hosts)


def resolve_value(*, organization_id: int, name: str, agent_slug: str | None) -> str:
    """Decrypt the current value for an agent allowed to use it.

    ``agent_slug=None`` is for integrations' own credentials, which belong to the
    org rather than to one agent. Raises NotFound or SecretNotAllowed, whose
    messages name the secret but never contain its value.
    """
    return _resolve(organization_id=organization_id, name=name, agent_slug=agent_slug)[1]


def _resolve(*, organization_id: int, name: str, agent_slug: str | None) -> tuple[Secret, str]:
    secret = Secret.objects.filter(organization_id=organization_id, name=name).first()
    _check_use(secret, name, agent_slug)
    version = SecretVersion.objects.get(secret=secret, version=secret.current_version)
    return secret, crypto.decrypt(version.ciphertext)


def _check_use(secret: Secret | None, name: str, agent_slug: str | None) -> None:
    if secret is None or secret.current_version == 0:
        raise NotFound(f"Secret '{name}' does not exist in this organization.", code="unknown_secret")
    if agent_slug is not None and not secret.allows_agent(agent_slug):
        raise SecretNotAllowed(f"Agent '{agent_slug}' is not in the allowedAgents of secret '{name}'.")


_ONE_STATEMENT = None


def _one_statement() -> str:
    """``resolve``'s three lookups (the secret, its current version, its integrations' URLs) as one."""
    global _ONE_STATEMENT
    if _ONE_STATEMENT is None:
        secret, version, integration = (model._meta.db_table for model in (Secret, SecretVersion, Integration))
        _ONE_STATEMENT = (
            f'SELECT s.allowed_agents, s.allowed_hosts, s.current_version, v.ciphertext, '
            f'(SELECT array_agg(i.config ->> \'baseUrl\') FROM "{integration}" i '
            f' WHERE i.organization_id = s.organization_id AND i.credentials_secret = s.name) '
            f'FROM "{secret}" s LEFT JOIN "{version}" v ON v.secret_id = s.id AND v.version = s.current_version '
            f'WHERE s.organization_id = %s AND s.name = %s')
    return _ONE_STATEMENT


async def aresolve(*, organization_id: int, name: str, agent_slug: str | None) -> tuple[str, frozenset[str]]:
    """``resolve`` for the async execute family: the same checks, errors and answer, in one statement
    through ``fruxon.adb`` on PostgreSQL (elsewhere ``resolve`` itself, off the loop)."""
    from django.db import connection

    from fruxon import adb

    if connection.vendor != "postgresql":
        return await adb.run(resolve, organization_id=organization_id, name=name, agent_slug=agent_slug)
    row = await adb.fetchone(_one_statement(), [organization_id, name])
    secret = None
    if row is not None:
        agents, hosts, current, ciphertext, urls = row
        load = lambda value: json.loads(value) if isinstance(value, str) else value  # noqa: E731 - jsonb as text
        secret = Secret(name=name, allowed_agents=load(agents) or [], allowed_hosts=load(hosts) or [],
                        current_version=current)
    _check_use(secret, name, agent_slug)
    if ciphertext is None:  # the current version row is missing: as SecretVersion.objects.get would say
        raise SecretVersion.DoesNotExist(f"secret {name!r} version {current}")
    allowed = set(secret.allowed_hosts)
    for url in urls or ():
        host = destinations.url_host(url)
        if host is not None:
            allowed.add(str(host))
    return crypto.decrypt(ciphertext), frozenset(allowed)
