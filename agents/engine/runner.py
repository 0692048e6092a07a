"""The engine's entry points: :func:`arun` (async) and :func:`run` (its sync form).

Contract (both):

* the spec is validated (:class:`SpecError`) and the input checked against its
  declared inputs (:class:`InputError`) before anything runs; both are raised,
  since they are the caller's mistake (HTTP 400), and nothing is recorded;
* everything after that ends in a :class:`RunResult`, never an exception:
  ``ok``, or ``error`` / ``timeout`` / ``max_tool_calls`` / ``budget_exceeded`` /
  ``cancelled`` with ``error = {"code", "message"}`` (codes in :mod:`agents.engine.errors`;
  an unexpected engine bug is ``internal_error``);
* the run ends by its deadline (``context.deadline``, else now + the spec's
  ``timeoutSeconds``), give or take the unwinding of the call in flight;
* no resolved secret value appears anywhere in the result (nor in the events):
  spans, output and error messages are redacted on the way out.

Cancellation (:func:`arun` only). When the task awaiting :func:`arun` is cancelled (a
client went away), the run stops at once: every model call in flight has its connection
closed, is recorded and settled at what the provider could bill (:mod:`agents.engine.step`),
parallel steps are cancelled and waited for, and :func:`arun` then *returns* the
``RunResult`` with status ``cancelled`` (code ``cancelled``) instead of raising, so the
caller can record it and answer. The cancellation request stays counted on the task
(``asyncio.current_task().cancelling()`` is still positive): a caller that must propagate
it (a task group, an outer timeout) re-raises :class:`asyncio.CancelledError` itself once
the run is recorded. A cancellation that arrives after the run finished changes nothing.
Prefer ``context.deadline`` to an outer timeout: a deadline ends the run as ``timeout``,
with the same billing of the call in flight.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timezone
from typing import Any

import httpx

from .aio import CURRENT_LANE, Lane, run_sync
from .errors import EngineError, SpecError
from .inputs import validate_inputs
from .providers import LocalProvider, OpenAIProvider, Provider
from .result import RunResult, SpanRecord, Totals
from .runtime import AsyncRuntime, RunContext, Runtime, as_async_runtime, timeout_seconds
from .spec import validate_spec
from .state import Frame, RunState
from .templating import Redactor
from .transport import default_async_client
from .workflow import execute

logger = logging.getLogger(__name__)

Events = Callable[[str, dict[str, Any]], Awaitable[None]]


def default_providers(client: httpx.AsyncClient | None = None) -> dict[str, Provider]:
    return {"openai": OpenAIProvider(client), "fruxon-local": LocalProvider()}


def _redact_span(span: SpanRecord, redactor: Redactor) -> None:
    for name in ("name", "input", "output", "error", "attributes"):
        setattr(span, name, redactor.redact(getattr(span, name)))


def _failed_provider_ms(spans: list[SpanRecord], latency_ms: float) -> float:
    # A failed run has no completed critical path; the provider time of every
    # call is an upper bound once capped by the wall time.
    total = sum(span.attributes.get("providerMs", 0.0) for span in spans if span.kind == "llm")
    return min(total, latency_ms)


async def arun(spec: Mapping[str, Any], inputs: Any, *, context: RunContext, runtime: AsyncRuntime | Runtime,
               events: Events | None = None, providers: Mapping[str, Provider] | None = None) -> RunResult:
    """Execute ``spec`` on ``inputs`` for ``context.agent`` (see the module contract).

    ``runtime`` is an :class:`AsyncRuntime`, or a sync :class:`Runtime` (adapted by
    :func:`~agents.engine.runtime.as_async_runtime`: its calls run on worker threads, one per
    lane). Model and tool calls go over ``runtime.http_client`` (an ``httpx.AsyncClient``)
    or the event loop's pooled :func:`~agents.engine.transport.default_async_client`.

    ``events``: ``await events(name, data)`` for each of the run's events, in order:
    ``step.started``, ``output.delta``, ``tool.call``, ``tool.result``, ``step.completed``
    (data as API.md "Streaming, cancellation and overload"; :mod:`agents.engine.step`).
    With ``events``, the model calls of the output step stream
    (:func:`agents.engine.workflow.output_step`) and the ``output.delta`` texts concatenated
    equal the result's ``output`` when it is a string; without, no call streams. A callback
    that raises is logged and dropped; the run goes on.

    ``providers`` replaces the default provider table (``openai`` over the run's client,
    ``fruxon-local``); tests use it to tune retries.
    """
    problems = validate_spec(spec)
    if problems:
        raise SpecError(problems)
    values = validate_inputs(spec.get("inputs"), inputs)

    started = time.monotonic()
    started_at = datetime.now(timezone.utc)
    deadline = context.deadline if context.deadline is not None else started + timeout_seconds(spec)
    host = as_async_runtime(runtime)
    client = getattr(host, "http_client", None) or default_async_client()
    state = RunState(runtime=host, providers=providers or default_providers(client), shadow=context.shadow,
                     execute=execute, client=client, events=events)
    frame = Frame(agent=context.agent, revision_id=context.revision_id, spec=spec, inputs=values,
                  deadline=deadline, chain=(context.agent,))

    own_lane = CURRENT_LANE.get() is None
    if own_lane:
        lane_token = CURRENT_LANE.set(Lane())
    status, output, error, provider_ms = "ok", None, None, None
    try:
        outcome = await execute(frame, state)
        output, provider_ms = outcome.output, outcome.provider_ms
    except EngineError as exc:
        status, error = exc.status, {"code": exc.code, "message": exc.message}
    except asyncio.CancelledError:
        status, error = "cancelled", {"code": "cancelled", "message": "the run was cancelled before it finished"}
    except Exception as exc:  # a bug must still produce a recorded run, not a 500 with a half-written trace
        logger.error("engine failure for agent %s: %s\n%s", context.agent,
                     state.redactor.redact_text(f"{type(exc).__name__}: {exc}"),
                     "".join(traceback.format_tb(exc.__traceback__)))
        status, error = "error", {"code": "internal_error", "message": "the engine failed unexpectedly"}
    finally:
        if own_lane:
            lane = CURRENT_LANE.get()
            CURRENT_LANE.reset(lane_token)
            if lane is not None:
                lane.close()

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


def run(spec: Mapping[str, Any], inputs: Any, *, context: RunContext, runtime: Runtime | AsyncRuntime,
        providers: Mapping[str, Provider] | None = None) -> RunResult:
    """The sync form of :func:`arun` (no events): the same engine, driven on the calling thread's
    own event loop (:func:`agents.engine.aio.run_sync`), for Celery workers and sync views.

    A sync ``runtime``'s calls run inline on the calling thread for the run's main path (as they
    always did: a Django runtime keeps its connection and transaction) and on a worker thread per
    parallel step. Must not be called from a running event loop (``await arun(...)`` there).
    """
    async def drive() -> RunResult:
        CURRENT_LANE.set(Lane(inline=True))  # this drive task's own context
        return await arun(spec, inputs, context=context, runtime=runtime, providers=providers)

    return run_sync(drive())
