"""Ledger types shared by the Redis and database implementations."""
from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import ROUND_CEILING, Decimal
from typing import Protocol

UNIT = Decimal("0.00000001")  # 1e-8 USD: the precision of recorded costs


def to_units(amount: Decimal, *, round_up: bool = True) -> int:
    """USD -> integer units; reservations round up so the worst case is never under-reserved."""
    return int((Decimal(amount) / UNIT).to_integral_value(rounding=ROUND_CEILING if round_up else None))


def from_units(units: int) -> Decimal:
    return (Decimal(units) * UNIT).quantize(UNIT)


class LedgerUnavailable(Exception):
    """The ledger could not be reached; callers must refuse the spend (fail closed)."""


def period_bounds(period: str, now: datetime) -> tuple[datetime, datetime]:
    """The UTC period containing ``now``: ``[start, end)`` of its day or month."""
    now = now.astimezone(timezone.utc)
    if period == "day":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return start, start + timedelta(days=1)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    days = calendar.monthrange(start.year, start.month)[1]
    return start, start + timedelta(days=days)


@dataclass(frozen=True)
class BudgetState:
    """What the ledger needs to know about one agent's budget for the current period."""

    organization_id: int
    agent_id: int
    period: str  # day | month
    period_start: datetime
    period_end: datetime
    cap_units: int
    enforce: bool

    @property
    def key(self) -> str:
        return f"{self.agent_id}:{self.period}:{int(self.period_start.timestamp())}"

    @classmethod
    def of(cls, budget, now: datetime) -> BudgetState:
        start, end = period_bounds(budget.period, now)
        return cls(organization_id=budget.organization_id, agent_id=budget.agent_id, period=budget.period,
                   period_start=start, period_end=end, cap_units=to_units(budget.amount_usd, round_up=False),
                   enforce=budget.enforce)


@dataclass(frozen=True)
class Reservation:
    id: str
    state: BudgetState
    units: int


class Ledger(Protocol):
    def open_period(self, state: BudgetState) -> None:
        """Create the period's totals (seeded from ``spend.durable_spent_units``) if they do not exist."""

    def reserve(self, state: BudgetState, units: int) -> Reservation | None:
        """Admit ``units`` if ``spent + reserved + units <= cap`` (always, when not enforced); None = refused."""

    def settle(self, reservation: Reservation, actual_units: int) -> int:
        """Release the reservation and add ``actual_units`` to spent (the truth, even above the estimate); returns spent."""

    def usage(self, state: BudgetState) -> tuple[int, int]:
        """``(spent, reserved)`` units of the period."""

    def raise_spent(self, state: BudgetState, floor_units: int) -> int:
        """Reconciliation: ``spent = max(spent, floor)`` atomically (never lowers); returns the previous spent."""

    def set_spent(self, state: BudgetState, spent_units: int) -> int:
        """An explicit correction only (``monitoring.budgets.correct_spent``, audited): overwrite spent."""

    def release_stale(self, older_than: datetime) -> int:
        """Release reservations made before ``older_than`` (a killed process never settled them)."""
