"""Validation of a dataset's metric configurations.

:func:`validate_metrics` never raises on any JSON value. It returns every
problem found as ``{"path": "metrics[1].pattern", "message": "..."}`` (an empty
list means every metric can be evaluated): the value must be a list of
objects, each with a known ``type``, its required parameters, values of the
right kind, no unknown keys, and a name (``name``, or the type by default)
that no other metric of the list has.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from typing import Any

from .matching import LIST_MODES
from .paths import PathSyntaxError, parse_field, parse_path

METRIC_TYPES = ("exact", "contains", "regex", "jsonMatch", "numeric", "llmJudge", "costCeiling", "latencyCeiling")
CEILING_TYPES = frozenset({"costCeiling", "latencyCeiling"})
JSON_MODES = ("subset", "path")
REGEX_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE}
MAX_NAME_LENGTH = 100
DEFAULT_THRESHOLD = 0.7

_COMMON = frozenset({"type", "name", "field"})
ALLOWED_KEYS = {
    "exact": _COMMON | {"caseSensitive", "trim"},
    "contains": _COMMON | {"values", "caseSensitive"},
    "regex": _COMMON | {"pattern", "flags"},
    "jsonMatch": _COMMON | {"mode", "path", "listMode"},
    "numeric": _COMMON | {"path", "tolerance", "relativeTolerance"},
    "llmJudge": _COMMON | {"rubric", "model", "threshold"},
    "costCeiling": frozenset({"type", "name", "maxUsd"}),
    "latencyCeiling": frozenset({"type", "name", "maxMs"}),
}
_IDENTIFIER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

Problem = tuple[str, str]


def metric_name(config: Any) -> str:
    """The metric's ``name``, else its ``type``, else ``"metric"`` (for unreadable configs)."""
    if isinstance(config, dict):
        for key in ("name", "type"):
            if isinstance(config.get(key), str) and config[key]:
                return config[key]
    return "metric"


def regex_flags(flags: str) -> int:
    """``re`` flags for a validated ``flags`` string such as ``"im"``."""
    value = 0
    for letter in flags:
        value |= REGEX_FLAGS[letter]
    return value


def key_path(path: str, key: str) -> str:
    """``metrics[0]`` + ``pattern`` -> ``metrics[0].pattern``; an empty ``path`` gives the key alone."""
    if not _IDENTIFIER_RE.match(key):
        return f"{path}[{json.dumps(key, ensure_ascii=False)}]"
    return f"{path}.{key}" if path else key


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def config_problems(config: Any, path: str) -> list[Problem]:
    """Problems of one metric configuration, as ``(path, message)`` below ``path``."""
    if not isinstance(config, dict):
        return [(path or "metric", "must be an object")]
    kind = config.get("type")
    if "type" not in config:
        return [(key_path(path, "type"), "is required")]
    if kind not in METRIC_TYPES:
        return [(key_path(path, "type"), f"must be one of {', '.join(METRIC_TYPES)}")]
    problems = [(key_path(path, str(key)), f"unknown key for the {kind} metric; "
                                            f"its keys are {', '.join(sorted(ALLOWED_KEYS[kind]))}")
                for key in config if key not in ALLOWED_KEYS[kind]]
    at = lambda key: key_path(path, key)  # noqa: E731 - a local shorthand
    if "name" in config:
        name = config["name"]
        if not isinstance(name, str) or not name.strip():
            problems.append((at("name"), "must be a non-empty string"))
        elif len(name) > MAX_NAME_LENGTH:
            problems.append((at("name"), f"must be at most {MAX_NAME_LENGTH} characters"))
    if "field" in config and kind not in CEILING_TYPES:
        try:
            parse_field(config["field"])
        except PathSyntaxError as exc:
            problems.append((at("field"), str(exc)))
    for key in ("caseSensitive", "trim"):
        if key in config and not isinstance(config[key], bool):
            problems.append((at(key), "must be true or false"))
    problems.extend(_CHECKS[kind](config, at))
    return problems


def _check_exact(config: dict, at) -> Iterator[Problem]:
    return iter(())


def _check_contains(config: dict, at) -> Iterator[Problem]:
    if "values" not in config:
        return
    values = config["values"]
    if not isinstance(values, list) or not values:
        yield at("values"), "must be a non-empty list of strings"
        return
    for index, value in enumerate(values):
        if not isinstance(value, str) and not _number(value):
            yield f"{at('values')}[{index}]", "must be a string or a number"


def _check_regex(config: dict, at) -> Iterator[Problem]:
    flags = config.get("flags", "")
    flags_ok = isinstance(flags, str) and all(letter in REGEX_FLAGS for letter in flags)
    if not flags_ok:
        yield at("flags"), f"must be a string of the letters {', '.join(REGEX_FLAGS)} (e.g. \"i\")"
    if "pattern" not in config:
        return
    pattern = config["pattern"]
    if not isinstance(pattern, str) or not pattern:
        yield at("pattern"), "must be a non-empty string"
        return
    try:
        re.compile(pattern, regex_flags(flags) if flags_ok else 0)
    except re.error as exc:
        yield at("pattern"), f"is not a valid regular expression: {exc}"


def _check_path(config: dict, at) -> Iterator[Problem]:
    if "path" in config:
        try:
            parse_path(config["path"])
        except PathSyntaxError as exc:
            yield at("path"), str(exc)


def _check_json_match(config: dict, at) -> Iterator[Problem]:
    mode = config.get("mode", "subset")
    if mode not in JSON_MODES:
        yield at("mode"), f"must be one of {', '.join(JSON_MODES)}"
    if config.get("listMode", "exact") not in LIST_MODES:
        yield at("listMode"), f"must be one of {', '.join(LIST_MODES)}"
    if mode == "path" and "path" not in config:
        yield at("path"), 'is required with "mode": "path"'
    if mode == "subset" and "path" in config:
        yield at("path"), 'is only used with "mode": "path" (use "field" to compare a part of the output)'
    yield from _check_path(config, at)


def _check_numeric(config: dict, at) -> Iterator[Problem]:
    for key in ("tolerance", "relativeTolerance"):
        if key in config and (not _number(config[key]) or config[key] < 0):
            yield at(key), "must be a number >= 0"
    yield from _check_path(config, at)


def _check_llm_judge(config: dict, at) -> Iterator[Problem]:
    rubric = config.get("rubric")
    if "rubric" not in config:
        yield at("rubric"), "is required: what a good output looks like"
    elif not isinstance(rubric, str) or not rubric.strip():
        yield at("rubric"), "must be a non-empty string"
    if "model" not in config:
        yield at("model"), 'is required: an engine model spec, e.g. {"provider": "openai", "name": "gpt-4o-mini"}'
    else:
        yield from _model_problems(config["model"], at("model"))
    if "threshold" in config and (not _number(config["threshold"]) or not 0 <= config["threshold"] <= 1):
        yield at("threshold"), "must be a number between 0 and 1"


def _model_problems(model: Any, path: str) -> Iterator[Problem]:
    """The engine's own model checks, re-rooted at ``path``."""
    from agents.engine import validate_spec

    root = "$.steps[0].model"
    spec = {"steps": [{"name": "judge", "prompt": "judge", "model": model}]}
    for problem in validate_spec(spec):
        if problem.path == root or problem.path.startswith((root + ".", root + "[")):
            yield path + problem.path[len(root):], problem.message


def _ceiling(key: str, unit: str):
    def check(config: dict, at) -> Iterator[Problem]:
        if key not in config:
            yield at(key), f"is required: the ceiling in {unit}"
        elif not _number(config[key]) or config[key] <= 0:
            yield at(key), "must be a positive number"
    return check


_CHECKS = {
    "exact": _check_exact,
    "contains": _check_contains,
    "regex": _check_regex,
    "jsonMatch": _check_json_match,
    "numeric": _check_numeric,
    "llmJudge": _check_llm_judge,
    "costCeiling": _ceiling("maxUsd", "USD"),
    "latencyCeiling": _ceiling("maxMs", "milliseconds"),
}


def validate_metrics(configs: Any) -> list[dict]:
    """Every problem of a dataset's ``metrics`` list, as ``[{"path", "message"}]``; ``[]`` when valid."""
    if not isinstance(configs, list):
        return [{"path": "metrics", "message": "must be a list of metric objects"}]
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for index, config in enumerate(configs):
        path = f"metrics[{index}]"
        problems.extend(config_problems(config, path))
        if not isinstance(config, dict) or config.get("type") not in METRIC_TYPES:
            continue
        name = metric_name(config)
        if name in seen:
            problems.append((f"{path}.name", f"duplicate metric name {name!r} (also metrics[{seen[name]}]); "
                                             'give each metric a distinct "name"'))
        else:
            seen[name] = index
    return [{"path": where, "message": message} for where, message in problems]
