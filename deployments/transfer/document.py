"""The export document: its JSON Schema and the checks every import runs first.

``validate_document(raw)`` is the only way to get a :class:`ValidDocument`,
and the import services accept nothing else, so no code path imports a
document that was not checked. It raises ``InvalidRequest`` (400,
``invalid_export``) with ``details.problems = [{"path", "message"}]``, each
path a JSON path into the document (``$.agents[0].revisions[1].contentHash``):

1. the ``format`` must be ``fruxon.export/v1`` (any other version is named);
2. the JSON Schema (``deployments/schemas/fruxon.export.v1.json``): every
   object refuses unknown keys, so there is no place for a secret value;
3. the same rules as the API: each revision spec passes the engine's
   validation and hashes to its ``contentHash``; dataset metrics pass
   ``validate_metrics``; integration configs pass the API's ``HttpConfig``
   (which refuses credential-looking headers); budgets pass the API's
   ``BudgetPut``; slugs and revision ids are unique; ``deployedRevisionId``
   names one of the agent's revisions in the document.

This module is input validation (it reuses the API's input serializers);
the services in this package take the ``ValidDocument`` it returns.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError as SchemaError

from agents import engine
from agents.engine.spec import key_path
from agents.limits import engine_limits
from evaluations.metrics import validate_metrics
from fruxon.errors import InvalidRequest

FORMAT = "fruxon.export/v1"
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "fruxon.export.v1.json"
MAX_PROBLEMS = 50


@cache
def schema() -> dict:
    """The shipped JSON Schema of ``fruxon.export/v1``."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


@cache
def _validator() -> Draft202012Validator:
    Draft202012Validator.check_schema(schema())
    return Draft202012Validator(schema(), format_checker=Draft202012Validator.FORMAT_CHECKER)


@dataclass(frozen=True)
class ValidDocument:
    """A checked export document. ``data`` is a private copy of it, budgets normalized
    as the API stores them (amount as a 4-decimal string, thresholds sorted); read-only."""

    data: dict

    @property
    def source_org(self) -> str:
        return self.data["sourceOrg"]

    @property
    def agents(self) -> list[dict]:
        return self.data["agents"]

    @property
    def datasets(self) -> list[dict]:
        return self.data["datasets"]

    @property
    def integrations(self) -> list[dict]:
        return self.data["integrations"]

    @property
    def secrets(self) -> list[dict]:
        return self.data["secrets"]


def json_path(parts: Iterable) -> str:
    """``["agents", 0, "slug"]`` -> ``$.agents[0].slug``."""
    path = "$"
    for part in parts:
        path = f"{path}[{part}]" if isinstance(part, int) else key_path(path, str(part))
    return path


def judge_secrets(metrics: list) -> set[str]:
    """Secrets an ``llmJudge`` metric's model references (its ``apiKey`` template, say)."""
    names: set[str] = set()
    for config in metrics if isinstance(metrics, list) else []:
        if isinstance(config, dict) and isinstance(config.get("model"), dict):
            names |= engine.referenced_secrets({"steps": [{"name": "judge", "model": config["model"]}]})
    return names


def _refuse(problems: list[dict]) -> InvalidRequest:
    shown = problems[:MAX_PROBLEMS]
    summary = "; ".join(f"{p['path']}: {p['message']}" for p in shown[:10])
    return InvalidRequest(f"Not a valid {FORMAT} document: {summary}", code="invalid_export",
                          details={"problems": shown, "format": FORMAT})


# --- 1 and 2: format and schema ----------------------------------------------------------
def _schema_problems(error: SchemaError) -> list[dict]:
    """One schema error as problems, pointing at the offending key where possible."""
    path = list(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = set(error.schema.get("properties", {}))
        return [{"path": json_path([*path, key]), "message": "unknown key"}
                for key in error.instance if key not in known]
    if error.validator in ("anyOf", "oneOf") and error.context:
        # "X or null": report why X failed, not that the value is not null.
        relevant = [e for e in error.context
                    if not (e.validator == "type" and e.validator_value == "null") and e.validator != "const"]
        if relevant:
            return [p for e in relevant for p in _schema_problems(e)]
    return [{"path": json_path(path), "message": error.message}]


def _format_problems(raw: Any) -> list[dict]:
    if not isinstance(raw, dict):
        return [{"path": "$", "message": "must be a JSON object"}]
    if "format" not in raw:
        return [{"path": "$.format", "message": f"is required (\"{FORMAT}\")"}]
    if raw["format"] != FORMAT:
        return [{"path": "$.format", "message": f"unknown format {raw['format']!r}; this server reads {FORMAT!r}"}]
    return []


# --- 3: the API's own rules ----------------------------------------------------------------
def _spec_problems(spec: dict, at: list) -> list[dict]:
    """The engine's problems, re-rooted from ``$`` (the spec) at ``at`` (its place in the document)."""
    return [{"path": json_path(at) + p.path[1:], "message": p.message}
            for p in engine.validate_spec(spec, engine_limits())]


def _serializer_problems(serializer_class, data: dict, at: list) -> tuple[list[dict], dict | None]:
    """Validate ``data`` with one of the API's input serializers: (problems at JSON paths, validated data)."""
    serializer = serializer_class(data=data)
    if serializer.is_valid():
        return [], dict(serializer.validated_data)
    problems = []

    def walk(where: list, detail) -> None:
        if isinstance(detail, dict):
            for key, sub in detail.items():
                walk(where if key in ("non_field_errors", "body") else [*where, key], sub)
        elif isinstance(detail, list) and detail and all(isinstance(d, str) for d in detail):
            problems.extend({"path": json_path(where), "message": str(d)} for d in detail)
        elif isinstance(detail, list):
            for index, sub in enumerate(detail):
                if sub:
                    walk([*where, index], sub)
        else:
            problems.append({"path": json_path(where), "message": str(detail)})

    walk(at, serializer.errors)
    return problems, None


def _duplicates(items: list[dict], key: str, at: list) -> list[dict]:
    seen: dict[str, int] = {}
    problems = []
    for index, item in enumerate(items):
        value = item[key]
        if value in seen:
            problems.append({"path": json_path([*at, index, key]),
                             "message": f"duplicate {key} {value!r} (also at index {seen[value]})"})
        seen.setdefault(value, index)
    return problems


def _agent_problems(agent: dict, at: list) -> list[dict]:
    problems = _duplicates(agent["revisions"], "id", [*at, "revisions"])
    ids = [r["id"] for r in agent["revisions"]]
    for index, revision in enumerate(agent["revisions"]):
        where = [*at, "revisions", index]
        spec_problems = _spec_problems(revision["spec"], [*where, "spec"])
        problems += spec_problems
        if not spec_problems and engine.content_hash(revision["spec"]) != revision["contentHash"]:
            problems.append({"path": json_path([*where, "contentHash"]),
                             "message": "does not match the spec (the sha256 of its canonical JSON)"})
        parent = revision.get("parentId")
        if parent in ids and ids.index(parent) >= index:
            problems.append({"path": json_path([*where, "parentId"]),
                             "message": "names a later revision; list revisions oldest first"})
    deployed = agent.get("deployedRevisionId")
    if deployed is not None and deployed not in ids:
        problems.append({"path": json_path([*at, "deployedRevisionId"]),
                         "message": f"{deployed!r} is not one of this agent's revisions in the document"})
    return problems


def _check(raw: dict) -> tuple[list[dict], dict]:
    """Problems of a schema-valid document, and its normalized copy."""
    from monitoring.api.budgets import BudgetPut
    from orgs.api.serializers import HttpConfig

    data = json.loads(json.dumps(raw))  # a private copy: normalizing never touches the caller's dict
    problems = _duplicates(data["agents"], "slug", ["agents"])
    problems += _duplicates(data["datasets"], "slug", ["datasets"])
    problems += _duplicates(data["integrations"], "slug", ["integrations"])
    for index, agent in enumerate(data["agents"]):
        problems += _agent_problems(agent, ["agents", index])
        if agent.get("budget") is not None:
            found, budget = _serializer_problems(BudgetPut, agent["budget"], ["agents", index, "budget"])
            problems += found
            if budget is not None:
                agent["budget"] = {**budget, "amountUsd": format(budget["amountUsd"], "f"),
                                   "alertThresholds": sorted(set(budget["alertThresholds"]))}
    for index, dataset in enumerate(data["datasets"]):
        problems += [{"path": f"$.datasets[{index}].{p['path']}", "message": p["message"]}
                     for p in validate_metrics(dataset["metrics"])]
    for index, integration in enumerate(data["integrations"]):
        # Checked as the API checks it, stored as written: an exported config round-trips unchanged.
        problems += _serializer_problems(HttpConfig, integration["config"], ["integrations", index, "config"])[0]
    return problems, data


def validate_document(raw: Any) -> ValidDocument:
    """Check ``raw`` (parsed JSON) as described in the module docstring; 400 ``invalid_export`` otherwise."""
    problems = _format_problems(raw)
    if not problems:
        errors = sorted(_validator().iter_errors(raw), key=lambda e: [str(p) for p in e.absolute_path])
        problems = [p for error in errors for p in _schema_problems(error)]
    if problems:
        raise _refuse(problems)
    problems, data = _check(raw)
    if problems:
        raise _refuse(problems)
    return ValidDocument(data)


def parse_json(text: str | bytes) -> Any:
    """Parse an uploaded document; 400 ``invalid_export`` when it is not JSON."""
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _refuse([{"path": "$", "message": f"not JSON: {exc}"}]) from None
