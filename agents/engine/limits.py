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

from dataclasses import dataclass

MAX_SPEC_DEPTH = 64


@dataclass(frozen=True)
class Limits:
    max_steps: int = 50
    max_tools_per_step: int = 64
    max_subagents_per_step: int = 16
    max_spec_bytes: int = 512 * 1024
    max_model_calls: int = 200
    max_spans: int = 2000


DEFAULT_LIMITS = Limits()
