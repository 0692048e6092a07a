"""Evaluation of one metric configuration on one observation.

Shared rules, in order:

1. an invalid configuration (see :mod:`.validation`) scores 0 with a reason
   naming its problems; nothing raises for bad configs or odd outputs;
2. ``costCeiling`` and ``latencyCeiling`` judge the run's cost and latency
   whatever its status;
3. every other metric scores 0 with "run ended with status X" when the
   run's status is not ``ok``;
4. ``field`` narrows the output before comparing (:mod:`.paths`); a text
   output is parsed as JSON first, and a missing field scores 0;
5. the raw output, when it is text, is parsed as JSON where the metric needs
   JSON (jsonMatch, exact against a non-text expected value, numeric with a
   ``path``); a value selected by ``field`` is already JSON and is not parsed
   again. numeric reads a numeric text (``"3.14"``) as its number.

Scores are 1/0 except ``contains`` (fraction of the values found), jsonMatch
subset mode (fraction of expected leaves matched) and ``llmJudge`` (the
judge's score); ``passed`` is strict in every case.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from .base import Judge, Observation, Score
from .judge import NO_REASON
from .matching import first_difference, subset_match
from .paths import PathMissing, format_path, parse_field, parse_path, select
from .validation import CEILING_TYPES, DEFAULT_THRESHOLD, config_problems, metric_name, regex_flags
from .values import NotJson, format_decimal, parse_json_text, show, to_decimal, to_text

Outcome = tuple[float, bool, str]


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


class _Unscorable(Exception):
    """The observation cannot be compared; the message is the Score's reason."""


class _Subject:
    """The value a metric compares: the raw output, or the part ``field`` selected."""

    def __init__(self, value: Any, raw: bool):
        self.value = value
        self.raw = raw

    def json(self) -> Any:
        """The value as JSON: raw text output is parsed, anything else is taken as it is."""
        if self.raw and isinstance(self.value, str):
            try:
                return parse_json_text(self.value)
            except NotJson:
                raise _Unscorable(f"the output is not JSON: {show(self.value)}") from None
        return self.value


def _subject(config: dict, output: Any) -> _Subject:
    field = config.get("field")
    if field is None:
        return _Subject(output, raw=True)
    segments = parse_field(field)
    if not segments:
        return _Subject(output, raw=True)
    document = _Subject(output, raw=True)
    try:
        parsed = document.json()
    except _Unscorable:
        raise _Unscorable(f"the output is not JSON, so field {field!r} cannot be selected: {show(output)}") from None
    try:
        return _Subject(select(parsed, segments), raw=False)
    except PathMissing as exc:
        raise _Unscorable(f"field {field!r} is not in the output: {exc}") from None


def _exact(config: dict, subject: _Subject, expected: Any) -> Outcome:
    case_sensitive, trim = config.get("caseSensitive", True), config.get("trim", True)

    def normalize(text: str) -> str:
        text = text.strip() if trim else text
        return text if case_sensitive else text.casefold()

    if isinstance(expected, str):
        actual = normalize(to_text(subject.value))
        wanted = normalize(expected)
        if actual == wanted:
            return 1.0, True, "the output equals the expected text"
        at = next((i for i, (a, b) in enumerate(zip(actual, wanted)) if a != b), min(len(actual), len(wanted)))
        return 0.0, False, (f"the output {show(to_text(subject.value))} differs from the expected "
                            f"{show(expected)} (first difference at character {at + 1})")
    difference = first_difference(expected, subject.json(), normalize=normalize)
    if difference is None:
        return 1.0, True, "the output equals the expected value"
    return 0.0, False, f"the output differs from the expected value: {difference}"


def _contains(config: dict, subject: _Subject, expected: Any) -> Outcome:
    values = config["values"] if "values" in config else expected
    if isinstance(values, (str, int, float)) and not isinstance(values, bool):
        values = [values]
    if not isinstance(values, list) or not values or not all(
            isinstance(v, str) or to_decimal(v) is not None for v in values):
        return 0.0, False, ('contains needs "values" in the metric or an expected string (or list of strings); '
                            f"got {show(values)}")
    needles = [v if isinstance(v, str) else to_text(v) for v in values]
    text = to_text(subject.value)
    if not config.get("caseSensitive", False):
        text, folded = text.casefold(), [n.casefold() for n in needles]
    else:
        folded = needles
    missing = [needle for needle, probe in zip(needles, folded) if probe not in text]
    found = len(needles) - len(missing)
    if not missing:
        return 1.0, True, f"the output contains all {_count(len(needles), 'expected value')}"
    listed = ", ".join(show(m, 40) for m in missing[:3]) + (", …" if len(missing) > 3 else "")
    return found / len(needles), False, f"the output lacks {len(missing)} of {_count(len(needles), 'value')}: {listed}"


def _regex(config: dict, subject: _Subject, expected: Any) -> Outcome:
    pattern = config.get("pattern", expected)
    if not isinstance(pattern, str) or not pattern:
        return 0.0, False, 'regex needs a "pattern" in the metric or an expected string to use as the pattern'
    try:
        compiled = re.compile(pattern, regex_flags(config.get("flags", "")))
    except re.error as exc:
        return 0.0, False, f"the pattern /{pattern}/ is not a valid regular expression: {exc}"
    text = to_text(subject.value)
    match = compiled.search(text)
    if match:
        return 1.0, True, f"the pattern /{pattern}/ matched {show(match.group(0))}"
    return 0.0, False, f"the pattern /{pattern}/ did not match the output {show(text)}"


def _json_match(config: dict, subject: _Subject, expected: Any) -> Outcome:
    actual = subject.json()
    outcome = _json_compare(config, actual, expected)
    if not outcome[1] and isinstance(expected, str):  # an expected object or list saved as JSON text
        try:
            parsed = parse_json_text(expected)
        except NotJson:
            return outcome
        if isinstance(parsed, (dict, list)):
            return _json_compare(config, actual, parsed)
    return outcome


def _json_compare(config: dict, actual: Any, expected: Any) -> Outcome:
    list_mode = config.get("listMode", "exact")
    if config.get("mode", "subset") == "subset":
        result = subset_match(expected, actual, list_mode=list_mode)
        if result.passed:
            return 1.0, True, f"the output matches all {_count(result.total, 'expected value')}"
        of = _count(result.total, "expected value")
        return result.score, False, f"the output matches {result.matched} of {of}; first mismatch: {result.mismatch}"
    segments = parse_path(config["path"])
    where = format_path(segments)
    try:
        selected = select(actual, segments)
    except PathMissing as exc:
        return 0.0, False, f"the path {where} is not in the output: {exc}"
    if isinstance(expected, dict) and isinstance(selected, dict):
        result = subset_match(expected, selected, list_mode=list_mode, path=where)
        difference = result.mismatch
    else:
        difference = first_difference(expected, selected, path=where)
    if difference is None:
        return 1.0, True, f"the value at {where} matches the expected value"
    return 0.0, False, f"the value at {where} does not match: {difference}"


def _numeric(config: dict, subject: _Subject, expected: Any) -> Outcome:
    value = subject.value
    if "path" in config:
        segments = parse_path(config["path"])
        try:
            value = select(subject.json(), segments)
        except PathMissing as exc:
            return 0.0, False, f"the path {format_path(segments)} is not in the output: {exc}"
    actual, wanted = to_decimal(value), to_decimal(expected)
    if actual is None:
        return 0.0, False, f"the output {show(value)} is not a number"
    if wanted is None:
        return 0.0, False, f"the expected value {show(expected)} is not a number"
    error = abs(actual - wanted)
    allowed = max(to_decimal(config.get("tolerance", 0)),
                  to_decimal(config.get("relativeTolerance", 0)) * abs(wanted))
    shown = f"{format_decimal(actual)} vs expected {format_decimal(wanted)}"
    if error <= allowed:
        return 1.0, True, f"{shown}: within the allowed difference of {format_decimal(allowed)}"
    return 0.0, False, f"{shown}: off by {format_decimal(error)}, more than the allowed {format_decimal(allowed)}"


def _judge_result(result: Any) -> tuple[float, str]:
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        return 0.0, f"the judge returned {show(result)}, not (score, reason)"
    raw, reason = result
    reason = reason.strip() if isinstance(reason, str) and reason.strip() else NO_REASON
    score = to_decimal(raw) if not isinstance(raw, str) else None
    if score is None or not 0 <= score <= 1:
        return 0.0, f"the judge's score {show(raw)} is not a number within 0..1; judge said: {reason}"
    return float(score), reason


def _llm_judge(config: dict, subject: _Subject, expected: Any, observation: Observation,
               judge: Judge | None) -> Outcome:
    if judge is None:
        return 0.0, False, "no judge configured"
    judged = observation if subject.raw else replace(observation, output=subject.value)
    try:
        score, reason = _judge_result(judge(config, judged, expected))
    except Exception as exc:  # a failing judge fails this metric, not the whole evaluation
        return 0.0, False, f"the judge failed: {type(exc).__name__}: {exc}"
    threshold = config.get("threshold", DEFAULT_THRESHOLD)
    verdict = "meets" if score >= threshold else "is below"
    return score, score >= threshold, f"judge score {score:g} {verdict} the threshold {threshold:g}: {reason}"


def _cost_ceiling(config: dict, observation: Observation) -> Outcome:
    cost, ceiling = to_decimal(observation.cost_usd), to_decimal(config["maxUsd"])
    if cost is None:
        return 0.0, False, f"the run's cost {show(observation.cost_usd)} is unknown"
    if cost <= ceiling:
        return 1.0, True, f"cost ${format_decimal(cost)} is within the ${format_decimal(ceiling)} ceiling"
    return 0.0, False, f"cost ${format_decimal(cost)} exceeds the ${format_decimal(ceiling)} ceiling"


def _latency_ceiling(config: dict, observation: Observation) -> Outcome:
    latency, ceiling = to_decimal(observation.latency_ms), to_decimal(config["maxMs"])
    if latency is None:
        return 0.0, False, f"the run's latency {show(observation.latency_ms)} is unknown"
    if latency <= ceiling:
        return 1.0, True, f"latency {format_decimal(latency)} ms is within the {format_decimal(ceiling)} ms ceiling"
    return 0.0, False, f"latency {format_decimal(latency)} ms exceeds the {format_decimal(ceiling)} ms ceiling"


_OUTPUT_SCORERS: dict[str, Callable[[dict, _Subject, Any], Outcome]] = {
    "exact": _exact,
    "contains": _contains,
    "regex": _regex,
    "jsonMatch": _json_match,
    "numeric": _numeric,
}
_RUN_SCORERS: dict[str, Callable[[dict, Observation], Outcome]] = {
    "costCeiling": _cost_ceiling,
    "latencyCeiling": _latency_ceiling,
}


def _outcome(config: dict, observation: Observation, expected: Any, judge: Judge | None) -> Outcome:
    problems = config_problems(config, "")
    if problems:
        return 0.0, False, "invalid metric configuration: " + "; ".join(f"{p}: {m}" for p, m in problems)
    kind = config["type"]
    if kind in CEILING_TYPES:
        return _RUN_SCORERS[kind](config, observation)
    if observation.status != "ok":
        return 0.0, False, f"run ended with status {observation.status}"
    try:
        subject = _subject(config, observation.output)
        if kind == "llmJudge":
            return _llm_judge(config, subject, expected, observation, judge)
        return _OUTPUT_SCORERS[kind](config, subject, expected)
    except _Unscorable as exc:
        return 0.0, False, str(exc)


def evaluate(config: dict, observation: Observation, expected: Any, *, judge: Judge | None = None) -> Score:
    """Score ``observation`` with one metric ``config`` against the case's ``expected`` value.

    Never raises for a bad config, an odd output or a failing judge: those
    score 0 with a reason. ``judge`` is called only for llmJudge metrics on an
    ``ok`` run, with the observation's output narrowed to ``field`` if one is set.
    """
    score, passed, reason = _outcome(config, observation, expected, judge)
    return Score(metric=metric_name(config), score=float(score), passed=bool(passed), reason=reason)


def evaluate_all(configs: list, observation: Observation, expected: Any, *, judge: Judge | None = None) -> list[Score]:
    """:func:`evaluate` for each config, in order."""
    return [evaluate(config, observation, expected, judge=judge) for config in configs]
