"""The engine's entry point: :func:`run`.

Contract:

* the spec is validated (:class:`SpecError`) and the input checked against its
  declared inputs (:class:`InputError`) before anything runs; both are raised,
  since they are the caller's mistake (HTTP 400), and nothing is recorded;
* everything after that ends in a :class:`RunResult`, never an exception:
  ``ok``, or ``error`` / ``timeout`` / ``max_tool_calls`` / ``budget_exceeded``
  with ``error = {"code", "message"}`` (codes in :mod:`agents.engine.errors`;
  an unexpected engine bug is ``internal_error``);
* the run ends by its deadline (``context.deadline``, else now + the spec's
  ``timeoutSeconds``), give or take the unwinding of the call in flight;
* no resolved secret value appears anywhere in the result: spans, output and
  error messages are redacted on the way out.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import httpx

from .errors import EngineError, SpecError
from .inputs import validate_inputs
from .providers import LocalProvider, OpenAIProvider, Provider
from .result import RunResult, SpanRecord, Totals
from .runtime import RunContext, Runtime, timeout_seconds
from .spec import validate_spec
from .state import Frame, RunState
from .templating import Redactor
from .transport import default_client
from .workflow import execute

logger = logging.getLogger(__name__)


def default_providers(client: httpx.Client) -> dict[str, Provider]:
    return {"openai": OpenAIProvider(client), "fruxon-local": LocalProvider()}


def _redact_span(span: SpanRecord, redactor: Redactor) -> None:
    for name in ("name", "input", "output", "error", "attributes"):
        setattr(span, name, redactor.redact(getattr(span, name)))


def _failed_provider_ms(spans: list[SpanRecord], latency_ms: float) -> float:
    # A failed run has no completed critical path; the provider time of every
    # call is an upper bound once capped by the wall time.
    total = sum(span.attributes.get("providerMs", 0.0) for span in spans if span.kind == "llm")
    return min(total, latency_ms)


def run(spec: Mapping[str, Any], inputs: Any, *, context: RunContext, runtime: Runtime,
        providers: Mapping[str, Provider] | None = None) -> RunResult:
    """Execute ``spec`` on ``inputs`` for ``context.agent`` (see the module contract).

    ``providers`` replaces the default provider table (``openai`` over the
    runtime's ``http_client``, ``fruxon-local``); tests use it to tune retries.
    """
    problems = validate_spec(spec)
    if problems:
        raise SpecError(problems)
    values = validate_inputs(spec.get("inputs"), inputs)

    started = time.monotonic()
    started_at = datetime.now(timezone.utc)
    deadline = context.deadline if context.deadline is not None else started + timeout_seconds(spec)
    client = getattr(runtime, "http_client", None) or default_client()
    state = RunState(runtime=runtime, providers=providers or default_providers(client), shadow=context.shadow,
                     execute=execute, client=client)
    frame = Frame(agent=context.agent, revision_id=context.revision_id, spec=spec, inputs=values,
                  deadline=deadline, chain=(context.agent,))

    status, output, error, provider_ms = "ok", None, None, None
    try:
        outcome = execute(frame, state)
        output, provider_ms = outcome.output, outcome.provider_ms
    except EngineError as exc:
        status, error = exc.status, {"code": exc.code, "message": exc.message}
    except Exception as exc:  # a bug must still produce a recorded run, not a 500 with a half-written trace
        logger.error("engine failure for agent %s: %s\n%s", context.agent,
                     state.redactor.redact_text(f"{type(exc).__name__}: {exc}"),
                     "".join(traceback.format_tb(exc.__traceback__)))
        status, error = "error", {"code": "internal_error", "message": "the engine failed unexpectedly"}

    state.cancel.set()  # anything still running stops at its next check
    spans = state.recorder.close("timeout" if status == "timeout" else "cancelled")
    for span in spans:
        _redact_span(span, state.redactor)
    latency_ms = round((time.monotonic() - started) * 1000.0, 3)
    return RunResult(
        status=status,
        output=state.redactor.redact(output),
        error=state.redactor.redact(error),
        spans=spans,
        totals=Totals.of(spans),
        started_at=started_at,
        latency_ms=latency_ms,
        provider_ms=round(provider_ms if provider_ms is not None else _failed_provider_ms(spans, latency_ms), 3),
        usage_over_reservation=state.usage_over_reservation,
    )
