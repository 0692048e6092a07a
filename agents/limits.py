"""The engine's spec and run limits, from settings (``FRUXON_MAX_*``; see ``agents.engine.limits``)."""
from __future__ import annotations

from django.conf import settings

from .engine.limits import Limits


def engine_limits() -> Limits:
    """The limits the operator configured, read now (so ``override_settings`` applies in tests)."""
    return Limits(
        max_steps=settings.FRUXON_MAX_STEPS,
        max_tools_per_step=settings.FRUXON_MAX_TOOLS_PER_STEP,
        max_subagents_per_step=settings.FRUXON_MAX_SUBAGENTS_PER_STEP,
        max_spec_bytes=settings.FRUXON_MAX_SPEC_BYTES,
        max_model_calls=settings.FRUXON_MAX_MODEL_CALLS_PER_RUN,
        max_spans=settings.FRUXON_MAX_SPANS_PER_RUN,
    )
