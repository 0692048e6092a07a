"""The execute hot path (DESIGN "The execute hot path", rule 5).

resolve the revision ONCE (pinned or deployed) -> validate input -> run the
engine on that immutable spec -> record Run + spans -> answer. A deploy that
lands mid-run changes nothing for this run: it holds its own revision.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass

from fruxon import ratelimit
from fruxon.db import release_connection
from fruxon.errors import Conflict, InvalidRequest, NotFound
from monitoring import observability
from monitoring.models import Conversation, Run
from monitoring.recording import record_run

from . import engine
from .models import Agent, Revision
from .runtime import DjangoRuntime

CONVERSATION_KEY = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


@dataclass
class Execution:
    run: Run
    result: engine.RunResult
    # The tokens-per-minute refusal that stopped the run (status error, code rate_limited), for Retry-After.
    rate_refusal: object | None = None
    # The executions-per-minute admission (fruxon.ratelimit.Decision), for the answer's RateLimit-* headers.
    rate_decision: object | None = None


def resolve_revision(*, agent: Agent, revision_id: str | None) -> tuple[Revision, str]:
    """The revision this run will use, and its source (``canary`` when pinned off the deployed one)."""
    deployed_id = agent.deployed_revision_id
    if revision_id:
        revision = Revision.objects.filter(agent=agent, pk=revision_id).only("id", "spec").first()
        if revision is None:
            raise NotFound(f"Revision '{revision_id}' not found for agent '{agent.slug}'.")
        return revision, ("api" if revision.id == deployed_id else "canary")
    if deployed_id is None:
        raise Conflict(f"Agent '{agent.slug}' has no deployed revision; deploy one or pin revisionId.",
                       code="not_deployed")
    if Agent.deployed_revision.is_cached(agent):
        # Loaded with the agent, in the same query and so the same snapshot (ExecuteView).
        return agent.deployed_revision, "api"
    return Revision.objects.only("id", "spec").get(pk=deployed_id), "api"


def validate_input(spec: dict, data) -> dict:
    try:
        return engine.validate_inputs(spec.get("inputs"), data)
    except engine.InputError as exc:
        errors = [dict(e) for e in exc.errors]
        raise InvalidRequest(
            "Invalid input: " + "; ".join(f"{e['path']}: {e['message']}" for e in errors),
            details={"fields": {e["path"]: [e["message"]] for e in errors}, "errors": errors},
        ) from None


def execute(*, agent: Agent, input, revision_id: str | None = None, conversation_key: str | None = None,
            api_key_id: int | None = None, source: str | None = None, shadow: bool = False,
            started: float | None = None, rate_limited_for: tuple | None = None) -> Execution:
    """Run ``agent`` once and record it. Raises the API's 400/404/409 errors before running.

    ``started`` (a ``time.monotonic()``) lets the caller count time already
    spent (authentication, lookups) against the spec's ``timeoutSeconds``.
    ``rate_limited_for`` = ``(organization, api_key or None)``: the caller's rate limits apply
    (``fruxon.ratelimit``): executions per minute once the request is valid (429 ``rate_limited``
    before running, nothing recorded), tokens per minute before each model call (reserved at the
    call's upper bound, settled to its usage; a call not admitted stops the run with ``rate_limited``).
    """
    revision, resolved_source = resolve_revision(agent=agent, revision_id=revision_id)
    values = validate_input(revision.spec, input)
    if conversation_key is not None and not CONVERSATION_KEY.match(conversation_key):
        raise InvalidRequest("conversationId must be 1-64 letters, digits or _ . : -.",
                             details={"fields": {"conversationId": ["Invalid format."]}})
    if conversation_key is not None:
        owner = Conversation.objects.filter(organization_id=agent.organization_id, key=conversation_key).values_list(
            "agent_id", flat=True).first()
        if owner is not None and owner != agent.pk:
            raise Conflict(f"Conversation '{conversation_key}' belongs to another agent.",
                           details={"conversationId": conversation_key})
    # The budget rides along with the agent on the API path (agents.scoping); one query elsewhere.
    budget = getattr(agent, "budget", None)
    token_limits, admitted = (), None
    if rate_limited_for is not None:
        organization, key = rate_limited_for
        admitted = ratelimit.admit("executions", organization=organization, api_key=key)
        token_limits = ratelimit.limits_for("tokens", organization=organization, api_key=key)
    runtime = DjangoRuntime(organization_id=agent.organization_id, agent_id=agent.pk, budget=budget,
                            token_limits=token_limits)
    context = engine.RunContext.for_spec(revision.spec, agent=agent.slug, revision_id=revision.id, shadow=shadow,
                                         started=started if started is not None else time.monotonic())
    # The engine may now wait seconds on model providers: with a pool, do not hold a connection meanwhile.
    observability.remember_agent(agent)  # the labels of its metrics (runs, ledger refusals), without a query
    release_connection()
    result = engine.run(revision.spec, values, context=context, runtime=runtime)
    run = record_run(organization_id=agent.organization_id, agent_id=agent.pk, revision_id=revision.id,
                     result=result, source=source or resolved_source, input=input, api_key_id=api_key_id,
                     conversation_key=conversation_key)
    runtime.alert_if_needed()
    return Execution(run=run, result=result, rate_refusal=runtime.rate_refusal, rate_decision=admitted)
