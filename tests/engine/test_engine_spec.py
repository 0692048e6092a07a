"""Spec validation (with JSON paths), canonical JSON / content hash, reference helpers."""

from __future__ import annotations

import copy
import hashlib
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from agents.engine.spec import (
    SubAgentRef,
    canonical_json,
    content_hash,
    referenced_integrations,
    referenced_secrets,
    referenced_subagents,
    step_dependencies,
    validate_spec,
)

VALID = {
    "inputs": {"customer": {"type": "string", "required": True}, "question": {"type": "string"}},
    "steps": [
        {"name": "answer",
         "model": {"provider": "openai", "name": "gpt-4o-mini", "baseUrl": "https://api.example.test/v1",
                   "apiKey": "{{secret.OPENAI_KEY}}", "temperature": 0.2, "maxTokens": 512},
         "systemPrompt": "You help {{input.customer}}.",
         "prompt": "{{input.question}}",
         "tools": [{"name": "lookup_order", "integration": "shop-api", "description": "Find an order",
                    "parameters": {"type": "object", "properties": {"id": {"type": "string"}}}}],
         "subAgents": [{"agent": "summarizer", "revisionId": "rev_3k9f2a"}, {"agent": "translator"}],
         "maxToolCalls": 8},
        {"name": "polish", "model": {"provider": "fruxon-local", "name": "local",
                                     "script": [{"reply": "Short: {{prompt}}"}]},
         "prompt": "Shorten: {{steps.answer.output}}"},
    ],
    "output": "{{steps.polish.output}}",
    "timeoutSeconds": 60,
}


def problems(spec):
    return {(problem.path, problem.message) for problem in validate_spec(spec)}


def paths(spec):
    return {problem.path for problem in validate_spec(spec)}


def mutated(change):
    spec = copy.deepcopy(VALID)
    change(spec)
    return spec


def test_valid_spec_has_no_problems():
    assert validate_spec(VALID) == []


def test_spec_must_be_an_object_with_steps():
    assert problems([]) == {("$", "must be an object")}
    assert problems({}) == {("$.steps", "is required")}
    assert problems({"steps": []}) == {("$.steps", "must contain at least one step")}


def test_unknown_provider_is_reported_at_its_path():
    spec = mutated(lambda s: s["steps"][1]["model"].update(provider="anthropic-native"))
    assert paths(spec) == {"$.steps[1].model.provider"}


def test_unknown_keys_are_reported():
    def change(s):
        s["steps"][0]["promt"] = "typo"
        s["steps"][1]["model"]["apiKey"] = "x"  # not a fruxon-local key
        s["extra"] = 1

    assert paths(mutated(change)) == {"$.steps[0].promt", "$.steps[1].model.apiKey", "$.extra"}


def test_credentials_are_never_literal_in_a_spec():
    """A revision is exported, diffed and shown to viewers: a credential in it would leak (DESIGN rule 7)."""
    def change(s):
        s["steps"][0]["model"]["apiKey"] = "sk-live-1234"
        s["steps"][0]["model"]["headers"] = {"X-Api-Key": "abc", "Authorization": "Bearer {{secret.OPENAI_KEY}}",
                                             "X-Request-Source": "fruxon"}

    assert problems(mutated(change)) >= {
        ("$.steps[0].model.apiKey", "must be a {{secret.NAME}} reference: a revision never holds a credential "
                                    "(set the value with PUT /secrets/NAME)")}
    assert paths(mutated(change)) == {"$.steps[0].model.apiKey", '$.steps[0].model.headers["X-Api-Key"]'}
    ok = mutated(lambda s: s["steps"][0]["model"].update(apiKey="{{ secret.OPENAI_KEY }}"))
    assert problems(ok) == set()


def test_step_names_must_be_unique_and_well_formed():
    def change(s):
        s["steps"][1]["name"] = "answer"

    assert any("duplicate step name" in message for _, message in problems(mutated(change)))
    assert paths(mutated(lambda s: s["steps"][0].update(name="Answer-1"))) >= {"$.steps[0].name"}


def test_reference_to_undeclared_input_and_unknown_step():
    def change(s):
        s["steps"][0]["prompt"] = "{{input.questoin}}"
        s["steps"][1]["prompt"] = "{{steps.ansewr.output}}"

    found = problems(mutated(change))
    assert ("$.steps[0].prompt", "{{input.questoin}} refers to an undeclared input 'questoin'") in found
    assert ("$.steps[1].prompt", "{{steps.ansewr.output}} refers to an unknown step 'ansewr'") in found


def test_later_step_reference_is_fine_but_a_cycle_is_not():
    later = mutated(lambda s: s["steps"].reverse())
    assert validate_spec(later) == []

    def cycle(s):
        s["steps"][0]["prompt"] = "Use {{steps.polish.output}}"

    found = problems(mutated(cycle))
    assert any(path == "$.steps[0]" and "dependency cycle between steps: answer -> polish -> answer" in message
               for path, message in found), found


def test_self_reference_is_a_cycle():
    spec = mutated(lambda s: s["steps"][1].update(prompt="{{steps.polish.output}}"))
    assert any("polish -> polish" in message for _, message in problems(spec))


def test_numeric_limits():
    def change(s):
        s["steps"][0]["maxToolCalls"] = 101
        s["steps"][1]["maxToolCalls"] = True
        s["timeoutSeconds"] = 0
        s["steps"][0]["model"]["temperature"] = 3

    found = problems(mutated(change))
    assert ("$.steps[0].maxToolCalls", "must be between 0 and 100") in found
    assert ("$.steps[1].maxToolCalls", "must be an integer") in found
    assert ("$.timeoutSeconds", "must be between 1 and 3600") in found
    assert ("$.steps[0].model.temperature", "must be between 0 and 2") in found


def test_tools_and_subagents_are_checked():
    def change(s):
        step = s["steps"][0]
        step["tools"] = [{"name": "agent__x", "integration": "shop api", "parameters": {"type": "array"}},
                         {"description": "no name"}]
        step["subAgents"] = [{"agent": "summarizer", "revisionId": "v2"}, {"agent": "summarizer"}]

    found = paths(mutated(change))
    assert {"$.steps[0].tools[0].name", "$.steps[0].tools[0].integration", "$.steps[0].tools[0].parameters.type",
            "$.steps[0].tools[1].name", "$.steps[0].tools[1].integration",
            "$.steps[0].subAgents[0].revisionId", "$.steps[0].subAgents[1].agent"} == found


def test_input_declarations_are_checked():
    def change(s):
        s["inputs"]["customer"] = {"type": "text", "required": "yes"}
        s["inputs"]["question"]["default"] = 5
        s["inputs"]["bad name"] = {"type": "string"}

    found = paths(mutated(change))
    assert found == {"$.inputs.customer.type", "$.inputs.customer.required", "$.inputs.question.default",
                     '$.inputs["bad name"]'}


def test_secret_in_output_is_refused_and_prompt_root_only_in_scripts():
    def change(s):
        s["output"] = {"answer": "{{steps.polish.output}}", "leak": "{{secret.OPENAI_KEY}}"}
        s["steps"][0]["prompt"] = "{{prompt}}"

    found = problems(mutated(change))
    assert ("$.output.leak", "{{secret.OPENAI_KEY}}: secrets cannot be used here") in found
    assert any(path == "$.steps[0].prompt" and "unknown reference" in message for path, message in found)


def test_local_script_is_checked():
    def change(s):
        s["steps"][1]["model"]["script"] = [{"reply": 1, "error": "boom", "usage": {"inputTokens": -1},
                                             "toolCalls": [{"arguments": []}]}]

    assert paths(mutated(change)) == {
        "$.steps[1].model.script[0].reply", "$.steps[1].model.script[0].error",
        "$.steps[1].model.script[0].usage.inputTokens", "$.steps[1].model.script[0].toolCalls[0].name",
        "$.steps[1].model.script[0].toolCalls[0].arguments"}


def test_reference_helpers():
    assert referenced_secrets(VALID) == {"OPENAI_KEY"}
    assert referenced_integrations(VALID) == {"shop-api"}
    assert referenced_subagents(VALID) == {SubAgentRef("summarizer", "rev_3k9f2a"), SubAgentRef("translator", None)}
    assert step_dependencies(VALID) == {"answer": set(), "polish": {"answer"}}
    # Helpers tolerate garbage: readiness checks may run them on anything.
    assert referenced_secrets({"steps": "nope"}) == set()


def test_canonical_json_and_content_hash():
    text = canonical_json({"b": 1, "a": {"d": "é", "c": [1, 2]}})
    assert text == '{"a":{"c":[1,2],"d":"é"},"b":1}'
    assert content_hash(VALID) == hashlib.sha256(canonical_json(VALID).encode("utf-8")).hexdigest()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


def _reversed_keys(value):
    if isinstance(value, dict):
        return {key: _reversed_keys(value[key]) for key in reversed(list(value))}
    if isinstance(value, list):
        return [_reversed_keys(item) for item in value]
    return value


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=6))
def test_canonical_json_ignores_key_order(value):
    shuffled = _reversed_keys(value)
    assert canonical_json(shuffled) == canonical_json(value)
    assert content_hash(shuffled) == content_hash(value)
    assert json.loads(canonical_json(value)) == value


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_validate_spec_never_raises_on_any_json(value):
    assert isinstance(validate_spec(value), list)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["steps", "inputs", "output", "timeoutSeconds"]), json_values)
def test_validate_spec_never_raises_on_a_damaged_valid_spec(key, value):
    spec = copy.deepcopy(VALID)
    spec[key] = value
    assert isinstance(validate_spec(spec), list)
