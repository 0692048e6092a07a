"""Size limits of a spec and of one run.

The engine enforces them; the host chooses them (Fruxon's Django layer passes
its ``FRUXON_MAX_*`` settings; see ``agents.limits``). The defaults here apply
when the host passes nothing.

* Spec limits (``max_steps``, ``max_tools_per_step``, ``max_subagents_per_step``,
  ``max_spec_bytes``) are checked by :func:`agents.engine.spec.validate_spec`
  when it is given a :class:`Limits` (revision creation and import do): a spec
  over one is invalid, and the problem names the limit and its value.
  :func:`agents.engine.run` does not re-apply them to a stored revision, so
  lowering a limit never breaks a revision already created; the run limits
  bound what such a revision can do.
* Run limits (``max_model_calls``, ``max_spans``) hold across a run and all its
  sub-runs: the model call or span past the limit is not made; the run ends
  with status ``error`` and the code ``max_model_calls_per_run`` or
  ``max_spans_per_run``, with everything recorded up to that point.
* :data:`MAX_SPEC_DEPTH` (nesting of the spec's JSON) is not a policy but what
  keeps the engine's recursive walks (templates, hashing) safe: always checked.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MAX_SPEC_DEPTH = 64
# JSON from outside a run's control (a provider's answer, an integration's result, a model's tool
# arguments) is parsed no deeper than this: the engine's walks over it (redaction, recording) recurse.
MAX_JSON_DEPTH = 64


@dataclass(frozen=True)
class Limits:
    max_steps: int = 50
    max_tools_per_step: int = 64
    max_subagents_per_step: int = 16
    max_spec_bytes: int = 512 * 1024
    max_model_calls: int = 200
    max_spans: int = 2000


DEFAULT_LIMITS = Limits()


def json_depth(value: Any, stop_after: int) -> int:
    """How deep ``value`` nests objects and arrays (a scalar is 0), counting no further than ``stop_after + 1``."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if not isinstance(item, (Mapping, list)):
            continue
        deepest = max(deepest, depth)
        if deepest > stop_after:
            break
        stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, Mapping) else item))
    return deepest


def loads_bounded(text: str | bytes, **kwargs: Any) -> Any:
    """``json.loads`` for JSON from outside: ``ValueError`` (as for any malformed JSON) when it nests deeper
    than :data:`MAX_JSON_DEPTH`, or too deep for Python's decoder (which raises ``RecursionError``)."""
    try:
        value = json.loads(text, **kwargs)
    except RecursionError:
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    opening = (b"[", b"{") if isinstance(text, bytes) else ("[", "{")
    # Only a document with more brackets than the limit can be that deep: only such a one is measured.
    if sum(text.count(bracket) for bracket in opening) > MAX_JSON_DEPTH and json_depth(value, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return value
