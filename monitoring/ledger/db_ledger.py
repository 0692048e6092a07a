"""The database ledger: one conditional UPDATE admits or refuses a reservation.

``UPDATE period SET reserved = reserved + x WHERE id = ? AND spent + reserved + x <= cap``
takes the row lock; a concurrent reservation waits for it and PostgreSQL re-checks
the predicate against the committed row, so admitted reservations never sum past
the cap. Each operation runs in its own short transaction (``durable``): a
reservation must commit before the model call, whatever the caller is doing.

The period row is ``BudgetPeriod`` (see ``spend``): created on a period's first
reservation, seeded from the recorded runs; retention never deletes it (it adds
the cost of the runs it deletes to ``deleted_units``).

Unreachable means more than "the database is down" (then nothing else on the
execute path works either): a reservation that cannot take the period row's
lock within ``FRUXON_LEDGER_LOCK_TIMEOUT_MS`` (default 3,000; a stuck
transaction holding the row, a lock storm) fails with ``LedgerUnavailable``
like a Redis timeout, instead of holding the request forever: fail closed.
"""
from __future__ import annotations

import uuid
from datetime import datetime

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import F, Value
from django.db.models.functions import Greatest

from ..models import BudgetPeriod, BudgetReservation
from . import spend
from .base import BudgetState, LedgerUnavailable, Reservation

DEFAULT_LOCK_TIMEOUT_MS = 3000


def _lock_timeout() -> None:
    """Bound this transaction's wait for the period row's lock (PostgreSQL)."""
    if connection.vendor != "postgresql":
        return
    timeout = int(getattr(settings, "FRUXON_LEDGER_LOCK_TIMEOUT_MS", DEFAULT_LOCK_TIMEOUT_MS))
    with connection.cursor() as cursor:
        cursor.execute(f"SET LOCAL lock_timeout = {max(1, timeout)}")


class DatabaseLedger:
    def _period(self, state: BudgetState) -> BudgetPeriod:
        return spend.period_row(state)

    def open_period(self, state: BudgetState) -> None:
        self._period(state)

    def reserve(self, state: BudgetState, units: int) -> Reservation | None:
        try:
            with transaction.atomic(durable=not transaction.get_connection().in_atomic_block):
                period = self._period(state)
                rows = BudgetPeriod.objects.filter(pk=period.pk)
                if state.enforce:
                    rows = rows.filter(spent_units__lte=state.cap_units - units - F("reserved_units"))
                _lock_timeout()
                if not rows.update(reserved_units=F("reserved_units") + units):
                    return None
                reservation = BudgetReservation.objects.create(
                    id=uuid.uuid4().hex, organization_id=state.organization_id, budget_period=period, units=units)
        except DatabaseError as exc:
            raise LedgerUnavailable(f"database ledger unavailable: {type(exc).__name__}") from exc
        return Reservation(reservation.id, state, units)

    def settle(self, reservation: Reservation, actual_units: int) -> int:
        with transaction.atomic(durable=not transaction.get_connection().in_atomic_block):
            row = BudgetReservation.objects.select_for_update().filter(pk=reservation.id).first()
            if row is None:  # released as stale meanwhile: its units were already returned
                BudgetPeriod.objects.filter(**spend.where(reservation.state)).update(
                    spent_units=F("spent_units") + actual_units)
            else:
                BudgetPeriod.objects.filter(pk=row.budget_period_id).update(
                    reserved_units=F("reserved_units") - row.units, spent_units=F("spent_units") + actual_units)
                row.delete()
            return BudgetPeriod.objects.filter(**spend.where(reservation.state)).values_list(
                "spent_units", flat=True).first() or 0

    def usage(self, state: BudgetState) -> tuple[int, int]:
        row = BudgetPeriod.objects.filter(**spend.where(state)).values_list("spent_units", "reserved_units").first()
        return row if row else (spend.recorded_spend_units(state), 0)

    def raise_spent(self, state: BudgetState, floor_units: int) -> int:
        """Reconciliation: ``spent = max(spent, floor)`` in one locked update; returns the previous spent."""
        with transaction.atomic():
            period = self._period(state)
            previous = BudgetPeriod.objects.select_for_update().values_list("spent_units", flat=True).get(pk=period.pk)
            if previous < floor_units:
                BudgetPeriod.objects.filter(pk=period.pk).update(
                    spent_units=Greatest(F("spent_units"), Value(floor_units)))
        return previous

    def set_spent(self, state: BudgetState, spent_units: int) -> int:
        """An explicit correction (``monitoring.budgets.correct_spent``): overwrite spent; returns the previous value."""
        with transaction.atomic():
            period = self._period(state)
            locked = BudgetPeriod.objects.select_for_update().get(pk=period.pk)
            previous = locked.spent_units
            locked.spent_units = spent_units
            locked.save(update_fields=["spent_units"])
        return previous

    def release_stale(self, older_than: datetime) -> int:
        released = 0
        stale = list(BudgetReservation.objects.filter(created_at__lt=older_than).values_list("pk", flat=True)[:10_000])
        for pk in stale:
            with transaction.atomic():
                row = BudgetReservation.objects.select_for_update().filter(pk=pk).first()
                if row is None:
                    continue
                BudgetPeriod.objects.filter(pk=row.budget_period_id).update(reserved_units=F("reserved_units") - row.units)
                row.delete()
                released += 1
        return released
