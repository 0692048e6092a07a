"""Builders for agents, revisions and runs used across tests."""
from __future__ import annotations

import copy

from agents import execution, services
from agents.models import Agent
from orgs.actor import Actor

SYSTEM = Actor(system=True)


def local_spec(reply: str = "hello {{input.question}}", *, prompt: str = "{{input.question}}", latency_ms: int = 0,
               **extra) -> dict:
    """A one-step fruxon-local spec whose answer is ``reply`` (templated)."""
    model = {"provider": "fruxon-local", "name": "local", "script": [{"reply": reply}]}
    if latency_ms:
        model["latencyMs"] = latency_ms
    spec = {"inputs": {"question": {"type": "string", "required": True}},
            "steps": [{"name": "answer", "model": model, "prompt": prompt}],
            "output": "{{steps.answer.output}}"}
    spec.update(extra)
    return spec


def send_secrets(spec: dict, *names: str, base_url: str = "https://api.openai.com/v1", step: int = 0) -> dict:
    """``spec`` with step ``step``'s model sending the named secrets to ``base_url`` (an ``openai`` model):
    the first as its ``apiKey``, the others in headers. A secret only ever goes in these credential positions."""
    model = {"provider": "openai", "name": "gpt-4o-mini", "baseUrl": base_url, "apiKey": "{{secret.%s}}" % names[0]}
    if names[1:]:
        model["headers"] = {f"X-Secret-{index}": "{{secret.%s}}" % name for index, name in enumerate(names[1:], 1)}
    spec["steps"][step]["model"] = model
    return spec


def agent_with_revision(org, slug: str, spec: dict | None = None, *, deploy: bool = True):
    agent = services.create_agent(actor=SYSTEM, organization=org, slug=slug, name=slug)
    revision = services.create_revision(actor=SYSTEM, agent=agent, spec=copy.deepcopy(spec or local_spec()), message="first")
    if deploy:
        Agent.objects.filter(pk=agent.pk).update(deployed_revision=revision)
        agent.refresh_from_db()
    return agent, revision


def run_once(agent, question: str = "hi", **kwargs):
    return execution.execute(agent=agent, input={"question": question}, **kwargs).run
