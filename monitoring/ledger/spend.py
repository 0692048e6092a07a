"""The database's durable record of spend: what the ledgers are seeded and reconciled from.

Why not just "the sum of recorded run costs"? Three things make that sum LOWER
than what was really spent, and a ledger set from it would then admit runs past
the cap:

* a run's model calls are settled on the ledger as they happen, but its Run
  row is written when the run ends: a run in flight has spent money no Run
  row shows yet;
* retention deletes old runs, including runs of a budget period that is still
  open (a monthly budget and a 7-day retention), and people delete runs;
* the Redis ledger keeps nothing on disk: after a restart it must be re-seeded
  from the database.

So each (agent, period) has a ``BudgetPeriod`` row that nothing but the agent's
deletion removes: ``spent_units`` (the database ledger itself, or the
checkpointed high-water mark of the Redis ledger) and ``deleted_units`` (the
cost of the period's runs that were deleted, added by the transaction that
deletes them: ``deleted_totals`` before the delete, ``add_deleted`` after it).
``durable_spent_units`` = ``max(spent_units, runs still recorded +
deleted_units)``, read in one statement (one snapshot, so a purge committing
in between cannot make a run count in neither term): a floor the true spend
never falls below. Ledgers are seeded from it, and reconciliation only ever
RAISES a ledger to it; lowering a ledger's spent takes an explicit, audited
correction (``monitoring.budgets.correct_spent``).

Why count deletions rather than have every recorded run add itself to the row?
The second would put an UPDATE of a hot row into the execute hot path (measured:
+0.35 to +0.7 ms per execute, on every priced run, budget or not); deletions
happen in hourly batches off the hot path. What neither can know is what a run
still in flight has settled: only the ledger has that (and the Redis checkpoint,
as of the last reconciliation).
"""
from __future__ import annotations

from collections import defaultdict
from decimal import Decimal

from django.db import IntegrityError, connection, transaction
from django.db.models import F, QuerySet, Sum, Value
from django.db.models.functions import Greatest

from ..models import BudgetPeriod, Run
from .base import BudgetState, period_bounds, to_units

PERIODS = ("day", "month")


def recorded_spend_units(state: BudgetState) -> int:
    """The cost of the period's runs still recorded (retention may have deleted some)."""
    total = Run.objects.filter(agent_id=state.agent_id, created_at__gte=state.period_start,
                               created_at__lt=state.period_end).aggregate(total=Sum("cost_usd"))["total"]
    return to_units(total or Decimal("0"), round_up=False)


def where(state: BudgetState) -> dict:
    return {"agent_id": state.agent_id, "period": state.period, "period_start": state.period_start}


def period_row(state: BudgetState) -> BudgetPeriod:
    """The period's durable row, created (spent seeded from the recorded runs) if it does not exist yet.

    Created by the period's first reservation, by the ``rollover`` task as the
    period opens, and when a budget is set, so a budget's current period has
    its row before retention could delete any of the period's runs.
    """
    row = BudgetPeriod.objects.filter(**where(state)).first()
    if row is not None:
        return row
    seed = recorded_spend_units(state)
    try:
        with transaction.atomic():
            return BudgetPeriod.objects.create(organization_id=state.organization_id, spent_units=seed,
                                               **where(state))
    except IntegrityError:  # created concurrently
        return BudgetPeriod.objects.get(**where(state))


def _floor_terms(state: BudgetState) -> tuple[int, int | None, int | None]:
    """(runs still recorded, spent_units, deleted_units) in ONE statement: one snapshot."""
    run, period = Run._meta.db_table, BudgetPeriod._meta.db_table
    quote, adapt = connection.ops.quote_name, connection.ops.adapt_datetimefield_value
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT (SELECT COALESCE(SUM(r.cost_usd), 0) FROM {quote(run)} r WHERE r.agent_id = %s "
            f"AND r.created_at >= %s AND r.created_at < %s), p.spent_units, p.deleted_units "
            f"FROM (SELECT 1 AS one) AS one LEFT JOIN {quote(period)} p "
            f"ON p.agent_id = %s AND p.period = %s AND p.period_start = %s",
            [state.agent_id, adapt(state.period_start), adapt(state.period_end), state.agent_id, state.period,
             adapt(state.period_start)])
        recorded, spent, deleted = cursor.fetchone()
    return to_units(Decimal(str(recorded or 0)), round_up=False), spent, deleted


def durable_spent_units(state: BudgetState, *, create: bool = True) -> int:
    """The floor of the period's true spend: ``max(spent_units, runs still recorded + deleted_units)``.

    ``create=False`` reads without creating the period row (a GET of the budget).
    """
    if create:
        period_row(state)
    recorded, spent, deleted = _floor_terms(state)
    return max(spent or 0, recorded + (deleted or 0))


def checkpoint(state: BudgetState, spent_units: int) -> None:
    """Keep ``spent_units`` at least the ledger's reading: the Redis ledger's durable high-water mark."""
    BudgetPeriod.objects.filter(**where(state)).update(spent_units=Greatest(F("spent_units"), Value(spent_units)))


def deleted_totals(runs) -> dict[tuple[int, str, object], int]:
    """What deleting ``runs`` (a Run queryset, or ids) takes out of each (agent, period, start).

    Read BEFORE deleting them, in the deleting transaction.
    """
    totals: dict[tuple[int, str, object], int] = defaultdict(int)
    runs = runs if isinstance(runs, QuerySet) else Run.objects.filter(pk__in=list(runs))
    rows = runs.filter(cost_usd__gt=0).values_list("agent_id", "created_at", "cost_usd")
    for agent_id, created_at, cost in rows:
        for period in PERIODS:
            totals[(agent_id, period, period_bounds(period, created_at)[0])] += to_units(cost, round_up=False)
    return totals


def add_deleted(totals: dict[tuple[int, str, object], int]) -> None:
    """Add deleted runs' cost to their periods' rows, AFTER deleting them, in the same transaction.

    Last, so the deleting transaction holds these (possibly hot) rows' locks only
    until its commit. Periods without a row (no budget ever had them) are skipped.
    """
    if not totals:
        return
    agents = {agent_id for agent_id, _, _ in totals}
    earliest = min(start for _, _, start in totals)
    existing = BudgetPeriod.objects.filter(agent_id__in=agents, period__in=PERIODS, period_start__gte=earliest)
    for pk, agent_id, period, start in existing.order_by("pk").values_list("pk", "agent_id", "period", "period_start"):
        units = totals.get((agent_id, period, start))
        if units:
            BudgetPeriod.objects.filter(pk=pk).update(deleted_units=F("deleted_units") + units)
