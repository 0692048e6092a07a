"""The revision spec: validation, canonical form, content hash, and reference helpers.

A spec is JSON (see DESIGN.md, "Engine")::

    {"inputs": {NAME: {"type", "required", "description", "default"}},
     "steps": [{"name", "model", "systemPrompt", "prompt", "tools", "subAgents",
                "maxToolCalls", "description"}, ...],
     "output": "template" | {...} | [...],
     "timeoutSeconds": 60,
     "description": "..."}

:func:`validate_spec` never raises on any JSON value; it returns every problem
found, each with a JSON path (``$.steps[1].model.provider``) and a message.
An empty list means the engine can run the spec.

Templates live in ``model.apiKey`` and ``model.headers.*`` (roots ``input``,
``steps``, ``secret``: the credential positions, the only ones a secret may
take), in ``systemPrompt``, ``prompt`` and ``model.baseUrl`` (roots ``input``,
``steps``: a secret never goes into what the model reads or into a URL), in
``fruxon-local`` script replies (roots ``input``, ``steps``, ``prompt``) and in
``output`` (roots ``input``, ``steps``: a secret may never reach the caller).
fruxon-local script ``chunks`` pieces are templates like its replies.
Which hosts a secret may reach is checked outside the spec (see
:mod:`agents.engine.destinations`).
A step that references ``{{steps.X.output}}`` depends on step X; the
dependencies must form no cycle.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from .inputs import INPUT_TYPES, type_matches
from .limits import MAX_SPEC_DEPTH, Limits, json_depth
from .templating import iter_references

PROVIDERS = ("openai", "fruxon-local")
DEFAULT_TIMEOUT_SECONDS = 60
MAX_TIMEOUT_SECONDS = 3600
DEFAULT_MAX_TOOL_CALLS = 8
MAX_TOOL_CALLS_LIMIT = 100
DEFAULT_MAX_TOKENS = 1024
SUBAGENT_TOOL_PREFIX = "agent__"
# OpenAI function names are limited to 64 characters.
_MAX_FUNCTION_NAME = 64
LOCAL_ERRORS = ("provider_error", "provider_timeout")

STEP_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
INPUT_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
SLUG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$")
TOOL_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
SECRET_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
REVISION_ID_RE = re.compile(r"^rev_[A-Za-z0-9]{1,64}$")
_IDENTIFIER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Credentials never live in a revision (DESIGN rule 7): a model's apiKey is a secret reference,
# and a credential-looking header's value must take its credential from one.
SECRET_ONLY_RE = re.compile(r"^\s*\{\{\s*secret\.[A-Za-z_][A-Za-z0-9_]*\s*\}\}\s*$")
SECRET_REFERENCE_RE = re.compile(r"\{\{\s*secret\.[A-Za-z_][A-Za-z0-9_]*\s*\}\}")
CREDENTIAL_HEADER_RE = re.compile(r"authorization|api[-_]?key|token|cookie|secret|password", re.I)

TOP_KEYS = {"inputs", "steps", "output", "timeoutSeconds", "description"}
INPUT_KEYS = {"type", "required", "description", "default"}
STEP_KEYS = {"name", "model", "systemPrompt", "prompt", "tools", "subAgents", "maxToolCalls", "description"}
MODEL_KEYS = {
    "openai": {"provider", "name", "baseUrl", "apiKey", "headers", "temperature", "maxTokens"},
    "fruxon-local": {"provider", "name", "temperature", "maxTokens", "script", "latencyMs", "chunks",
                     "chunkDelayMs"},
}
TOOL_KEYS = {"name", "integration", "description", "parameters"}
SUBAGENT_KEYS = {"agent", "revisionId", "description"}
SCRIPT_KEYS = {"reply", "toolCalls", "usage", "latencyMs", "error", "chunks", "chunkDelayMs"}
# fruxon-local streaming (agents.engine.providers.local): pieces of a reply, or how many to cut it into.
MAX_SCRIPT_CHUNKS = 100_000
SCRIPT_TOOL_CALL_KEYS = {"name", "arguments"}
SCRIPT_USAGE_KEYS = {"inputTokens", "outputTokens", "cachedInputTokens", "reasoningTokens"}

STEP_ROOTS = frozenset({"input", "steps", "secret"})  # credential positions: model apiKey and headers
PROMPT_ROOTS = frozenset({"input", "steps"})  # prompts and the model's baseUrl
SCRIPT_ROOTS = frozenset({"input", "steps", "prompt"})
OUTPUT_ROOTS = frozenset({"input", "steps"})


@dataclass(frozen=True)
class SpecProblem:
    """One validation problem: ``path`` is a JSON path into the spec."""

    path: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}


class SubAgentRef(NamedTuple):
    agent: str
    revision_id: str | None


def key_path(path: str, key: str) -> str:
    """``$.a`` + ``b`` -> ``$.a.b``; keys that are not identifiers use ``["..."]``."""
    if _IDENTIFIER_RE.match(key):
        return f"{path}.{key}"
    return f"{path}[{json.dumps(key, ensure_ascii=False)}]"


def canonical_json(spec: Any) -> str:
    """Sorted keys, no whitespace, UTF-8 text kept as is. NaN/Infinity are refused (not JSON)."""
    return json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def content_hash(spec: Any) -> str:
    """sha256 hex digest of :func:`canonical_json`: equal specs hash equal in any org."""
    return hashlib.sha256(canonical_json(spec).encode("utf-8")).hexdigest()


# --- template locations, shared by validation and the reference helpers ---------


def step_templates(step: Any, path: str) -> Iterator[tuple[str, str, frozenset[str]]]:
    """Yield ``(path, template, allowed_roots)`` for every template string of a step.

    Tolerates malformed steps (skips what is not a string), so helpers can run on
    anything.
    """
    if not isinstance(step, Mapping):
        return
    for key in ("systemPrompt", "prompt"):
        if isinstance(step.get(key), str):
            yield key_path(path, key), step[key], PROMPT_ROOTS
    model = step.get("model")
    if not isinstance(model, Mapping):
        return
    model_path = key_path(path, "model")
    for key, roots in (("baseUrl", PROMPT_ROOTS), ("apiKey", STEP_ROOTS)):
        if isinstance(model.get(key), str):
            yield key_path(model_path, key), model[key], roots
    headers = model.get("headers")
    if isinstance(headers, Mapping):
        for name, value in headers.items():
            if isinstance(value, str):
                yield key_path(key_path(model_path, "headers"), str(name)), value, STEP_ROOTS
    script = model.get("script")
    if isinstance(script, list):
        for index, entry in enumerate(script):
            if isinstance(entry, Mapping) and isinstance(entry.get("reply"), str):
                yield f"{model_path}.script[{index}].reply", entry["reply"], SCRIPT_ROOTS
            chunks = entry.get("chunks") if isinstance(entry, Mapping) else None
            if isinstance(chunks, list):
                for position, piece in enumerate(chunks):
                    if isinstance(piece, str):
                        yield f"{model_path}.script[{index}].chunks[{position}]", piece, SCRIPT_ROOTS


def output_templates(output: Any, path: str = "$.output") -> Iterator[tuple[str, str]]:
    """Yield ``(path, template)`` for every string inside the output template, in document order."""
    stack = [(path, output)]  # iterative: a template's nesting is the client's choice
    while stack:
        at, value = stack.pop()
        if isinstance(value, str):
            yield at, value
        elif isinstance(value, Mapping):
            stack.extend(reversed([(key_path(at, str(key)), item) for key, item in value.items()]))
        elif isinstance(value, list):
            stack.extend(reversed([(f"{at}[{index}]", item) for index, item in enumerate(value)]))


def _steps(spec: Any) -> list[Any]:
    steps = spec.get("steps") if isinstance(spec, Mapping) else None
    return steps if isinstance(steps, list) else []


def step_dependencies(spec: Mapping[str, Any]) -> dict[str, set[str]]:
    """Map each step name to the names of the steps its templates reference."""
    deps: dict[str, set[str]] = {}
    for index, step in enumerate(_steps(spec)):
        if not isinstance(step, Mapping) or not isinstance(step.get("name"), str):
            continue
        found = deps.setdefault(step["name"], set())
        for _path, template, _roots in step_templates(step, f"$.steps[{index}]"):
            for _expression, parts in iter_references(template):
                if parts and parts[0] == "steps" and len(parts) > 1:
                    found.add(parts[1])
    return deps


def referenced_secrets(spec: Any) -> set[str]:
    """Names of all secrets the spec's templates reference (for readiness checks)."""
    names: set[str] = set()
    for index, step in enumerate(_steps(spec)):
        for _path, template, _roots in step_templates(step, f"$.steps[{index}]"):
            for _expression, parts in iter_references(template):
                if parts and parts[0] == "secret" and len(parts) == 2:
                    names.add(parts[1])
    return names


def referenced_integrations(spec: Any) -> set[str]:
    """Slugs of all integrations the spec's tools call."""
    slugs: set[str] = set()
    for step in _steps(spec):
        tools = step.get("tools") if isinstance(step, Mapping) else None
        for tool in tools if isinstance(tools, list) else []:
            if isinstance(tool, Mapping) and isinstance(tool.get("integration"), str):
                slugs.add(tool["integration"])
    return slugs


def referenced_subagents(spec: Any) -> set[SubAgentRef]:
    """``(agent, revision_id or None)`` for every sub-agent the spec may call."""
    refs: set[SubAgentRef] = set()
    for step in _steps(spec):
        subs = step.get("subAgents") if isinstance(step, Mapping) else None
        for sub in subs if isinstance(subs, list) else []:
            if isinstance(sub, Mapping) and isinstance(sub.get("agent"), str):
                revision = sub.get("revisionId")
                refs.add(SubAgentRef(sub["agent"], revision if isinstance(revision, str) else None))
    return refs


# --- validation ------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Validator:
    def __init__(self, spec: Any, limits: Limits | None = None):
        self.spec = spec
        self.limits = limits
        self.problems: list[SpecProblem] = []
        self.inputs: set[str] = set()
        self.step_names: set[str] = set()

    def add(self, path: str, message: str) -> None:
        self.problems.append(SpecProblem(path, message))

    def unknown_keys(self, value: Mapping[str, Any], allowed: set[str], path: str) -> None:
        for key in value:
            if key not in allowed:
                self.add(key_path(path, str(key)), "unknown key")

    def expect_object(self, value: Any, path: str) -> bool:
        if isinstance(value, Mapping):
            return True
        self.add(path, "must be an object")
        return False

    def expect_list(self, value: Any, path: str) -> bool:
        if isinstance(value, list):
            return True
        self.add(path, "must be an array")
        return False

    def expect_string(self, value: Any, path: str, *, pattern: re.Pattern[str] | None = None, hint: str = "") -> bool:
        if not isinstance(value, str):
            self.add(path, "must be a string")
            return False
        if pattern is not None and not pattern.match(value):
            self.add(path, f"{value!r} is not valid: {hint}")
            return False
        return True

    def expect_range(self, value: Any, path: str, low: float, high: float, *, integer: bool) -> None:
        ok_type = _is_int(value) if integer else _is_number(value)
        if not ok_type:
            self.add(path, "must be an integer" if integer else "must be a number")
        elif not low <= value <= high:
            self.add(path, f"must be between {low} and {high}")

    # -- top level

    def run(self) -> list[SpecProblem]:
        spec = self.spec
        if not self.expect_object(spec, "$"):
            return self.problems
        if self.check_size():  # a spec over a size limit is not walked any further
            return self.problems
        self.unknown_keys(spec, TOP_KEYS, "$")
        if "description" in spec:
            self.expect_string(spec["description"], "$.description")
        if "inputs" in spec:
            self.check_inputs(spec["inputs"])
        self.check_steps(spec.get("steps"))
        if "output" in spec:
            self.check_output(spec["output"])
        if "timeoutSeconds" in spec:
            self.expect_range(spec["timeoutSeconds"], "$.timeoutSeconds", 1, MAX_TIMEOUT_SECONDS, integer=False)
        return self.problems

    def check_size(self) -> bool:
        """Add the problems of a spec too deep or over a limit; True when it must not be walked further."""
        spec, limits = self.spec, self.limits
        if json_depth(spec, MAX_SPEC_DEPTH) > MAX_SPEC_DEPTH:
            self.add("$", f"nests objects and arrays deeper than {MAX_SPEC_DEPTH} levels")
            return True
        if limits is None:
            return False
        try:
            size = len(canonical_json(spec).encode("utf-8"))
        except (TypeError, ValueError):  # not JSON (NaN, a non-JSON value): the walk reports it
            size = 0
        over = False
        steps = spec.get("steps")
        if isinstance(steps, list) and len(steps) > limits.max_steps:
            self.add("$.steps", f"has {len(steps)} steps, over the limit of {limits.max_steps} steps per spec "
                                f"(FRUXON_MAX_STEPS)")
            over = True
        if size > limits.max_spec_bytes:
            self.add("$", f"is {size} bytes as canonical JSON, over the limit of {limits.max_spec_bytes} bytes "
                          f"per spec (FRUXON_MAX_SPEC_BYTES)")
            over = True
        for index, step in enumerate(steps if isinstance(steps, list) else []):
            for key, limit, setting in (("tools", limits.max_tools_per_step, "FRUXON_MAX_TOOLS_PER_STEP"),
                                        ("subAgents", limits.max_subagents_per_step,
                                         "FRUXON_MAX_SUBAGENTS_PER_STEP")):
                found = step.get(key) if isinstance(step, Mapping) else None
                if isinstance(found, list) and len(found) > limit:
                    self.add(f"$.steps[{index}].{key}", f"has {len(found)} entries, over the limit of {limit} "
                                                        f"{key} per step ({setting})")
                    over = True
        return over

    def check_inputs(self, inputs: Any) -> None:
        if not self.expect_object(inputs, "$.inputs"):
            return
        for name, declaration in inputs.items():
            path = key_path("$.inputs", str(name))
            if not INPUT_NAME_RE.match(str(name)):
                self.add(path, "input names are letters, digits and underscores, not starting with a digit")
                continue
            self.inputs.add(name)
            if not self.expect_object(declaration, path):
                continue
            self.unknown_keys(declaration, INPUT_KEYS, path)
            type_name = declaration.get("type")
            if type_name not in INPUT_TYPES:
                self.add(key_path(path, "type"), f"must be one of {', '.join(INPUT_TYPES)}")
            if "required" in declaration and not isinstance(declaration["required"], bool):
                self.add(key_path(path, "required"), "must be a boolean")
            if "description" in declaration:
                self.expect_string(declaration["description"], key_path(path, "description"))
            default = declaration.get("default")
            if "default" in declaration and type_name in INPUT_TYPES and not type_matches(type_name, default):
                self.add(key_path(path, "default"), f"must be of type {type_name}")

    def check_steps(self, steps: Any) -> None:
        if steps is None:
            self.add("$.steps", "is required")
            return
        if not self.expect_list(steps, "$.steps"):
            return
        if not steps:
            self.add("$.steps", "must contain at least one step")
            return
        # Names first: a step may reference a step listed after it.
        names: dict[str, int] = {}
        for index, step in enumerate(steps):
            path = f"$.steps[{index}].name"
            name = step.get("name") if isinstance(step, Mapping) else None
            if not isinstance(step, Mapping) or "name" not in step:
                continue
            if not self.expect_string(name, path, pattern=STEP_NAME_RE,
                                      hint="lowercase letters, digits and underscores, starting with a letter"):
                continue
            if name in names:
                self.add(path, f"duplicate step name {name!r} (also $.steps[{names[name]}])")
            else:
                names[name] = index
        self.step_names = set(names)
        for index, step in enumerate(steps):
            self.check_step(step, f"$.steps[{index}]")
        self.check_cycles(names)

    def check_step(self, step: Any, path: str) -> None:
        if not self.expect_object(step, path):
            return
        self.unknown_keys(step, STEP_KEYS, path)
        if "name" not in step:
            self.add(key_path(path, "name"), "is required")
        if "prompt" not in step:
            self.add(key_path(path, "prompt"), "is required")
        for key in ("prompt", "systemPrompt", "description"):
            if key in step:
                self.expect_string(step[key], key_path(path, key))
        if "model" not in step:
            self.add(key_path(path, "model"), "is required")
        else:
            self.check_model(step["model"], key_path(path, "model"))
        self.check_tools(step.get("tools", []), key_path(path, "tools"))
        self.check_subagents(step.get("subAgents", []), key_path(path, "subAgents"))
        if "maxToolCalls" in step:
            self.expect_range(step["maxToolCalls"], key_path(path, "maxToolCalls"), 0, MAX_TOOL_CALLS_LIMIT,
                              integer=True)
        for template_path, template, roots in step_templates(step, path):
            self.check_template(template_path, template, roots)

    def check_model(self, model: Any, path: str) -> None:
        if not self.expect_object(model, path):
            return
        provider = model.get("provider")
        if provider not in PROVIDERS:
            self.add(key_path(path, "provider"), f"must be one of {', '.join(PROVIDERS)}")
            return
        self.unknown_keys(model, MODEL_KEYS[provider], path)
        if provider == "openai" and "name" not in model:
            self.add(key_path(path, "name"), "is required")
        if "name" in model and self.expect_string(model["name"], key_path(path, "name")) and not model["name"]:
            self.add(key_path(path, "name"), "must not be empty")
        for key in ("baseUrl", "apiKey"):
            if key in model:
                self.expect_string(model[key], key_path(path, key))
        api_key = model.get("apiKey")
        if isinstance(api_key, str) and api_key and not SECRET_ONLY_RE.match(api_key):
            self.add(key_path(path, "apiKey"), "must be a {{secret.NAME}} reference: a revision never holds a "
                                               "credential (set the value with PUT /secrets/NAME)")
        base_url = model.get("baseUrl")
        if isinstance(base_url, str) and "{{" not in base_url and not base_url.startswith(("http://", "https://")):
            self.add(key_path(path, "baseUrl"), "must start with http:// or https://")
        if "headers" in model and self.expect_object(model["headers"], key_path(path, "headers")):
            for name, value in model["headers"].items():
                header_path = key_path(key_path(path, "headers"), str(name))
                if (self.expect_string(value, header_path) and CREDENTIAL_HEADER_RE.search(str(name))
                        and not SECRET_REFERENCE_RE.search(value)):
                    self.add(header_path, "looks like a credential: take its value from a {{secret.NAME}} "
                                          "reference, never a literal")
        if "temperature" in model:
            self.expect_range(model["temperature"], key_path(path, "temperature"), 0, 2, integer=False)
        if "maxTokens" in model:
            self.expect_range(model["maxTokens"], key_path(path, "maxTokens"), 1, 1_000_000, integer=True)
        if "latencyMs" in model:
            self.expect_range(model["latencyMs"], key_path(path, "latencyMs"), 0, 3_600_000, integer=False)
        if "chunkDelayMs" in model:
            self.expect_range(model["chunkDelayMs"], key_path(path, "chunkDelayMs"), 0, 3_600_000, integer=False)
        if "chunks" in model:  # a default for every entry: a count only
            self.expect_range(model["chunks"], key_path(path, "chunks"), 1, MAX_SCRIPT_CHUNKS, integer=True)
        if "script" in model:
            self.check_script(model["script"], key_path(path, "script"))

    def check_script(self, script: Any, path: str) -> None:
        if not self.expect_list(script, path):
            return
        for index, entry in enumerate(script):
            entry_path = f"{path}[{index}]"
            if not self.expect_object(entry, entry_path):
                continue
            self.unknown_keys(entry, SCRIPT_KEYS, entry_path)
            if "reply" in entry:
                self.expect_string(entry["reply"], key_path(entry_path, "reply"))
            if "latencyMs" in entry:
                self.expect_range(entry["latencyMs"], key_path(entry_path, "latencyMs"), 0, 3_600_000, integer=False)
            if "chunkDelayMs" in entry:
                self.expect_range(entry["chunkDelayMs"], key_path(entry_path, "chunkDelayMs"), 0, 3_600_000,
                                  integer=False)
            if "chunks" in entry:
                self.check_chunks(entry, key_path(entry_path, "chunks"))
            if "error" in entry and entry["error"] not in LOCAL_ERRORS:
                self.add(key_path(entry_path, "error"), f"must be one of {', '.join(LOCAL_ERRORS)}")
            if "usage" in entry and self.expect_object(entry["usage"], key_path(entry_path, "usage")):
                usage_path = key_path(entry_path, "usage")
                self.unknown_keys(entry["usage"], SCRIPT_USAGE_KEYS, usage_path)
                for key, value in entry["usage"].items():
                    if key in SCRIPT_USAGE_KEYS:
                        self.expect_range(value, key_path(usage_path, key), 0, 10**9, integer=True)
            if "toolCalls" in entry and self.expect_list(entry["toolCalls"], key_path(entry_path, "toolCalls")):
                for call_index, call in enumerate(entry["toolCalls"]):
                    call_path = f"{entry_path}.toolCalls[{call_index}]"
                    if not self.expect_object(call, call_path):
                        continue
                    self.unknown_keys(call, SCRIPT_TOOL_CALL_KEYS, call_path)
                    if "name" not in call:
                        self.add(key_path(call_path, "name"), "is required")
                    else:
                        self.expect_string(call["name"], key_path(call_path, "name"))
                    if "arguments" in call:
                        self.expect_object(call["arguments"], key_path(call_path, "arguments"))

    def check_chunks(self, entry: Mapping[str, Any], path: str) -> None:
        """``chunks``: a count of pieces to cut the reply into, or the pieces themselves (then no ``reply``)."""
        chunks = entry["chunks"]
        if isinstance(chunks, list):
            if not 1 <= len(chunks) <= MAX_SCRIPT_CHUNKS:
                self.add(path, f"must hold 1 to {MAX_SCRIPT_CHUNKS} pieces")
            for position, piece in enumerate(chunks):
                self.expect_string(piece, f"{path}[{position}]")
            if "reply" in entry:
                self.add(path, "give either reply or a list of chunks (the reply is their concatenation), not both")
        else:
            if not _is_int(chunks):
                self.add(path, "must be a number of pieces or a list of strings")
            else:
                self.expect_range(chunks, path, 1, MAX_SCRIPT_CHUNKS, integer=True)

    def check_tools(self, tools: Any, path: str) -> None:
        names: set[str] = set()
        if not self.expect_list(tools, path):
            return
        for index, tool in enumerate(tools):
            tool_path = f"{path}[{index}]"
            if not self.expect_object(tool, tool_path):
                continue
            self.unknown_keys(tool, TOOL_KEYS, tool_path)
            name = tool.get("name")
            if "name" not in tool:
                self.add(key_path(tool_path, "name"), "is required")
            elif self.expect_string(name, key_path(tool_path, "name"), pattern=TOOL_NAME_RE,
                                    hint="letters, digits, '_' and '-', starting with a letter, at most 64"):
                if name.startswith(SUBAGENT_TOOL_PREFIX):
                    self.add(key_path(tool_path, "name"),
                             f"the prefix {SUBAGENT_TOOL_PREFIX!r} is reserved for sub-agents")
                elif name in names:
                    self.add(key_path(tool_path, "name"), f"duplicate tool name {name!r}")
                names.add(name)
            if "integration" not in tool:
                self.add(key_path(tool_path, "integration"), "is required")
            else:
                self.expect_string(tool["integration"], key_path(tool_path, "integration"), pattern=SLUG_RE,
                                   hint="an integration slug")
            if "description" in tool:
                self.expect_string(tool["description"], key_path(tool_path, "description"))
            parameters_path = key_path(tool_path, "parameters")
            if ("parameters" in tool and self.expect_object(tool["parameters"], parameters_path)
                    and tool["parameters"].get("type", "object") != "object"):
                self.add(key_path(parameters_path, "type"), 'must be "object"')

    def check_subagents(self, subagents: Any, path: str) -> None:
        if not self.expect_list(subagents, path):
            return
        seen: set[str] = set()
        for index, sub in enumerate(subagents):
            sub_path = f"{path}[{index}]"
            if not self.expect_object(sub, sub_path):
                continue
            self.unknown_keys(sub, SUBAGENT_KEYS, sub_path)
            agent = sub.get("agent")
            if "agent" not in sub:
                self.add(key_path(sub_path, "agent"), "is required")
            elif self.expect_string(agent, key_path(sub_path, "agent"), pattern=SLUG_RE, hint="an agent slug"):
                if len(SUBAGENT_TOOL_PREFIX + agent) > _MAX_FUNCTION_NAME:
                    self.add(key_path(sub_path, "agent"),
                             f"slug too long to be offered as a tool (at most "
                             f"{_MAX_FUNCTION_NAME - len(SUBAGENT_TOOL_PREFIX)} characters)")
                elif agent in seen:
                    self.add(key_path(sub_path, "agent"), f"duplicate sub-agent {agent!r}")
                seen.add(agent)
            if "revisionId" in sub:
                self.expect_string(sub["revisionId"], key_path(sub_path, "revisionId"), pattern=REVISION_ID_RE,
                                   hint="a revision id like rev_3k9f2a")
            if "description" in sub:
                self.expect_string(sub["description"], key_path(sub_path, "description"))

    def check_output(self, output: Any) -> None:
        if not isinstance(output, (str, Mapping, list)):
            self.add("$.output", "must be a string, an object or an array")
            return
        for path, template in output_templates(output):
            self.check_template(path, template, OUTPUT_ROOTS)

    def check_template(self, path: str, template: str, roots: frozenset[str]) -> None:
        for expression, parts in iter_references(template):
            shown = "{{" + expression + "}}"
            if parts is None:
                self.add(path, f"invalid reference {shown}")
                continue
            root = parts[0]
            if root not in roots:
                if root == "secret":
                    self.add(path, f"{shown}: secrets cannot be used here")
                else:
                    self.add(path, f"{shown}: unknown reference (use {', '.join(sorted(roots))})")
            elif root == "input":
                if len(parts) > 1 and parts[1] not in self.inputs:
                    self.add(path, f"{shown} refers to an undeclared input {parts[1]!r}")
            elif root == "steps":
                if len(parts) != 3 or parts[2] != "output":
                    self.add(path, f"{shown}: use {{{{steps.NAME.output}}}}")
                elif parts[1] not in self.step_names:
                    self.add(path, f"{shown} refers to an unknown step {parts[1]!r}")
            elif root == "secret":
                if len(parts) != 2 or not SECRET_NAME_RE.match(parts[1]):
                    self.add(path, f"{shown}: use {{{{secret.NAME}}}} with a valid secret name")
            elif len(parts) != 1:
                self.add(path, f"{shown}: use {{{{{root}}}}}")

    def check_cycles(self, names: dict[str, int]) -> None:
        deps = {name: {d for d in found if d in names} for name, found in step_dependencies(self.spec).items()
                if name in names}
        reported: set[frozenset[str]] = set()
        state: dict[str, int] = {}  # 1 = on the current path, 2 = done
        # Depth-first, with an explicit stack: a chain of thousands of steps must not exhaust Python's.
        for root in sorted(names, key=names.get):
            if root in state:
                continue
            state[root] = 1
            path, pending = [root], [iter(sorted(deps.get(root, ())))]
            while pending:
                dep = next(pending[-1], None)
                if dep is None:
                    state[path.pop()] = 2
                    pending.pop()
                elif state.get(dep) == 1:
                    cycle = path[path.index(dep):] + [dep]
                    key = frozenset(cycle)
                    if key not in reported:
                        reported.add(key)
                        self.add(f"$.steps[{names[dep]}]", "dependency cycle between steps: " + " -> ".join(cycle))
                elif dep not in state:
                    state[dep] = 1
                    path.append(dep)
                    pending.append(iter(sorted(deps.get(dep, ()))))


def validate_spec(spec: Any, limits: Limits | None = None) -> list[SpecProblem]:
    """Return every problem in ``spec`` (empty when valid). Never raises.

    With ``limits`` the spec must also fit them (see :mod:`agents.engine.limits`);
    a spec nested deeper than ``MAX_SPEC_DEPTH`` is always invalid.
    """
    return _Validator(spec, limits).run()
