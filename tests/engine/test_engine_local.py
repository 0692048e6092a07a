"""The offline ``fruxon-local`` provider: scripts, defaults, latency and simulated failures."""

from __future__ import annotations

import math
import time

import pytest

from agents.engine.errors import ProviderError, ProviderTimeout
from agents.engine.providers import ChatRequest, LocalProvider


def request(model, *turns, context=None):
    messages = [{"role": "user", "content": "What is 2+2?"}, *turns]
    return ChatRequest(model={"provider": "fruxon-local", **model}, messages=messages, context=context or {})


ASSISTANT = {"role": "assistant", "content": None, "tool_calls": []}
TOOL = {"role": "tool", "tool_call_id": "c", "content": "4"}


def test_default_reply_echoes_the_prompt_with_estimated_usage():
    response = LocalProvider().complete(request({}), deadline=time.monotonic() + 5)
    assert response.content == "echo: What is 2+2?"
    assert response.tool_calls == []
    assert response.usage.input_tokens == math.ceil(len("What is 2+2?") / 4)
    assert response.usage.output_tokens == math.ceil(len("echo: What is 2+2?") / 4)
    assert response.provider_ms == 0


def test_kth_call_of_a_tool_loop_plays_script_k_and_the_last_entry_repeats():
    script = [{"toolCalls": [{"name": "calc", "arguments": {"expr": "2+2"}}]},
              {"reply": "{{input.name}}: it is 4 ({{prompt}})", "usage": {"inputTokens": 7, "outputTokens": 3}}]
    model = {"script": script}
    context = {"input": {"name": "Ada"}, "steps": {}}
    first = LocalProvider().complete(request(model, context=context), deadline=time.monotonic() + 5)
    assert first.content == "" and first.tool_calls[0].name == "calc"
    assert first.tool_calls[0].arguments == {"expr": "2+2"} and first.tool_calls[0].id == "call_0_0"

    for turns in ([ASSISTANT, TOOL], [ASSISTANT, TOOL, ASSISTANT, TOOL]):
        later = LocalProvider().complete(request(model, *turns, context=context), deadline=time.monotonic() + 5)
        assert later.content == "Ada: it is 4 (What is 2+2?)"
        assert (later.usage.input_tokens, later.usage.output_tokens) == (7, 3)


def test_latency_is_slept_and_reported_as_provider_time():
    response = LocalProvider().complete(request({"latencyMs": 80}), deadline=time.monotonic() + 5)
    assert response.provider_ms >= 80


def test_latency_past_the_deadline_is_a_timeout_at_the_deadline():
    started = time.monotonic()
    with pytest.raises(ProviderTimeout) as caught:
        LocalProvider().complete(request({"script": [{"latencyMs": 10_000}]}), deadline=started + 0.2)
    assert 0.19 <= time.monotonic() - started < 1.0
    assert caught.value.provider_ms >= 190


@pytest.mark.parametrize("error, raised", [("provider_error", ProviderError), ("provider_timeout", ProviderTimeout)])
def test_simulated_failures(error, raised):
    with pytest.raises(raised) as caught:
        LocalProvider().complete(request({"script": [{"error": error}]}), deadline=time.monotonic() + 5)
    assert caught.value.code == error
