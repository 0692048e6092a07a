"""Effective model prices: agent override > org override > built-in row.

Within one level an exact model name beats the provider's ``*`` row.

The execute hot path reads prices through :func:`cached_prices`: the built-in
table and each org's overrides (its agents' included) sit in the cache (Redis
in production) for ``PRICE_CACHE_SECONDS``. One round trip per execute fetches
the org's overrides (usually an empty list) and the built-in table's *version*;
each process keeps the built-in table itself, parsed, for the version it read,
since unpickling a few hundred prices on every execute cost a tenth of its CPU.
Any write to ``ModelPrice`` drops the affected entry, now and again after
commit (``set_overrides`` explicitly, since ``bulk_create`` sends no signal;
everything else, the admin included, through the model's save/delete
signals); a migration re-seeding built-in rows is picked up within the TTL (60 s).
"""
from __future__ import annotations

import uuid
from decimal import Decimal

from django.core.cache import cache
from django.db import transaction
from django.db.models import Q
from django.db.models.signals import post_delete, post_save

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


# Also bounds the classic cache-aside race (a read of the old rows that lands in the cache
# just after a change dropped it) and a migration re-seeding built-in rows.
PRICE_CACHE_SECONDS = 60
_BUILTIN_KEY = "prices:builtin"
_BUILTIN_VERSION_KEY = "prices:builtin:version"
# (version, {(provider, model): Price}) of the built-in table this process parsed last; replaced whole.
_builtin_memo: tuple[str | None, dict] = (None, {})


def _org_key(organization_id: int) -> str:
    return f"prices:org:{organization_id}"


def _as_entry(row: ModelPrice) -> tuple[int | None, str, str, Price]:
    return row.agent_id, row.provider, row.model, as_price(row)


def forget_prices(organization_id: int | None) -> None:
    """Drop the cached built-in table (``None``) or one org's overrides; now and after commit."""
    keys = [_BUILTIN_VERSION_KEY, _BUILTIN_KEY] if organization_id is None else [_org_key(organization_id)]
    cache.delete_many(keys)
    # A concurrent read may re-cache the pre-commit rows in between.
    transaction.on_commit(lambda: cache.delete_many(keys))


def _forget_row(sender, instance: ModelPrice, **kwargs) -> None:
    forget_prices(instance.organization_id)


post_save.connect(_forget_row, sender=ModelPrice, dispatch_uid="monitoring.pricing.saved")
post_delete.connect(_forget_row, sender=ModelPrice, dispatch_uid="monitoring.pricing.deleted")


def _builtin_table(version: str | None) -> dict[tuple[str, str], Price]:
    """The built-in table for the cached ``version``: this process's parsed copy, else the cache's, else the DB's."""
    global _builtin_memo
    memo_version, table = _builtin_memo
    if version is not None and version == memo_version:
        return table
    entries = cache.get(_BUILTIN_KEY) if version is not None else None
    if entries is None:
        entries = [_as_entry(row) for row in ModelPrice.objects.filter(organization__isnull=True, agent__isnull=True)]
        version = uuid.uuid4().hex
        cache.set_many({_BUILTIN_KEY: entries, _BUILTIN_VERSION_KEY: version}, PRICE_CACHE_SECONDS)
    table = {(provider, model): price for _, provider, model, price in entries}
    _builtin_memo = (version, table)
    return table


def _merged(builtin: dict, overrides: list, agent_id: int | None) -> dict[tuple[str, str], Price]:
    """The built-in table under the org's overrides, the agent's own last (most specific wins)."""
    mine = [entry for entry in overrides if entry[0] is None or (agent_id and entry[0] == agent_id)]
    if not mine:
        return builtin
    prices = dict(builtin)
    prices.update({(provider, model): price for agent, provider, model, price in mine if agent is None})
    prices.update({(provider, model): price for agent, provider, model, price in mine if agent is not None})
    return prices


def cached_prices(*, organization_id: int, agent_id: int | None = None) -> dict[tuple[str, str], Price]:
    """``{(provider, model): Price}``, most specific level first, as :func:`effective_rows`; usually no query.

    The answer may be shared: callers read it, never change it.
    """
    org_key = _org_key(organization_id)
    found = cache.get_many([_BUILTIN_VERSION_KEY, org_key])
    builtin, overrides = _builtin_table(found.get(_BUILTIN_VERSION_KEY)), found.get(org_key)
    if overrides is None:
        overrides = [_as_entry(row) for row in ModelPrice.objects.filter(organization_id=organization_id)]
        cache.set(org_key, overrides, PRICE_CACHE_SECONDS)
    return _merged(builtin, overrides, agent_id)


async def acached_entries(organization_id: int) -> dict:
    """The cache entries ``acached_prices`` reads (one Redis round trip): fetch them early, beside
    other lookups, and pass them as ``found``."""
    return await cache.aget_many([_BUILTIN_VERSION_KEY, _org_key(organization_id)])


async def acached_prices(*, organization_id: int, agent_id: int | None = None,
                         found: dict | None = None) -> dict[tuple[str, str], Price]:
    """``cached_prices`` for the async execute family: the usual case (both entries cached, the built-in
    table already parsed in this process) is one Redis round trip on the loop (none with ``found``, from
    ``acached_entries``); anything else is ``cached_prices`` itself, through ``fruxon.adb.run``."""
    if found is None:
        found = await acached_entries(organization_id)
    version, overrides = found.get(_BUILTIN_VERSION_KEY), found.get(_org_key(organization_id))
    if version is None or version != _builtin_memo[0] or overrides is None:
        from fruxon import adb

        return await adb.run(cached_prices, organization_id=organization_id, agent_id=agent_id)
    builtin = _builtin_memo[1]
    return _merged(builtin, overrides, agent_id)


def lookup(prices: dict[tuple[str, str], Price], provider: str, model: str) -> Price | None:
    """The price of ``model``, else the provider's ``*`` row."""
    return prices.get((provider, model)) or prices.get((provider, "*"))


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
    fmt = lambda v: None if v is None else format(v.normalize(), "f")
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
        forget_prices(organization.pk)
        audit.record(organization=organization, actor=actor, action="prices.set", target_type="agent" if agent else "organization",
                     target_id=agent.slug if agent else organization.slug, data={"models": [f"{p}/{m}" for p, m in keys]})
