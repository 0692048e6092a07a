"""Templating: references, JSON rendering, trace vs call rendering, redaction."""

from __future__ import annotations

import json

import pytest

from agents.engine.errors import TemplateError
from agents.engine.templating import Redactor, render_for_call, render_for_trace, render_shaped

CONTEXT = {
    "input": {"customer": "Acme", "order": {"id": 42, "lines": [{"sku": "A-1"}]}, "vip": True, "note": None},
    "steps": {"answer": {"output": "It shipped."}},
}


def test_renders_input_and_nested_input():
    assert render_for_trace("Hi {{input.customer}}, order {{ input.order.id }}", CONTEXT) == "Hi Acme, order 42"
    assert render_for_trace("{{input.order.lines.0.sku}}", CONTEXT) == "A-1"


def test_renders_step_output():
    assert render_for_trace("Shorten: {{steps.answer.output}}", CONTEXT) == "Shorten: It shipped."


def test_non_string_values_render_as_json():
    assert render_for_trace("{{input.order}}", CONTEXT) == json.dumps(CONTEXT["input"]["order"])
    assert render_for_trace("{{input.vip}}", CONTEXT) == "true"
    assert render_for_trace("{{input.order.lines}}", CONTEXT) == '[{"sku": "A-1"}]'


def test_absent_optional_input_renders_empty():
    assert render_for_trace("[{{input.note}}]", CONTEXT) == "[]"


@pytest.mark.parametrize("template, named", [
    ("{{input.missing}}", "{{input.missing}}"),
    ("{{steps.nope.output}}", "{{steps.nope.output}}"),
    ("{{input.order.nothing}}", "{{input.order.nothing}}"),
    ("{{unknown.root}}", "{{unknown.root}}"),
])
def test_unknown_reference_raises_naming_it(template, named):
    with pytest.raises(TemplateError) as caught:
        render_for_trace(template, CONTEXT)
    assert named in str(caught.value)
    assert caught.value.code == "template_error"


def test_invalid_reference_syntax_raises():
    with pytest.raises(TemplateError, match="invalid reference"):
        render_for_trace("{{input customer}}", CONTEXT)


def test_trace_rendering_keeps_secret_template_and_call_rendering_resolves_it():
    template = "key={{secret.OPENAI_KEY}} for {{input.customer}}"
    assert render_for_trace(template, CONTEXT) == "key={{secret.OPENAI_KEY}} for Acme"
    asked = []

    def resolve(name: str) -> str:
        asked.append(name)
        return "sk-live-123"

    assert render_for_call(template, CONTEXT, resolve) == "key=sk-live-123 for Acme"
    assert asked == ["OPENAI_KEY"]


def test_shaped_output_keeps_types_of_whole_references():
    shaped = render_shaped({"id": "{{input.order.id}}", "text": "Order {{input.order.id}}", "vip": ["{{input.vip}}"]},
                           CONTEXT)
    assert shaped == {"id": 42, "text": "Order 42", "vip": [True]}


def test_redactor_replaces_values_and_their_json_escaped_forms():
    redactor = Redactor()
    redactor.add("TOKEN", 'p"ss\\wörd')
    redactor.add("SHORT", "abc")
    text = json.dumps({"echo": 'p"ss\\wörd', "other": "xabcx"})
    redacted = redactor.redact({"raw": 'p"ss\\wörd', "json": text, "list": ["abc"]})
    flat = json.dumps(redacted, ensure_ascii=False)
    assert "wörd" not in flat and "w\\u00f6rd" not in flat
    assert redacted["raw"] == "{{secret.TOKEN}}"
    assert redacted["list"] == ["{{secret.SHORT}}"]
    assert "x{{secret.SHORT}}x" in redacted["json"]


def test_redactor_replaces_the_longest_secret_first():
    redactor = Redactor()
    redactor.add("INNER", "abc")
    redactor.add("OUTER", "abcdef")
    assert redactor.redact_text("abcdef abc") == "{{secret.OUTER}} {{secret.INNER}}"
