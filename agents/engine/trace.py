"""Span recording for one run (sub-runs included).

The :class:`Recorder` is shared by every thread of a run. A span is appended when
it starts (so spans come out in start order) and completed by :meth:`Recorder.finish`.
:meth:`Recorder.close` seals the trace: spans still open are marked with the
given status, and anything a straggling thread records afterwards is dropped,
so a returned ``RunResult`` never changes under its reader.

A run records at most ``max_spans`` spans (sub-runs included): starting one more
raises :class:`SpanLimitReached`, which ends the run (nothing past the limit is
done, since every call out starts its span first).
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any

from .errors import SpanLimitReached
from .limits import DEFAULT_LIMITS
from .result import SpanRecord


def _elapsed_ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000.0, 3)


class Recorder:
    def __init__(self, max_spans: int = DEFAULT_LIMITS.max_spans) -> None:
        self.max_spans = max_spans
        self._lock = threading.Lock()
        self._spans: list[SpanRecord] = []
        self._open: dict[str, float] = {}  # span id -> monotonic start
        self._closed = False

    def start(self, kind: str, name: str, parent_id: str | None, **fields: Any) -> SpanRecord:
        span = SpanRecord(id=uuid.uuid4().hex, parent_id=parent_id, kind=kind, name=name,
                          started_at=datetime.now(timezone.utc), **fields)
        with self._lock:
            if not self._closed:
                if len(self._spans) >= self.max_spans:
                    raise SpanLimitReached(f"the run reached its limit of {self.max_spans} spans "
                                           "(FRUXON_MAX_SPANS_PER_RUN); nothing more was done")
                self._spans.append(span)
                self._open[span.id] = time.monotonic()
        return span

    def finish(self, span: SpanRecord, *, status: str = "ok", **fields: Any) -> None:
        """Complete ``span``: set its latency, status and the given fields. ``attributes`` are merged."""
        with self._lock:
            started = self._open.pop(span.id, None)
            if started is None:  # closed already, or finished twice
                return
            span.latency_ms = _elapsed_ms(started)
            span.status = status
            attributes = fields.pop("attributes", None)
            if attributes:
                span.attributes.update(attributes)
            for key, value in fields.items():
                setattr(span, key, value)

    def close(self, open_status: str) -> list[SpanRecord]:
        with self._lock:
            self._closed = True
            for span in self._spans:
                started = self._open.pop(span.id, None)
                if started is not None:
                    span.latency_ms = _elapsed_ms(started)
                    span.status = open_status
            return list(self._spans)
