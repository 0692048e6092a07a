"""Changes people make to recorded runs: pin / unpin, delete. Each one is audited.

Runs are written by the execution service (``monitoring.recording``) and
removed by retention (``monitoring.retention``); these are the only other
writes, and both go through here so the API and the admin behave the same
(DESIGN rule 3: keyword-only ``actor``, one transaction, one AuditEvent).
"""
from __future__ import annotations

from django.db import transaction

from fruxon.errors import NotFound
from orgs.actor import Actor
from orgs.services import audit

from .ledger import spend
from .models import Run


def _audit_data(run: Run) -> dict:
    return {"agent": run.agent.slug, "revisionId": run.revision_id}


def set_pinned(*, actor: Actor, run: Run, pinned: bool = True) -> Run:
    """Pin (``pinned=True``) or unpin a run; a pinned run outlives its org's retention.

    The row is locked while it changes, so a concurrent retention purge either
    deletes it first (then this raises 404) or sees it pinned. Setting the
    state it already has changes nothing and writes no AuditEvent; otherwise
    one ``run.pinned`` or ``run.unpinned`` event is written.
    """
    with transaction.atomic():
        current = Run.objects.select_for_update().filter(pk=run.pk).values_list("pinned", flat=True).first()
        if current is None:
            raise NotFound(f"Run '{run.pk}' not found.")
        if current != pinned:
            Run.objects.filter(pk=run.pk).update(pinned=pinned)
            audit.record(organization=run.organization, actor=actor, action="run.pinned" if pinned else "run.unpinned",
                         target_type="run", target_id=run.pk, data=_audit_data(run))
    run.pinned = pinned
    return run


def delete_run(*, actor: Actor, run: Run) -> None:
    """Delete one run with its spans, in a transaction, with an AuditEvent (``run.deleted``).

    What the run cost stays in its budget periods (``deleted_units``, see
    ``monitoring.ledger.spend``): deleting the evidence does not refund the spend.
    """
    with transaction.atomic():
        audit.record(organization=run.organization, actor=actor, action="run.deleted", target_type="run",
                     target_id=run.pk, data=_audit_data(run))
        totals = spend.deleted_totals([run.pk])
        run.delete()
        spend.add_deleted(totals)
