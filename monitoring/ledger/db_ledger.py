"""The database ledger: one conditional UPDATE admits or refuses a reservation.

``UPDATE period SET reserved = reserved + x WHERE id = ? AND spent + reserved + x <= cap``
takes the row lock; a concurrent reservation waits for it and PostgreSQL re-checks
the predicate against the committed row, so admitted reservations never sum past
the cap. Each operation runs in its own short transaction (``durable``): a
reservation must commit before the model call, whatever the caller is doing.
"""
from __future__ import annotations

import uuid
from datetime import datetime

from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import F

from ..models import BudgetPeriod, BudgetReservation
from .base import BudgetState, LedgerUnavailable, Reservation


class DatabaseLedger:
    def _period(self, state: BudgetState) -> BudgetPeriod:
        try:
            period, _ = BudgetPeriod.objects.get_or_create(
                agent_id=state.agent_id, period=state.period, period_start=state.period_start,
                # A callable: the recorded-spend SUM runs only when the period row is created.
                defaults={"organization_id": state.organization_id, "spent_units": lambda: self._seed(state)})
        except IntegrityError:  # created concurrently
            period = BudgetPeriod.objects.get(agent_id=state.agent_id, period=state.period,
                                              period_start=state.period_start)
        return period

    @staticmethod
    def _seed(state: BudgetState) -> int:
        from .spend import recorded_spend_units

        return recorded_spend_units(state)

    def open_period(self, state: BudgetState) -> None:
        self._period(state)

    def reserve(self, state: BudgetState, units: int) -> Reservation | None:
        try:
            with transaction.atomic(durable=not transaction.get_connection().in_atomic_block):
                period = self._period(state)
                rows = BudgetPeriod.objects.filter(pk=period.pk)
                if state.enforce:
                    rows = rows.filter(spent_units__lte=state.cap_units - units - F("reserved_units"))
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
                BudgetPeriod.objects.filter(**self._where(reservation.state)).update(
                    spent_units=F("spent_units") + actual_units)
            else:
                BudgetPeriod.objects.filter(pk=row.budget_period_id).update(
                    reserved_units=F("reserved_units") - row.units, spent_units=F("spent_units") + actual_units)
                row.delete()
            return BudgetPeriod.objects.filter(**self._where(reservation.state)).values_list(
                "spent_units", flat=True).first() or 0

    @staticmethod
    def _where(state: BudgetState) -> dict:
        return {"agent_id": state.agent_id, "period": state.period, "period_start": state.period_start}

    def usage(self, state: BudgetState) -> tuple[int, int]:
        row = BudgetPeriod.objects.filter(**self._where(state)).values_list("spent_units", "reserved_units").first()
        return row if row else (self._seed(state), 0)

    def set_spent(self, state: BudgetState, spent_units: int) -> int:
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
