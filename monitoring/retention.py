"""Retention: runs older than their org's ``retention_days`` are deleted; pinned runs never.

``purge_expired`` is what the hourly ``monitoring.purge_expired_runs`` task
runs. Per organization, with ``cutoff = now - retention_days``:

1. runs created before the cutoff and not pinned are deleted in batches of
   ``batch_size``: each batch is one transaction that claims its rows with
   ``SELECT ... FOR UPDATE SKIP LOCKED`` (two purges running at once take
   disjoint batches; a run being pinned is either deleted before the pin or
   seen pinned) and deletes them by id, with their spans (and whatever else
   cascades from a run);
2. conversations left without any run and not updated since the cutoff are
   deleted the same way. A conversation a new turn is being recorded in is
   left alone once that turn has counted itself (``updated_at`` moves past the
   cutoff, and until it commits the claim skips its row lock).

Each delete re-applies the conditions to the claimed ids, so a row that
stopped matching (pinned, or given a run) in between is kept.

Deleting runs never deletes what they cost: each run batch adds the cost of
the runs it deletes to their budget periods' ``deleted_units``
(``monitoring.ledger.spend``) in the same transaction, so a monthly budget
with a 7-day retention still counts the whole month's spend. The increment
comes last, so the batch holds the period rows' locks only until it commits.

Deleting is idempotent: a crashed purge leaves whole batches done or undone,
and the next one carries on.
"""
from __future__ import annotations

import datetime as dt

from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from orgs.models import Organization

from .ledger import spend
from .models import Conversation, Run


def _delete_batches(queryset, batch_size: int, *, count_spend: bool = False) -> int:
    """Delete ``queryset``'s rows, ``batch_size`` at a time, each batch claimed and deleted in one transaction.

    ``count_spend`` (runs): the batch's cost goes to its budget periods' ``deleted_units`` first.
    """
    label, deleted = queryset.model._meta.label, 0
    while True:
        with transaction.atomic():
            ids = list(queryset.order_by().select_for_update(skip_locked=True).values_list("pk", flat=True)[:batch_size])
            if ids:
                doomed = queryset.filter(pk__in=ids)
                totals = spend.deleted_totals(doomed) if count_spend else {}
                _, per_model = doomed.only("pk").delete()
                deleted += per_model.get(label, 0)
                spend.add_deleted(totals)
        if len(ids) < batch_size:
            return deleted


def purge_organization(*, organization_id: int, cutoff: dt.datetime, batch_size: int = 1000) -> int:
    """Delete one org's unpinned runs created before ``cutoff``, then its emptied conversations.

    Returns the number of runs deleted.
    """
    runs = Run.objects.filter(organization_id=organization_id, created_at__lt=cutoff, pinned=False)
    deleted = _delete_batches(runs, batch_size, count_spend=True)
    empty = (Conversation.objects.filter(organization_id=organization_id, updated_at__lt=cutoff)
             .filter(~Exists(Run.objects.filter(conversation_id=OuterRef("pk")))))
    _delete_batches(empty, batch_size)
    return deleted


def purge_expired(now: dt.datetime | None = None, batch_size: int = 1000) -> int:
    """Apply every org's retention at ``now`` (default: the current time); returns the runs deleted."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1.")
    now = now or timezone.now()
    deleted = 0
    for organization_id, days in Organization.objects.order_by("pk").values_list("pk", "retention_days"):
        deleted += purge_organization(organization_id=organization_id, cutoff=now - dt.timedelta(days=days),
                                      batch_size=batch_size)
    return deleted
