"""Evaluation metrics: pure Python (no Django, no ORM), one case at a time.

A dataset stores its metrics as JSON configs, each
``{"type": ..., "name": optional, "field": optional, ...params}``:

* ``exact`` - the output equals ``expected``. Text compares as text (options
  ``caseSensitive``, default true, and ``trim``, default true; a non-text output
  is rendered as JSON); any other expected value compares structurally with the
  output parsed as JSON (numbers numerically, ``1 == 1.0``; a boolean is not a
  number).
* ``contains`` - every one of ``values`` (config), or of ``expected`` (a string or
  a list of strings), appears in the output text; ``caseSensitive`` defaults to
  false. Score: the fraction found.
* ``regex`` - ``pattern`` (config, else ``expected``) matches somewhere
  (``re.search``); ``flags`` letters ``i``, ``m``, ``s``, ``x``.
* ``jsonMatch`` - the output must be JSON (a value, or text that parses).
  ``mode: "subset"`` (default): ``expected`` is a subset of the output (see
  :mod:`.matching`; ``listMode`` ``exact`` or ``contains``); score is the
  fraction of expected leaves matched; an expected text holding a JSON object
  or list that does not match as text is compared as that object or list. ``mode: "path"``: the value at ``path``
  (``$.order.items[0].sku``) must equal ``expected`` (or contain it as a subset
  when both are objects); score 0 or 1.
* ``numeric`` - the output (or the value at ``path``) read as a number is within
  ``max(tolerance, relativeTolerance * |expected|)`` of ``expected`` (both default
  0); score 0 or 1.
* ``llmJudge`` - ``judge(config, observation, expected) -> (score, reason)`` grades
  the output against ``rubric`` with ``model`` (an engine model spec);
  passed when score >= ``threshold`` (default 0.7). :func:`local_judge_prompt`
  and :func:`parse_judge_reply` are the judge's prompt and reply reader.
* ``costCeiling`` (``maxUsd``) and ``latencyCeiling`` (``maxMs``) - the run's cost
  and latency stay at or under the ceiling, whatever the run's status.

Any other metric on a run whose status is not ``ok`` scores 0 with "run ended
with status X". ``field`` narrows the output first (:mod:`.paths`): ``answer``,
``order.items.0.sku``; ``output`` is the whole output. :func:`validate_metrics`
checks configs before a dataset stores them.
"""

from .base import RUN_STATUSES, Judge, Observation, Score
from .judge import local_judge_prompt, parse_judge_reply
from .matching import MatchResult, first_difference, subset_match
from .scorers import evaluate, evaluate_all
from .validation import METRIC_TYPES, metric_name, validate_metrics

__all__ = [
    "METRIC_TYPES",
    "RUN_STATUSES",
    "Judge",
    "MatchResult",
    "Observation",
    "Score",
    "evaluate",
    "evaluate_all",
    "first_difference",
    "local_judge_prompt",
    "metric_name",
    "parse_judge_reply",
    "subset_match",
    "validate_metrics",
]
