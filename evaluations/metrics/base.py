"""What a metric looks at (:class:`Observation`) and what it answers (:class:`Score`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

RUN_STATUSES = ("ok", "error", "timeout", "max_tool_calls", "budget_exceeded")


@dataclass(frozen=True)
class Observation:
    """What one case's run produced.

    ``output`` is the run's output (text, or a JSON value); ``status`` one of
    :data:`RUN_STATUSES`; ``input`` the case input the run received.
    """

    output: Any
    status: str
    cost_usd: Decimal
    latency_ms: int
    input: dict


@dataclass(frozen=True)
class Score:
    """One metric's verdict on one observation.

    ``metric`` is the metric's name (its config ``name``, or its type);
    ``score`` is within 0..1; ``reason`` is a human sentence saying why.
    """

    metric: str
    score: float
    passed: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored with a case result: ``{"metric", "score", "passed", "reason"}``."""
        return {"metric": self.metric, "score": self.score, "passed": self.passed, "reason": self.reason}


Judge = Callable[[dict, Observation, Any], "tuple[float, str]"]
"""``judge(config, observation, expected) -> (score 0..1, reason)`` for llmJudge metrics."""
