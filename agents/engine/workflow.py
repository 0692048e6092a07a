"""Step scheduling for one (sub-)run: dependency order, parallel where independent.

Contract of :func:`execute`:

* a step starts once every step it references (``{{steps.X.output}}``) is done;
* when the dependencies allow only one step at a time (a chain, the common case)
  steps run inline on the calling thread; otherwise ready steps run in a thread
  pool as soon as they are ready;
* the first failure cancels the rest: running steps stop at their next call out,
  and ``execute`` waits for them (bounded by the deadline) so that every budget
  reservation they made is settled before the run is reported;
* the result is the rendered ``output`` template (default: the output of the
  step that comes last in dependency order, listed order breaking ties) and
  the provider time along the critical path: the chain of steps, each the
  last-finishing dependency of the next, that ends with the last step to finish.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from .errors import RunTimeout
from .spec import step_dependencies
from .state import Frame, RunState
from .step import StepOutcome, run_step
from .templating import render_shaped

MAX_PARALLEL_STEPS = 8
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


def _run_parallel(frame: Frame, state: RunState, steps: Mapping[str, Mapping[str, Any]], order: list[str],
                  deps: Mapping[str, set[str]]) -> dict[str, StepOutcome]:
    done: dict[str, StepOutcome] = {}
    pending = list(order)
    running: dict[Future[StepOutcome], str] = {}
    pool = ThreadPoolExecutor(max_workers=min(len(order), MAX_PARALLEL_STEPS), thread_name_prefix="fruxon-step")
    try:
        while pending or running:
            for name in [name for name in pending if deps[name] <= done.keys()]:
                pending.remove(name)
                outputs = {key: outcome.output for key, outcome in done.items()}
                running[pool.submit(run_step, frame, state, steps[name], outputs)] = name
            finished, _ = wait(running, timeout=max(0.0, frame.deadline - time.monotonic()) + _GRACE_SECONDS,
                               return_when=FIRST_COMPLETED)
            if not finished:
                raise RunTimeout("the run passed its timeoutSeconds")
            for future in finished:
                done[running.pop(future)] = future.result()
        return done
    except BaseException:
        state.cancel.set()
        wait(running, timeout=max(0.0, frame.deadline - time.monotonic()) + _GRACE_SECONDS)
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _critical_provider_ms(outcomes: Mapping[str, StepOutcome], deps: Mapping[str, set[str]]) -> float:
    node: StepOutcome | None = max(outcomes.values(), key=lambda outcome: outcome.ended)
    total = 0.0
    while node is not None:
        total += node.provider_ms
        before = [outcomes[name] for name in deps[node.name]]
        node = max(before, key=lambda outcome: outcome.ended) if before else None
    return total


def execute(frame: Frame, state: RunState) -> Outcome:
    """Run every step of ``frame.spec`` (see the module contract)."""
    steps = {step["name"]: step for step in frame.spec["steps"]}
    deps = {name: found & steps.keys() for name, found in step_dependencies(frame.spec).items()}
    order, chain = _plan(list(steps), deps)
    if chain:
        outcomes: dict[str, StepOutcome] = {}
        for name in order:
            outcomes[name] = run_step(frame, state, steps[name], {key: o.output for key, o in outcomes.items()})
    else:
        outcomes = _run_parallel(frame, state, steps, order, deps)

    if "output" in frame.spec:
        context = {"input": frame.inputs, "steps": {name: {"output": o.output} for name, o in outcomes.items()}}
        output = render_shaped(frame.spec["output"], context)
    else:
        output = outcomes[order[-1]].output
    return Outcome(output=output, provider_ms=_critical_provider_ms(outcomes, deps))
