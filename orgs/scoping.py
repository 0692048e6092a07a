"""Tenancy, enforced in one place (DESIGN rule 1).

``resolve_tenant`` turns a ``{tenant}`` slug and the caller into the org and
the caller's role there; ``scoped`` filters any queryset to one org. A missing
org, an org the caller is not a member of, and an API key of another org all
raise the same ``NotFound``: existence of other tenants never leaks.
"""
from __future__ import annotations

from dataclasses import dataclass

from django.db.models import QuerySet

from fruxon.errors import NotFound

from .models import ApiKey, Membership, Organization


@dataclass(frozen=True)
class Tenant:
    organization: Organization
    role: str | None  # the person's org role; None for API keys
    api_key: ApiKey | None


def _missing(slug: str) -> NotFound:
    return NotFound(f"Organization '{slug}' not found.")


def resolve_tenant(*, slug: str, user, api_key: ApiKey | None) -> Tenant:
    if api_key is not None:
        org = Organization.objects.filter(pk=api_key.organization_id, slug=slug).first()
        if org is None:
            raise _missing(slug)
        return Tenant(org, None, api_key)
    membership = (
        Membership.objects.select_related("organization")
        .filter(organization__slug=slug, user_id=user.pk)
        .first()
    )
    if membership is None:
        # Superusers get no API back door: over HTTP, membership is the only way in.
        raise _missing(slug)
    return Tenant(membership.organization, membership.role, None)


def scoped(queryset: QuerySet, organization: Organization) -> QuerySet:
    """The only way a tenant-owned queryset reaches a view."""
    return queryset.filter(organization=organization)


def orgs_for_user(user) -> QuerySet:
    return Organization.objects.filter(membership__user_id=user.pk)
