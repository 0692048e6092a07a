"""Integrations: where an agent's tools send their calls.

An ``http`` integration has ``config = {"baseUrl": ..., "headers": {...}}``.
Its credentials are never in the config: ``credentials_secret`` names a Secret
of the same org, resolved at call time.
"""
from __future__ import annotations

from django.db import IntegrityError, transaction
from django.utils import timezone

from fruxon import egress
from fruxon.errors import InvalidRequest, NotFound
from orgs.actor import Actor
from orgs.models import Integration, Organization, Secret

from . import audit

EDITABLE = ("name", "kind", "config", "credentials_secret", "side_effects", "status")


def _check_secret_in_org(organization: Organization, name: str) -> None:
    if name and not Secret.objects.filter(organization=organization, name=name).exists():
        raise InvalidRequest(
            f"Secret '{name}' does not exist in this organization.", code="unknown_secret",
            details={"fields": {"credentialsSecret": [f"Unknown secret '{name}'."]}},
        )


def _public(fields: dict) -> dict:
    return {k: v for k, v in fields.items() if k != "config"} | ({"configKeys": sorted(fields["config"])} if "config" in fields else {})


def _check_base_url(config) -> None:
    """400 ``egress_denied`` for a base URL that is not http(s), carries user info, or names an internal address."""
    if isinstance(config, dict):
        egress.check_url(config.get("baseUrl"), "config.baseUrl")


def create_integration(*, actor: Actor, organization: Organization, slug: str, **fields) -> Integration:
    _check_secret_in_org(organization, fields.get("credentials_secret", ""))
    _check_base_url(fields.get("config"))
    try:
        with transaction.atomic():
            integration = Integration.objects.create(organization=organization, slug=slug, **fields)
            audit.record(organization=organization, actor=actor, action="integration.created", target_type="integration",
                         target_id=slug, data=_public(fields))
    except IntegrityError:
        raise InvalidRequest(f"An integration '{slug}' already exists.", code="slug_taken",
                             details={"fields": {"slug": ["Already taken."]}}) from None
    return integration


def get_integration(*, organization: Organization, slug: str, lock: bool = False) -> Integration:
    qs = Integration.objects.filter(organization=organization, slug=slug)
    integration = (qs.select_for_update() if lock else qs).first()
    if integration is None:
        raise NotFound(f"Integration '{slug}' not found.")
    return integration


def update_integration(*, actor: Actor, organization: Organization, slug: str, changes: dict) -> Integration:
    if "credentials_secret" in changes:
        _check_secret_in_org(organization, changes["credentials_secret"])
    if "config" in changes:
        _check_base_url(changes["config"])
    with transaction.atomic():
        integration = get_integration(organization=organization, slug=slug, lock=True)
        for field, value in changes.items():
            setattr(integration, field, value)
        integration.updated_at = timezone.now()
        integration.save()
        audit.record(organization=organization, actor=actor, action="integration.updated", target_type="integration",
                     target_id=slug, data=_public(changes))
    return integration


def delete_integration(*, actor: Actor, organization: Organization, slug: str) -> None:
    with transaction.atomic():
        integration = get_integration(organization=organization, slug=slug, lock=True)
        integration.delete()
        audit.record(organization=organization, actor=actor, action="integration.deleted", target_type="integration",
                     target_id=slug)
