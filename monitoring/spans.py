"""Which of a run's spans its detail shows (the API's GET /runs/{id} and the admin's trace).

A run may have up to ``FRUXON_MAX_SPANS_PER_RUN`` spans (2,000 by default); its
detail shows the first ``FRUXON_RUN_DETAIL_SPANS`` (200 by default) in start
order and says whether there are more. Spans are stored in start order and a
span starts after its parent, so the first N always form a tree: no shown span
misses its parent. Every span is listed, paginated, by GET /runs/{id}/spans.
"""
from __future__ import annotations

from django.conf import settings

from .models import Run, Span


def detail_spans(run: Run) -> tuple[list[Span], bool]:
    """The spans the run's detail shows, in start order, and whether the run has more."""
    limit = settings.FRUXON_RUN_DETAIL_SPANS
    spans = list(run.spans.order_by("position")[:limit + 1])
    return spans[:limit], len(spans) > limit
