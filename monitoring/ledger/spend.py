"""Recorded spend: the database's truth the ledgers are seeded and reconciled from."""
from __future__ import annotations

from decimal import Decimal

from django.db.models import Sum

from ..models import Run
from .base import BudgetState, to_units


def recorded_spend_units(state: BudgetState) -> int:
    total = Run.objects.filter(agent_id=state.agent_id, created_at__gte=state.period_start,
                               created_at__lt=state.period_end).aggregate(total=Sum("cost_usd"))["total"]
    return to_units(total or Decimal("0"), round_up=False)
