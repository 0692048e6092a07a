"""Effective model prices: agent override > org override > built-in row.

Within one level an exact model name beats the provider's ``*`` row.
"""
from __future__ import annotations

from decimal import Decimal

from django.db.models import Q

from agents.engine import Price

from .models import ModelPrice


def _level(row: ModelPrice) -> int:
    return 2 if row.agent_id else 1 if row.organization_id else 0


def effective_rows(*, organization_id: int, agent_id: int | None = None, provider: str | None = None) -> dict:
    """``{(provider, model): ModelPrice}`` with the most specific row for each key."""
    scope = Q(organization__isnull=True, agent__isnull=True) | Q(organization_id=organization_id, agent__isnull=True)
    if agent_id:
        scope |= Q(agent_id=agent_id)
    rows = ModelPrice.objects.filter(scope)
    if provider:
        rows = rows.filter(provider=provider)
    best: dict[tuple[str, str], ModelPrice] = {}
    for row in rows:
        key = (row.provider, row.model)
        if key not in best or _level(row) > _level(best[key]):
            best[key] = row
    return best


def as_price(row: ModelPrice) -> Price:
    return Price(input=row.input_per_million, output=row.output_per_million,
                 cached_input=row.cached_input_per_million, reasoning=row.reasoning_per_million)


def price_for(*, organization_id: int, agent_id: int | None, provider: str, model: str) -> Price | None:
    rows = effective_rows(organization_id=organization_id, agent_id=agent_id, provider=provider)
    row = rows.get((provider, model)) or rows.get((provider, "*"))
    return as_price(row) if row else None


def per_million(value) -> Decimal:
    return Decimal(str(value))


_SOURCE = {0: "builtin", 1: "org", 2: "agent"}


def price_table(*, organization_id: int, agent_id: int | None = None) -> list[dict]:
    """The effective table as the API shows it, each row saying which level it came from."""
    rows = effective_rows(organization_id=organization_id, agent_id=agent_id)
    fmt = lambda v: None if v is None else format(v.normalize(), "f")  # noqa: E731
    return [
        {"provider": row.provider, "model": row.model, "inputPerMillion": fmt(row.input_per_million),
         "cachedInputPerMillion": fmt(row.cached_input_per_million), "outputPerMillion": fmt(row.output_per_million),
         "reasoningPerMillion": fmt(row.reasoning_per_million), "source": _SOURCE[_level(row)]}
        for _, row in sorted(rows.items())
    ]


def set_overrides(*, actor, organization, agent=None, rows: list[dict]) -> None:
    """Replace the org's (or one agent's) overrides with ``rows``, atomically, with an audit event."""
    from django.db import transaction

    from orgs.services import audit

    keys = [(r["provider"], r["model"]) for r in rows]
    if len(keys) != len(set(keys)):
        from fruxon.errors import InvalidRequest

        raise InvalidRequest("Each provider/model may appear once.", details={"fields": {"prices": ["Duplicate model."]}})
    with transaction.atomic():
        level = ModelPrice.objects.filter(organization=organization, agent=agent)
        level.delete()
        ModelPrice.objects.bulk_create([
            ModelPrice(organization=organization, agent=agent, provider=r["provider"], model=r["model"],
                       input_per_million=r["inputPerMillion"], cached_input_per_million=r.get("cachedInputPerMillion"),
                       output_per_million=r["outputPerMillion"], reasoning_per_million=r.get("reasoningPerMillion"))
            for r in rows
        ])
        audit.record(organization=organization, actor=actor, action="prices.set", target_type="agent" if agent else "organization",
                     target_id=agent.slug if agent else organization.slug, data={"models": [f"{p}/{m}" for p, m in keys]})
