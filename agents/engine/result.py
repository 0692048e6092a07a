"""What a run returns: :class:`RunResult` with its :class:`SpanRecord` tree and :class:`Totals`.

Everything in a ``RunResult`` is trace-safe: prompts are stored as rendered for
the trace (``{{secret.NAME}}`` kept as text) and every resolved secret value is
redacted from spans, output and error messages before the result is returned.

Span kinds: ``step`` (one per executed step; ``parent_id`` is ``None`` at the top
level or the ``subAgent`` span inside a sub-run), and under a step ``llm`` (one
model call), ``tool`` (one integration call) and ``subAgent`` (a nested run,
whose own step spans are its children). Token counts and cost are set on ``llm``
spans only, so summing any column over all spans never double counts.

Span ``status``: ``ok``, ``error``, ``skipped`` (a side-effecting tool in a shadow
run), ``timeout``, ``budget_exceeded``, ``max_tool_calls``, ``cancelled`` (a
parallel step stopped because another part of the run failed, or the whole run was
cancelled: :func:`agents.engine.arun`). An ``llm`` span whose call was interrupted (cancelled,
deadline) carries the usage and cost the provider could bill and ``usageBound: true``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

ZERO_USD = Decimal("0.00000000")

RUN_STATUSES = ("ok", "error", "timeout", "max_tool_calls", "budget_exceeded", "cancelled")


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value


@dataclass
class SpanRecord:
    id: str
    parent_id: str | None
    kind: str
    name: str
    started_at: datetime
    latency_ms: float = 0.0
    input: Any = None
    output: Any = None
    model: str | None = None
    provider: str | None = None
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: Decimal = ZERO_USD
    status: str = "ok"
    error: dict[str, str] | None = None
    attributes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: Decimal as a fixed-point string, datetime as ISO 8601."""
        return _jsonable(asdict(self))


@dataclass(frozen=True)
class Totals:
    """Sums over the run's ``llm`` spans, sub-agents included."""

    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: Decimal = ZERO_USD

    @classmethod
    def of(cls, spans: list[SpanRecord]) -> Totals:
        llm = [span for span in spans if span.kind == "llm"]
        return cls(
            input_tokens=sum(span.input_tokens for span in llm),
            cached_input_tokens=sum(span.cached_input_tokens for span in llm),
            output_tokens=sum(span.output_tokens for span in llm),
            reasoning_tokens=sum(span.reasoning_tokens for span in llm),
            cost_usd=sum((span.cost_usd for span in llm), ZERO_USD),
        )


@dataclass
class RunResult:
    """The outcome of :func:`agents.engine.runner.arun` (and :func:`~agents.engine.runner.run`).

    ``status`` is one of :data:`RUN_STATUSES`. ``output`` is the rendered output
    template (a string, or JSON for an object/array template) when ``ok``, else
    ``None``. ``error`` is ``{"code", "message"}`` when not ``ok``. ``latency_ms``
    is the run's wall time; ``provider_ms`` the time spent waiting on model
    providers along the critical path (so ``latency_ms - provider_ms`` is the
    engine's own share: tools, scheduling, templating).
    ``usage_over_reservation`` is true when a model call reported more usage
    than the upper bound reserved for it (its cost was recorded as reported).
    """

    status: str
    output: Any
    error: dict[str, str] | None
    spans: list[SpanRecord]
    totals: Totals
    started_at: datetime
    latency_ms: float
    provider_ms: float
    usage_over_reservation: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form of the whole result."""
        return _jsonable(asdict(self))
