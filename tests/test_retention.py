"""Retention (monitoring.retention): per-org retention days, batches, pinned runs kept,
spans deleted with their runs, emptied conversations removed; the task and its beat entry."""
from __future__ import annotations

import datetime as dt

import pytest
from django.conf import settings
from django.utils import timezone

from monitoring.models import Conversation, Run, Span
from monitoring.retention import purge_expired
from monitoring.tasks import purge_expired_runs

from . import factories as f
from .builders import agent_with_revision

DAY = dt.timedelta(days=1)


class Org:
    """An org with one agent whose runs are created ``age`` before ``now``, each with two spans."""

    def __init__(self, slug: str, retention_days: int, now: dt.datetime):
        self.org = f.OrganizationFactory(slug=slug, retention_days=retention_days)
        self.agent, self.revision = agent_with_revision(self.org, f"{slug}-agent")
        self.now = now

    def conversation(self, key: str, *, updated: dt.timedelta) -> Conversation:
        return Conversation.objects.create(organization=self.org, agent=self.agent, key=key,
                                           created_at=self.now - updated, updated_at=self.now - updated)

    def run(self, age: dt.timedelta, *, pinned: bool = False, conversation: Conversation | None = None) -> Run:
        run = Run.objects.create(organization=self.org, agent=self.agent, revision=self.revision, status="ok",
                                 created_at=self.now - age, pinned=pinned, conversation=conversation)
        Span.objects.bulk_create([
            Span(organization=self.org, run=run, position=i, kind="llm", name=f"call {i}", started_at=run.created_at)
            for i in range(2)
        ])
        return run


def _alive(*runs: Run) -> list[bool]:
    present = set(Run.objects.filter(pk__in=[r.pk for r in runs]).values_list("pk", flat=True))
    return [r.pk in present for r in runs]


@pytest.fixture
def now():
    return timezone.now()


@pytest.fixture
def week(db, now) -> Org:
    return Org("weekly", 7, now)


@pytest.fixture
def month(db, now) -> Org:
    return Org("monthly", 30, now)


def test_each_org_keeps_its_own_retention(week, month, now):
    w_recent, w_old, w_older = week.run(DAY), week.run(10 * DAY), week.run(40 * DAY)
    m_recent, m_old, m_older = month.run(DAY), month.run(10 * DAY), month.run(40 * DAY)
    w_pinned, m_pinned = week.run(400 * DAY, pinned=True), month.run(40 * DAY, pinned=True)

    assert purge_expired(now=now, batch_size=1) == 3
    assert _alive(w_recent, w_old, w_older) == [True, False, False]
    assert _alive(m_recent, m_old, m_older) == [True, True, False]
    assert _alive(w_pinned, m_pinned) == [True, True]
    assert not Span.objects.filter(run_id__in=[w_old.pk, w_older.pk, m_older.pk]).exists()
    assert Span.objects.filter(run_id__in=[w_recent.pk, m_old.pk, w_pinned.pk]).count() == 6

    # Idempotent: nothing is left to delete.
    assert purge_expired(now=now, batch_size=1) == 0


def test_the_cutoff_is_exact(week, now):
    just_inside, just_outside = week.run(7 * DAY - dt.timedelta(seconds=1)), week.run(7 * DAY + dt.timedelta(seconds=1))
    assert purge_expired(now=now) == 1
    assert _alive(just_inside, just_outside) == [True, False]


def test_batches_cover_more_runs_than_one_batch(week, now):
    old = [week.run(8 * DAY + dt.timedelta(minutes=i)) for i in range(7)]
    kept = week.run(9 * DAY, pinned=True)
    assert purge_expired(now=now, batch_size=3) == 7
    assert not any(_alive(*old)) and _alive(kept) == [True]
    assert Span.objects.count() == 2


def test_conversations_left_without_runs_are_deleted(week, now):
    only_old = week.conversation("only-old", updated=9 * DAY)
    week.run(10 * DAY, conversation=only_old)
    week.run(9 * DAY, conversation=only_old)
    mixed = week.conversation("mixed", updated=DAY)
    week.run(20 * DAY, conversation=mixed)
    week.run(DAY, conversation=mixed)
    pinned = week.conversation("pinned", updated=30 * DAY)
    week.run(30 * DAY, pinned=True, conversation=pinned)
    week.conversation("empty-old", updated=8 * DAY)
    week.conversation("empty-new", updated=DAY)  # a turn is being recorded into it

    assert purge_expired(now=now, batch_size=2) == 3
    assert sorted(Conversation.objects.values_list("key", flat=True)) == ["empty-new", "mixed", "pinned"]
    assert Run.objects.filter(conversation=mixed).count() == 1


def test_a_later_now_deletes_every_unpinned_run(week, month, now):
    runs = [week.run(DAY), month.run(DAY), month.run(0 * DAY)]
    pinned = month.run(DAY, pinned=True)
    assert purge_expired(now=now + 365 * DAY) == 3
    assert not any(_alive(*runs)) and _alive(pinned) == [True]


def test_the_task_purges_and_beat_runs_it_hourly(week, now):
    old = week.run(10 * DAY)
    assert purge_expired_runs.apply().get() == 1
    assert _alive(old) == [False]
    assert purge_expired_runs.acks_late is True
    entries = [e for e in settings.CELERY_BEAT_SCHEDULE.values() if e["task"] == "monitoring.purge_expired_runs"]
    assert [e["schedule"] for e in entries] == [3600.0]


def test_batch_size_must_be_positive(db):
    with pytest.raises(ValueError):
        purge_expired(batch_size=0)


def test_deleted_runs_still_count_in_their_budget_periods(week, now):
    """What the deleted runs cost goes to their periods' deleted_units (day and month rows that exist);
    pinned and kept runs add nothing, and the budget period rows themselves are never deleted."""
    from decimal import Decimal

    from monitoring.ledger.base import period_bounds
    from monitoring.models import BudgetPeriod

    old = week.run(10 * DAY)
    cheap, dear, pinned, kept = week.run(10 * DAY), week.run(10 * DAY), week.run(10 * DAY, pinned=True), week.run(DAY)
    Run.objects.filter(pk=cheap.pk).update(cost_usd=Decimal("0.25"))
    Run.objects.filter(pk=dear.pk).update(cost_usd=Decimal("1.50"))
    Run.objects.filter(pk__in=[pinned.pk, kept.pk]).update(cost_usd=Decimal("9"))
    created = Run.objects.get(pk=old.pk).created_at
    rows = {period: BudgetPeriod.objects.create(organization=week.org, agent=week.agent, period=period,
                                                period_start=period_bounds(period, created)[0], spent_units=7)
            for period in ("day", "month")}

    assert purge_expired(now=now, batch_size=2) == 3
    for row in rows.values():
        row.refresh_from_db()
        assert (row.deleted_units, row.spent_units) == (175_000_000, 7)
    assert purge_expired(now=now) == 0 and BudgetPeriod.objects.count() == 2
