"""Sub-agents: other agents offered to a step's model as tools, run through the same engine.

A step's ``subAgents`` entry ``{"agent": "summarizer", "revisionId": "rev_..."}``
becomes the tool ``agent__summarizer`` taking ``{"input": {...}}`` (the
sub-agent's declared inputs). Contract:

* the revision is resolved once, when the calling step starts: the pinned one, or
  the agent's deployed one (``Runtime.load_agent``);
* an agent may appear only once on its own call chain: A -> B -> A is refused
  with ``subagent_cycle`` (whether the revisions are pinned or deployed), and
  nesting deeper than :data:`MAX_SUBAGENT_DEPTH` with ``subagent_depth``, both
  before any model call of the sub-agent;
* the sub-run shares the caller's deadline (or its own ``timeoutSeconds`` if
  sooner), budget hooks, shadow flag and trace: its spans are children of the
  ``subAgent`` span;
* input the model got wrong goes back to the model as a tool error; any other
  failure of the sub-run fails the calling run with the sub-run's status and code.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import EngineError, InputError, SubAgentCycle, SubAgentDepth, SubAgentSpecInvalid
from .inputs import validate_inputs
from .providers.base import ToolCall
from .runtime import timeout_seconds
from .spec import SUBAGENT_TOOL_PREFIX, validate_spec
from .state import Frame, RunState
from .templating import to_text

MAX_SUBAGENT_DEPTH = 5


@dataclass(frozen=True)
class SubAgent:
    agent: str
    revision_id: str
    spec: Mapping[str, Any]
    pinned: bool

    @property
    def tool_name(self) -> str:
        return SUBAGENT_TOOL_PREFIX + self.agent


def input_schema(spec: Mapping[str, Any]) -> dict[str, Any]:
    """JSON schema of a spec's declared inputs, so the model knows what to send."""
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, declaration in (spec.get("inputs") or {}).items():
        prop: dict[str, Any] = {"type": declaration.get("type", "string")}
        if declaration.get("description"):
            prop["description"] = declaration["description"]
        properties[name] = prop
        if declaration.get("required"):
            required.append(name)
    return {"type": "object", "properties": properties, "required": required}


def tool_definition(sub: SubAgent, ref: Mapping[str, Any]) -> dict[str, Any]:
    description = ref.get("description") or sub.spec.get("description") or f"Run the agent {sub.agent!r}."
    return {
        "type": "function",
        "function": {
            "name": sub.tool_name,
            "description": description,
            "parameters": {"type": "object", "properties": {"input": input_schema(sub.spec)}, "required": ["input"]},
        },
    }


async def prepare(frame: Frame, state: RunState, ref: Mapping[str, Any]) -> SubAgent:
    """Check the call chain and resolve the sub-agent's revision."""
    slug = ref["agent"]
    if slug in frame.chain:
        raise SubAgentCycle("sub-agent cycle refused: " + " -> ".join((*frame.chain, slug)))
    if len(frame.chain) > MAX_SUBAGENT_DEPTH:
        raise SubAgentDepth(f"sub-agents nest deeper than {MAX_SUBAGENT_DEPTH}: " + " -> ".join((*frame.chain, slug)))
    pinned = ref.get("revisionId")
    revision_id, spec = await state.agent(slug, pinned)
    if validate_spec(spec):
        raise SubAgentSpecInvalid(f"sub-agent {slug!r} revision {revision_id} has an invalid spec")
    return SubAgent(agent=slug, revision_id=revision_id, spec=spec, pinned=pinned is not None)


async def call(frame: Frame, state: RunState, sub: SubAgent, tool_call: ToolCall,
               parent_span_id: str) -> tuple[str, float]:
    """Run the sub-agent for one tool call; return the text for the model and the provider ms spent."""
    recorder = state.recorder
    span = recorder.start("subAgent", sub.agent, parent_span_id, input=tool_call.arguments,
                          attributes={"agent": sub.agent, "revisionId": sub.revision_id, "pinned": sub.pinned})
    # Models sometimes flatten the arguments; accept the inputs at the top level too.
    given = tool_call.arguments.get("input", tool_call.arguments)
    try:
        values = validate_inputs(sub.spec.get("inputs"), given)
    except InputError as exc:
        body = {"error": {"message": f"invalid input for agent {sub.agent!r}", "details": exc.errors}}
        recorder.finish(span, status="error", output=body, error={"code": "invalid_input", "message": str(exc)})
        return json.dumps(body), 0.0

    child = Frame(agent=sub.agent, revision_id=sub.revision_id, spec=sub.spec, inputs=values,
                  deadline=min(frame.deadline, time.monotonic() + timeout_seconds(sub.spec)),
                  chain=(*frame.chain, sub.agent), parent_span_id=span.id)
    try:
        outcome = await state.execute(child, state)
    except EngineError as exc:
        recorder.finish(span, status=exc.status, error={"code": exc.code, "message": exc.message})
        raise
    except asyncio.CancelledError:
        recorder.finish(span, status="cancelled", error={"code": "cancelled", "message": "the run was cancelled"})
        raise
    recorder.finish(span, output=outcome.output, attributes={"providerMs": round(outcome.provider_ms, 3)})
    return to_text(outcome.output), outcome.provider_ms
