"""Run metrics per time bucket: runs, errors, latency percentiles, tokens, cost.

``series(runs, since=, until=, bucket=)`` takes an already scoped Run queryset
(the org, and whatever filters the caller applied) and answers one ``Stats``
per UTC bucket (hour or day) of ``[since, until)``, every bucket present
(empty ones have zero runs), plus the totals over the window.

* Buckets are the database's date truncation of ``created_at`` in UTC
  (``TruncHour`` / ``TruncDay``); the first bucket starts at ``since``
  truncated, so it may be only partly inside the window.
* Counts and sums are one ``GROUP BY bucket`` query. ``errors`` counts runs
  whose status is not ``ok``; ``error_rate`` is ``errors / runs`` (None
  without runs).
* Latency percentiles use the **nearest-rank** definition: the p-th
  percentile of n latencies is the value at rank ``ceil(p * n)`` (1-based,
  at least 1) of the sorted latencies, so it is always a latency that was
  recorded. On PostgreSQL that is exactly ``percentile_disc(p) WITHIN GROUP
  (ORDER BY latency_ms)``, computed in the same query; elsewhere (SQLite)
  the latencies are read back per bucket and ranked in Python
  (``nearest_rank``). Both give the same numbers.
"""
from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from decimal import Decimal

from django.db import connections
from django.db.models import Aggregate, Count, IntegerField, Q, QuerySet, Sum
from django.db.models.functions import TruncDay, TruncHour

BUCKETS = {"hour": dt.timedelta(hours=1), "day": dt.timedelta(days=1)}
# The longest window each bucket size answers for (about 744 hourly or 366 daily buckets).
MAX_WINDOW = {"hour": dt.timedelta(days=31), "day": dt.timedelta(days=366)}
PERCENTILES = {"p50": 0.5, "p95": 0.95}
_TRUNC = {"hour": TruncHour, "day": TruncDay}
_SUMS = ("input_tokens", "output_tokens", "cached_input_tokens", "reasoning_tokens", "cost_usd")


class PercentileDisc(Aggregate):
    """PostgreSQL's ``percentile_disc(fraction) WITHIN GROUP (ORDER BY expression)``."""

    function = "percentile_disc"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"

    def __init__(self, expression, fraction: float, **extra):
        fraction = float(fraction)
        if not 0.0 <= fraction <= 1.0:
            raise ValueError("A percentile fraction lies in [0, 1].")
        super().__init__(expression, fraction=repr(fraction), output_field=IntegerField(), **extra)


def nearest_rank(ordered: list[int], fraction: float) -> int | None:
    """The nearest-rank percentile of already sorted values; None when there are none."""
    if not ordered:
        return None
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


@dataclass
class Stats:
    runs: int = 0
    errors: int = 0
    p50_latency_ms: int | None = None
    p95_latency_ms: int | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: Decimal = Decimal("0")

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.runs if self.runs else None


@dataclass
class Bucket(Stats):
    start: dt.datetime | None = None


@dataclass
class Series:
    bucket: str
    since: dt.datetime
    until: dt.datetime
    buckets: list[Bucket] = field(default_factory=list)
    totals: Stats = field(default_factory=Stats)


def bucket_start(moment: dt.datetime, bucket: str) -> dt.datetime:
    """``moment`` truncated to its UTC hour or day, as the database truncates it."""
    moment = moment.astimezone(dt.timezone.utc).replace(minute=0, second=0, microsecond=0)
    return moment.replace(hour=0) if bucket == "day" else moment


def _aggregates(percentiles_in_sql: bool) -> dict:
    aggregates = {"runs": Count("pk"), "errors": Count("pk", filter=~Q(status="ok"))}
    aggregates |= {f"sum_{name}": Sum(name) for name in _SUMS}
    if percentiles_in_sql:
        aggregates |= _percentile_aggregates()
    return aggregates


def _percentile_aggregates() -> dict:
    return {name: PercentileDisc("latency_ms", fraction) for name, fraction in PERCENTILES.items()}


def _set_percentiles(stats: Stats, ordered: list[int] | None = None, *, row: dict | None = None) -> None:
    """From SQL (``row`` has ``p50``/``p95``) or from sorted latencies ranked here."""
    p50, p95 = (row["p50"], row["p95"]) if row is not None else (nearest_rank(ordered, f) for f in PERCENTILES.values())
    stats.p50_latency_ms, stats.p95_latency_ms = p50, p95


def series(runs: QuerySet, *, since: dt.datetime, until: dt.datetime, bucket: str = "hour") -> Series:
    """Metrics of ``runs`` created in ``[since, until)``, per UTC ``bucket`` (``hour`` or ``day``)."""
    in_sql = connections[runs.db].vendor == "postgresql"
    window = runs.filter(created_at__gte=since, created_at__lt=until).order_by()
    trunc = _TRUNC[bucket]("created_at", tzinfo=dt.timezone.utc)
    out = Series(bucket=bucket, since=since, until=until)
    start = bucket_start(since, bucket)
    while start < until:
        out.buckets.append(Bucket(start=start))
        start += BUCKETS[bucket]
    by_start = {b.start: b for b in out.buckets}

    # Counts and sums (and on PostgreSQL the percentiles): one GROUP BY bucket query.
    for row in window.annotate(bucket=trunc).values("bucket").annotate(**_aggregates(in_sql)).order_by("bucket"):
        stats = by_start[row["bucket"]]
        stats.runs, stats.errors = row["runs"], row["errors"]
        for name in _SUMS:
            setattr(stats, name, row[f"sum_{name}"])
        if in_sql:
            _set_percentiles(stats, row=row)
    totals = out.totals
    for b in out.buckets:
        totals.runs, totals.errors = totals.runs + b.runs, totals.errors + b.errors
        for name in _SUMS:
            setattr(totals, name, getattr(totals, name) + getattr(b, name))

    if in_sql:
        _set_percentiles(totals, row=window.aggregate(**_percentile_aggregates()))
        return out
    latencies: dict[dt.datetime, list[int]] = {}
    for key, latency in window.annotate(bucket=trunc).values_list("bucket", "latency_ms").iterator():
        latencies.setdefault(key, []).append(latency)
    for key, values in latencies.items():
        _set_percentiles(by_start[key], sorted(values))
    _set_percentiles(totals, sorted(v for values in latencies.values() for v in values))
    return out
