"""The execute hot path (DESIGN "The execute hot path", rule 5).

resolve the revision ONCE (pinned or deployed) -> validate input -> run the
engine on that immutable spec -> record Run + spans -> answer. A deploy that
lands mid-run changes nothing for this run: it holds its own revision.
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass

from fruxon import adb, ratelimit
from fruxon.db import PreparedQuery, release_connection
from fruxon.errors import Conflict, InvalidRequest, NotFound
from monitoring import observability
from monitoring.models import Conversation, Run
from monitoring.recording import arecord_run, record_run

from . import engine
from .models import Agent, Revision
from .runtime import AsyncDjangoRuntime, DjangoRuntime

logger = logging.getLogger(__name__)
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


def check_conversation_key(conversation_key: str | None) -> None:
    if conversation_key is not None and not CONVERSATION_KEY.match(conversation_key):
        raise InvalidRequest("conversationId must be 1-64 letters, digits or _ . : -.",
                             details={"fields": {"conversationId": ["Invalid format."]}})


def _conversation_taken(agent: Agent, owner: int | None, conversation_key: str) -> None:
    if owner is not None and owner != agent.pk:
        raise Conflict(f"Conversation '{conversation_key}' belongs to another agent.",
                       details={"conversationId": conversation_key})


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
    check_conversation_key(conversation_key)
    if conversation_key is not None:
        owner = Conversation.objects.filter(organization_id=agent.organization_id, key=conversation_key).values_list(
            "agent_id", flat=True).first()
        _conversation_taken(agent, owner, conversation_key)
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



# --- the async execute family (agents.api.execute) -------------------------------------------------

_pinned_revision = PreparedQuery(
    lambda agent_id, revision_id: Revision.objects.filter(agent_id=agent_id, pk=revision_id).only("id", "spec")
    .order_by()[:1], sentinels=(-7_300_000_002, "\x00revision-sentinel"))
_conversation_owner = PreparedQuery(
    lambda organization_id, key: Conversation.objects.filter(organization_id=organization_id, key=key)
    .only("id", "agent_id").order_by()[:1], sentinels=(-7_300_000_003, "\x00conversation-sentinel"))


async def aresolve_revision(*, agent: Agent, revision_id: str | None) -> tuple[Revision, str]:
    """``resolve_revision`` through ``fruxon.adb``: no query for the deployed revision (it came with the
    agent), one for a pinned one."""
    if revision_id:
        revision = await _pinned_revision.afirst(agent.pk, revision_id)
        if revision is None:
            raise NotFound(f"Revision '{revision_id}' not found for agent '{agent.slug}'.")
        return revision, ("api" if revision.id == agent.deployed_revision_id else "canary")
    if agent.deployed_revision_id is None or Agent.deployed_revision.is_cached(agent):
        return resolve_revision(agent=agent, revision_id=None)  # 409, or the row loaded with the agent
    return await _pinned_revision.afirst(agent.pk, agent.deployed_revision_id), "api"


@dataclass
class Prepared:
    """An execute that passed every check and may run (``aprepare``): what ``arun`` needs."""

    agent: Agent
    revision: Revision
    source: str
    input: object
    values: dict
    conversation_key: str | None
    api_key_id: int | None
    runtime: AsyncDjangoRuntime
    context: engine.RunContext
    rate_decision: object | None
    run_id: str


async def aprepare(*, agent: Agent, input, revision_id: str | None = None, conversation_key: str | None = None,
                   api_key_id: int | None = None, started: float | None = None,
                   rate_limited_for: tuple | None = None, price_entries=None) -> Prepared:
    """Everything ``execute`` checks before it runs, on the event loop; raises the same 400/404/409/429.

    Nothing is written: a refusal here records no run. ``price_entries``: a task already fetching the
    org's price cache entries (``monitoring.pricing.acached_entries``).
    """
    revision, source = await aresolve_revision(agent=agent, revision_id=revision_id)
    values = validate_input(revision.spec, input)
    check_conversation_key(conversation_key)
    if conversation_key is not None:
        found = await _conversation_owner.afirst(agent.organization_id, conversation_key)
        _conversation_taken(agent, found.agent_id if found is not None else None, conversation_key)
    token_limits, admitted = (), None
    if rate_limited_for is not None:
        organization, key = rate_limited_for
        admitted = await ratelimit.aadmit("executions", organization=organization, api_key=key)
        token_limits = ratelimit.limits_for("tokens", organization=organization, api_key=key)
    runtime = AsyncDjangoRuntime(organization_id=agent.organization_id, agent_id=agent.pk,
                                 budget=getattr(agent, "budget", None), token_limits=token_limits,
                                 price_entries=price_entries)
    context = engine.RunContext.for_spec(revision.spec, agent=agent.slug, revision_id=revision.id,
                                         started=started if started is not None else time.monotonic())
    observability.remember_agent(agent)
    return Prepared(agent=agent, revision=revision, source=source, input=input, values=values,
                    conversation_key=conversation_key, api_key_id=api_key_id, runtime=runtime, context=context,
                    rate_decision=admitted, run_id=Run._meta.pk.get_default())


# Recordings under way when their request's task was cancelled again: kept alive until they finish.
_recordings: set[asyncio.Task] = set()


async def arun(prepared: Prepared, *, events=None) -> Execution:
    """Run a prepared execute on the event loop and record it (the run is written before this returns).

    Cancelled (the client went away): the engine stops, closes its provider connections and returns
    a ``cancelled`` result billed as ``agents.engine`` says; it is recorded and settled like any other,
    and the cancellation is then raised again for the caller.
    """
    result = await engine.arun(prepared.revision.spec, prepared.values, context=prepared.context,
                               runtime=prepared.runtime, events=events)
    task = asyncio.current_task()
    cancelled = task is not None and task.cancelling() > 0
    recording = asyncio.ensure_future(_arecord(prepared, result))
    _recordings.add(recording)
    recording.add_done_callback(_recorded)
    run = await asyncio.shield(recording)  # a second cancellation cannot abandon the record half way
    if cancelled:
        raise asyncio.CancelledError()
    return Execution(run=run, result=result, rate_refusal=prepared.runtime.rate_refusal,
                     rate_decision=prepared.rate_decision)


def _recorded(task: asyncio.Task) -> None:
    _recordings.discard(task)
    if not task.cancelled() and task.exception() is not None:  # retrieved here: the caller may be gone
        logger.error("a run could not be recorded: %s", type(task.exception()).__name__,
                     exc_info=task.exception())


async def _arecord(prepared: Prepared, result) -> Run:
    from deployments import shadow

    agent = prepared.agent
    run = await arecord_run(organization_id=agent.organization_id, agent_id=agent.pk,
                            revision_id=prepared.revision.id, result=result, source=prepared.source,
                            input=prepared.input, api_key_id=prepared.api_key_id,
                            conversation_key=prepared.conversation_key, run_id=prepared.run_id)
    candidate = shadow.sampled(agent=agent, run=run) if run.status != "cancelled" else None
    if candidate is not None or prepared.runtime.budget_thresholds_crossed():
        await adb.run(_after_run, prepared.runtime, run, candidate)
    return run


def _after_run(runtime: AsyncDjangoRuntime, run: Run, shadow_candidate: str | None) -> None:
    """The deferred work a recorded run may start (outbox rows, then the broker): off the loop."""
    from deployments import shadow

    if shadow_candidate is not None:
        shadow.enqueue(run, shadow_candidate)
    runtime.alert_if_needed()
