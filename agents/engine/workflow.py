"""Step scheduling for one (sub-)run: dependency order, concurrent where independent.

Contract of :func:`execute` (a coroutine, on the run's event loop):

* a step starts once every step it references (``{{steps.X.output}}``) is done;
* when the dependencies allow only one step at a time (a chain, the common case)
  steps are awaited one after the other in the calling task; otherwise ready steps
  run as tasks of their own (no threads), each as soon as it is ready, each in its own
  runtime lane (:class:`agents.engine.aio.Lane`);
* the first failure stops the rest softly: running steps stop at their next call out
  (a model call in flight finishes and is settled), and ``execute`` waits for them,
  bounded by the deadline (past it they are cancelled), so that every budget
  reservation they made is settled before the run is reported;
* cancellation of the calling task (the caller went away) cancels every running step
  at once (each closes its provider connection and settles its reservation at what the
  provider could bill: :mod:`agents.engine.step`), waits for them, and re-raises;
* the result is the rendered ``output`` template (default: the output of the
  step that comes last in dependency order, listed order breaking ties) and
  the provider time along the critical path: the chain of steps, each the
  last-finishing dependency of the next, that ends with the last step to finish;
* :func:`output_step` names the step whose output *is* the run's output (streamed as
  ``output.delta`` events when the caller listens): the step the ``output`` template
  is exactly ``{{steps.NAME.output}}`` of, or, without an ``output``, the last step in
  dependency order; none when the output is shaped (an object, an array, or text around
  the reference).
"""

from __future__ import annotations

import asyncio
import heapq
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .aio import CURRENT_LANE, Lane
from .errors import RunTimeout
from .spec import step_dependencies
from .state import Frame, RunState
from .step import StepOutcome, run_step
from .templating import render_shaped

_OUTPUT_STEP_RE = re.compile(r"^\{\{\s*steps\.([a-z][a-z0-9_]*)\.output\s*\}\}$")
# How long past the deadline to wait for a running step to notice it: its own
# provider or tool call times out at the deadline, so this only covers unwinding.
_GRACE_SECONDS = 2.0


@dataclass(frozen=True)
class Outcome:
    output: Any
    provider_ms: float


def _plan(order: list[str], deps: Mapping[str, set[str]]) -> tuple[list[str], bool]:
    """A topological order of the steps (listed order among equals), and whether it is a chain.

    Kahn's algorithm with the ready steps in a heap by listed position: linear in
    steps and references (up to a log), whatever the spec's size.
    """
    position = {name: index for index, name in enumerate(order)}
    waiting = {name: len(deps[name]) for name in order}
    dependents: dict[str, list[str]] = {name: [] for name in order}
    for name in order:
        for dep in deps[name]:
            dependents[dep].append(name)
    ready = [position[name] for name in order if not waiting[name]]
    heapq.heapify(ready)
    planned: list[str] = []
    chain = True
    # validate_spec guarantees acyclic dependencies, so every step becomes ready.
    while ready:
        chain = chain and len(ready) == 1
        name = order[heapq.heappop(ready)]
        planned.append(name)
        for dependent in dependents[name]:
            waiting[dependent] -= 1
            if not waiting[dependent]:
                heapq.heappush(ready, position[dependent])
    return planned, chain


async def _step_in_lane(frame: Frame, state: RunState, step: Mapping[str, Any], outputs: Mapping[str, str],
                        streams_output: bool) -> StepOutcome:
    lane = Lane()
    CURRENT_LANE.set(lane)  # this task's context only
    try:
        return await run_step(frame, state, step, outputs, streams_output=streams_output)
    finally:
        lane.close()


async def _wait_all(tasks: list[asyncio.Task[Any]]) -> None:
    """Wait until every task has ended, even if this task is cancelled meanwhile (they settle reservations)."""
    while tasks:
        try:
            await asyncio.wait(tasks)
            return
        except asyncio.CancelledError:
            for task in tasks:
                task.cancel()


async def _run_parallel(frame: Frame, state: RunState, steps: Mapping[str, Mapping[str, Any]], order: list[str],
                        deps: Mapping[str, set[str]], streamed: str | None) -> dict[str, StepOutcome]:
    done: dict[str, StepOutcome] = {}
    pending = list(order)
    running: dict[asyncio.Task[StepOutcome], str] = {}
    try:
        while pending or running:
            for name in [name for name in pending if deps[name] <= done.keys()]:
                pending.remove(name)
                outputs = {key: outcome.output for key, outcome in done.items()}
                task = asyncio.ensure_future(_step_in_lane(frame, state, steps[name], outputs, name == streamed))
                running[task] = name
            finished, _ = await asyncio.wait(running, timeout=max(0.0, frame.deadline - time.monotonic())
                                             + _GRACE_SECONDS, return_when=asyncio.FIRST_COMPLETED)
            if not finished:
                raise RunTimeout("the run passed its timeoutSeconds")
            for task in finished:
                done[running.pop(task)] = task.result()
        return done
    except asyncio.CancelledError:
        for task in running:
            task.cancel()
        await _wait_all(list(running))
        raise
    except BaseException:
        state.cancel.set()
        if running:
            try:
                _, late = await asyncio.wait(running, timeout=max(0.0, frame.deadline - time.monotonic())
                                             + _GRACE_SECONDS)
            except asyncio.CancelledError:
                late = set(running)
            for task in late:
                task.cancel()
            await _wait_all(list(running))
        raise
    finally:
        for task in running:
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: the first failure is the run's, these are its consequences


def _critical_provider_ms(outcomes: Mapping[str, StepOutcome], deps: Mapping[str, set[str]]) -> float:
    node: StepOutcome | None = max(outcomes.values(), key=lambda outcome: outcome.ended)
    total = 0.0
    while node is not None:
        total += node.provider_ms
        before = [outcomes[name] for name in deps[node.name]]
        node = max(before, key=lambda outcome: outcome.ended) if before else None
    return total


def output_step(spec: Mapping[str, Any], order: list[str]) -> str | None:
    """The step whose output is the run's output (see the module contract), or None."""
    if "output" not in spec:
        return order[-1] if order else None
    template = spec["output"]
    match = _OUTPUT_STEP_RE.match(template) if isinstance(template, str) else None
    return match.group(1) if match else None


async def execute(frame: Frame, state: RunState) -> Outcome:
    """Run every step of ``frame.spec`` (see the module contract)."""
    steps = {step["name"]: step for step in frame.spec["steps"]}
    deps = {name: found & steps.keys() for name, found in step_dependencies(frame.spec).items()}
    order, chain = _plan(list(steps), deps)
    streamed = output_step(frame.spec, order) if frame.top_level and state.events is not None else None
    if chain:
        outcomes: dict[str, StepOutcome] = {}
        for name in order:
            outcomes[name] = await run_step(frame, state, steps[name], {key: o.output for key, o in outcomes.items()},
                                            streams_output=name == streamed)
    else:
        outcomes = await _run_parallel(frame, state, steps, order, deps, streamed)

    if "output" in frame.spec:
        context = {"input": frame.inputs, "steps": {name: {"output": o.output} for name, o in outcomes.items()}}
        output = render_shaped(frame.spec["output"], context)
    else:
        output = outcomes[order[-1]].output
    return Outcome(output=output, provider_ms=_critical_provider_ms(outcomes, deps))
