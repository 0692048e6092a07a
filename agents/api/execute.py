"""``POST /v1/{tenant}/agents/{agent}:execute``, async end to end (DESIGN "The execute hot path").

Under the ASGI server this view runs on the event loop and holds no thread while its run
waits on a model: an API key is looked up in the cache over redis.asyncio (else one
statement), its org, agent, budget and deployed revision in one statement
(``fruxon.adb``), the rate limits and the budget ledger over redis.asyncio, the engine's
calls on the loop's pooled ``httpx.AsyncClient``, and the run written in one statement.

Tenancy and access are ``fruxon.api.base``'s: a key passes the same checks
(``agents.scoping``, ``access_refusal`` with ``ExecuteView.access``, the requests-per-minute
limits) awaited on the loop; a person (personal token, admin session) goes through
``ExecuteView.initial`` itself, the DRF base's code, on a worker thread. Every refusal before
the run starts is the API's ordinary JSON error (``fruxon.api.errors.exception_handler``).

Answers (API.md "Streaming, cancellation and overload"):

* JSON, as before: 200 with the run, or the error shape with the run in ``details``;
* ``"stream": true`` in the body or ``Accept: text/event-stream``: 200 ``text/event-stream``,
  header ``X-Fruxon-Run-Id``, events ``run.started``, the engine's ``step.started`` /
  ``output.delta`` / ``tool.call`` / ``tool.result`` / ``step.completed``, then ``run.completed``
  (data: exactly the JSON answer's body) or ``run.failed`` (``{"runId", "error"}``). The answer starts
  once the run is under way: a run refused at its first model call (budget, tokens per minute, the
  ledger) gets the JSON answer instead, as every refusal before a run;
* a client that disconnects, streamed or not, cancels the run (Django cancels the request's
  task): the provider connection is closed, the run recorded ``cancelled`` and billed as
  ``agents.engine`` bounds it (``agents.execution.arun``);
* past ``FRUXON_MAX_IN_FLIGHT`` executions in this process (streams included), 503
  ``overloaded`` with ``Retry-After`` at once, before anything else is done.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time

from django.conf import settings
from django.http import HttpResponse, StreamingHttpResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions as drf
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request

from fruxon import adb, ratelimit
from fruxon.api.authentication import (
    alookup_api_key,
    key_use_is_stale,
    note_key_used,
    raw_api_key,
    refuse_inactive,
)
from fruxon.api.base import access_refusal, closest_rate_limit_headers
from fruxon.api.errors import error_body, exception_handler
from fruxon.api.parsers import StoredJSONParser
from monitoring import observability, pricing
from monitoring.ledger.base import period_bounds
from orgs.credentials import hash_credential

from .. import execution
from ..scoping import aresolve_tenant_and_agent_for_key

logger = logging.getLogger("fruxon.api")

# Non-ok runs answer with the error shape; the status says whose fault it was.
RUN_ERROR_STATUS = {"provider_error": 502, "provider_timeout": 504, "timeout": 504, "budget_exceeded": 429,
                    "ledger_unavailable": 503, "rate_limited": 429}
RUN_FAILED_STATUS = 422
EVENT_STREAM = "text/event-stream"
_json = JSONRenderer()


# --- executions in flight (per process: one event loop serves them all) -------------------------------

class InFlight:
    """The count of this process's executions in flight; ``enter`` refuses past the limit."""

    count = 0
    lock = threading.Lock()

    @classmethod
    def enter(cls) -> _Slot | None:
        with cls.lock:
            if cls.count >= settings.FRUXON_MAX_IN_FLIGHT:
                return None
            cls.count += 1
        return _Slot()


class _Slot:
    """One execution's place in ``InFlight``, given back exactly once (a stream that never started
    is given back when its response is closed, in a worker thread, or collected, in any thread)."""

    __slots__ = ("held",)

    def __init__(self):
        self.held = True

    def release(self) -> None:
        with InFlight.lock:
            if self.held:
                self.held = False
                InFlight.count -= 1

    __del__ = release


def _overloaded() -> HttpResponse:
    limit, retry = settings.FRUXON_MAX_IN_FLIGHT, settings.FRUXON_OVERLOAD_RETRY_AFTER
    response = _answer(error_body(
        "overloaded", f"This server process is running its maximum of {limit} executions; retry in {retry} s.",
        {"maxInFlight": limit, "retryAfter": retry}), 503)
    response["Retry-After"] = str(retry)
    return response


# --- the view ------------------------------------------------------------------------------------------

@csrf_exempt  # as DRF's views: a session caller's CSRF token is checked by SessionAuthentication
async def execute(request, tenant: str, agent: str):
    slot = InFlight.enter()
    if slot is None:
        return _overloaded()
    try:
        response = await _execute(request, tenant, agent, slot)
    except Exception as exc:  # noqa: BLE001 - a refusal before the run: the API's JSON error (500 if unexpected)
        slot.release()
        response = _error_response(exc)
        # As the DRF base's finalize_response: the request's RateLimit-* unless the refusal carries its own.
        if "RateLimit-Limit" not in response:
            for name, value in (getattr(exc, "rate_limit_headers", None) or {}).items():
                response[name] = value
        return response
    except BaseException:
        slot.release()
        raise
    if not response.streaming:
        slot.release()
    return response


class _Caller:
    """Who calls and on what, as ``fruxon.api.base`` resolves it."""

    __slots__ = ("agent", "api_key", "data", "organization", "price_entries", "rate_limit_headers")

    def __init__(self, organization, agent, api_key, rate_limit_headers, data=None, price_entries=None):
        self.organization, self.agent, self.api_key = organization, agent, api_key
        self.rate_limit_headers, self.data, self.price_entries = rate_limit_headers, data, price_entries


@functools.cache
def _drf_view():
    """``ExecuteView`` served by DRF itself (its ``as_view`` returns the async view instead): for the
    methods other than POST, whose answers (OPTIONS' description, 405, and the 401/403/404 before
    them) are the DRF base's, exactly as on every other endpoint."""
    from rest_framework.views import APIView

    from .views import ExecuteView

    return APIView.as_view.__func__(ExecuteView)


async def _execute(request, tenant: str, agent: str, slot: _Slot):
    if request.method != "POST":
        return await adb.run(_drf_view(), request, tenant=tenant, agent=agent)
    started = getattr(request, "fruxon_started", None) or time.monotonic()
    raw = raw_api_key(request)
    if raw is None and not request.META.get("HTTP_AUTHORIZATION") and settings.SESSION_COOKIE_NAME not in request.COOKIES:
        # No credentials at all: the DRF base's answer, without taking a database thread for it.
        exc = drf.NotAuthenticated()
        exc.auth_header = 'Bearer realm="fruxon"'
        raise exc
    caller = await (_key_caller(request, raw, tenant, agent) if raw is not None
                    else adb.run(_person_caller, request, tenant, agent))
    try:
        return await _run_for(request, caller, raw, slot, started)
    except Exception as exc:
        exc.rate_limit_headers = caller.rate_limit_headers
        raise


async def _run_for(request, caller: _Caller, raw: str | None, slot: _Slot, started: float):
    from .views import execute_request

    data = execute_request(caller.data if raw is None else _parse(request))
    stream = data.pop("stream", False) or EVENT_STREAM in request.META.get("HTTP_ACCEPT", "")
    prepared = await execution.aprepare(
        agent=caller.agent, input=data["input"], revision_id=data.get("revisionId"),
        conversation_key=data.get("conversationId"), api_key_id=getattr(caller.api_key, "pk", None),
        started=started, rate_limited_for=(caller.organization, caller.api_key), price_entries=caller.price_entries)
    headers = closest_rate_limit_headers(caller.rate_limit_headers, prepared.rate_decision)
    if stream:
        return await _stream(caller, prepared, data, headers, slot, started)
    outcome = await execution.arun(prepared)
    response = _run_answer(caller, outcome, data.get("conversationId"))
    for name, value in headers.items():
        response.setdefault(name, value)
    overhead = (time.monotonic() - started) * 1000.0 - outcome.result.provider_ms
    response["X-Fruxon-Overhead-Ms"] = f"{max(overhead, 0.0):.2f}"
    observability.execute_overhead(organization=caller.organization, agent=caller.agent, seconds=overhead / 1000.0)
    return response


async def _key_caller(request, raw: str, tenant: str, agent: str) -> _Caller:
    """An API key's org and agent, with ``fruxon.api.base``'s checks in its order: authentication (401),
    tenant and agent (404, a key limited to other agents 403), requests per minute (429), scope (403)."""
    from .views import ExecuteView

    now = timezone.now()
    key = refuse_inactive(await alookup_api_key(hash_credential(raw)), now)
    if key_use_is_stale(key, now):
        await adb.run(note_key_used, key, now)
    # The org's prices (a Redis round trip) are fetched while the agent is (a PostgreSQL one).
    prices = asyncio.ensure_future(pricing.acached_entries(key.organization_id))
    try:
        organization, found = await aresolve_tenant_and_agent_for_key(
            tenant=tenant, slug=agent, api_key=key, select_related=ExecuteView.agent_select_related)
        headers = None
        limits = ratelimit.limits_for("requests", organization=organization, api_key=key)
        if limits:
            decision = await ratelimit.acheck(limits)
            headers = decision.headers()
            if not decision.allowed:
                raise ratelimit.refusal(decision)
        refusal = access_refusal(ExecuteView.access["POST"], api_key=key, role=None)
        if refusal is not None:
            refusal.rate_limit_headers = headers
            raise refusal
    except BaseException:
        prices.cancel()
        raise
    return _Caller(organization, found, key, headers, price_entries=prices)


def _person_caller(request, tenant: str, agent: str) -> _Caller:
    """A person (personal token, session) or no credentials: ``ExecuteView.initial``, the DRF base's own
    code (authentication, tenant, agent grants, requests per minute, role), on this worker thread."""
    from .views import ExecuteView

    view = ExecuteView()
    view.args, view.kwargs, view.headers, view.format_kwarg = (), {"tenant": tenant, "agent": agent}, {}, None
    drf_request = view.request = view.initialize_request(request, tenant=tenant, agent=agent)
    try:
        view.initial(drf_request, tenant=tenant, agent=agent)
    except (drf.NotAuthenticated, drf.AuthenticationFailed) as exc:
        exc.auth_header = view.get_authenticate_header(drf_request)
        raise
    return _Caller(view.organization, view.agent, None, view.rate_limit_headers, drf_request.data)


def _parse(request):
    """The JSON body, as the DRF views parse it (400 malformed or too deep, 413 too large, 415)."""
    return Request(request, parsers=[StoredJSONParser()]).data


# --- answers ------------------------------------------------------------------------------------------

def _answer(body, status: int = 200) -> HttpResponse:
    return HttpResponse(_json.render(body), status=status, content_type="application/json")


def _error_response(exc: Exception) -> HttpResponse:
    if isinstance(exc, adb.PoolBusy):  # PostgreSQL answers, but this process has more work than connections
        return _overloaded()
    handled = exception_handler(exc, {"view": None})
    if handled is None:  # never: the handler maps everything; keep Django's 500 path for the unexpected
        raise exc
    response = _answer(handled.data, handled.status_code)
    for name, value in handled.items():
        if name.lower() != "content-type":  # the unrendered DRF response's default, not its type
            response[name] = value
    return response


def _body(run, conversation_key) -> dict:
    return {
        "runId": run.id, "revisionId": run.revision_id, "status": run.status, "source": run.source,
        "output": run.output,
        "usage": {"inputTokens": run.input_tokens, "cachedInputTokens": run.cached_input_tokens,
                  "outputTokens": run.output_tokens, "reasoningTokens": run.reasoning_tokens,
                  "costUsd": format(run.cost_usd, "f")},
        "latencyMs": run.latency_ms,
        "conversationId": conversation_key,
    }


def _failure(caller: _Caller, outcome) -> tuple[dict, int, dict]:
    """A run that did not finish ok: its error (code, message), HTTP status and extra headers."""
    run, result = outcome.run, outcome.result
    code = result.error["code"] if result.error else run.status
    error = {"code": code, "message": result.error["message"] if result.error else run.status}
    headers = {}
    if code == "budget_exceeded" and getattr(caller.agent, "budget", None) is not None:
        _, resets = period_bounds(caller.agent.budget.period, timezone.now())  # retry when the period resets
        headers["Retry-After"] = str(max(1, int((resets - timezone.now()).total_seconds())))
    if code == "rate_limited" and outcome.rate_refusal is not None:  # tokens per minute stopped the run
        headers.update(outcome.rate_refusal.headers())
    return error, RUN_ERROR_STATUS.get(code, RUN_ERROR_STATUS.get(run.status, RUN_FAILED_STATUS)), headers


def _run_answer(caller: _Caller, outcome, conversation_key) -> HttpResponse:
    body = _body(outcome.run, conversation_key)
    if outcome.result.ok:
        response = _answer(body)
    else:
        error, status, headers = _failure(caller, outcome)
        response = _answer(error_body(error["code"], error["message"], body), status)
        for name, value in headers.items():
            response[name] = value
    response["X-Fruxon-Run-Id"] = outcome.run.id
    return response


# --- the stream ---------------------------------------------------------------------------------------

def _event(name: str, data) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _json.render(data) + b"\n\n"


# A run that ends on one of these before it produced anything was refused, not run: JSON, not a stream.
REFUSALS = frozenset({"budget_exceeded", "rate_limited", "ledger_unavailable"})
_DONE = object()


def _under_way(name: str, payload) -> bool:
    """Has the run produced something (so it answers as a stream)? Model text or a tool call, or a step
    that finished ok; ``step.started`` alone does not count (its first model call may yet be refused)."""
    return name != "step.started" and (name != "step.completed" or payload.get("status") == "ok")


async def _stream(caller: _Caller, prepared, data: dict, headers: dict, slot: _Slot, started: float):
    """Start the run; answer 200 ``text/event-stream`` once it is under way (``_under_way``), or, if it was
    refused first (``REFUSALS``: budget, tokens per minute, ledger), the JSON answer a non-streamed
    execute gets (429/503 with ``Retry-After``), as API.md says of refusals."""
    conversation_key = data.get("conversationId")
    if not adb.SERVED_BY_ASGI:
        # Outside the ASGI server (the test client, a WSGI server) a stream is read on another event loop
        # than the view ran on: the run starts when it is read, and a refusal arrives as run.failed.
        return _streaming_response(caller, prepared, conversation_key, headers, slot, started, None, None, [],
                                   done=False)
    queue, run = _start(prepared)
    held: list = []
    item = None
    try:
        while (item := await queue.get()) is not _DONE:
            held.append(item)
            if _under_way(*item):
                break
        if item is _DONE:
            outcome = run.result()
            if not outcome.result.ok and _failure(caller, outcome)[0]["code"] in REFUSALS:
                response = _run_answer(caller, outcome, conversation_key)
                for name, value in headers.items():
                    response.setdefault(name, value)
                return response
    except BaseException:  # the client left meanwhile (or the record failed): stop the run first
        await _stop(run)
        raise
    return _streaming_response(caller, prepared, conversation_key, headers, slot, started, run, queue, held,
                               done=item is _DONE)


def _start(prepared) -> tuple[asyncio.Queue, asyncio.Future]:
    """The run in a task of its own, its events queued (``_DONE`` last)."""
    queue: asyncio.Queue = asyncio.Queue()

    async def on_event(name: str, payload) -> None:
        queue.put_nowait((name, payload))

    run = asyncio.ensure_future(execution.arun(prepared, events=on_event))
    run.add_done_callback(lambda _: queue.put_nowait(_DONE))
    return queue, run


def _streaming_response(caller, prepared, conversation_key, headers, slot, started, run, queue, held, *, done):
    response = StreamingHttpResponse(
        _events(caller, prepared, conversation_key, slot, started, run, queue, held, done=done),
        content_type=EVENT_STREAM)
    response["X-Fruxon-Run-Id"] = prepared.run_id
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # a proxy in front must pass events on as they come
    for name, value in headers.items():
        response[name] = value
    response._resource_closers.append(slot.release)
    return response


async def _stop(run: asyncio.Future) -> None:
    """Cancel the run if it still runs and wait for it: it records itself as cancelled (agents.execution.arun)."""
    if not run.done():
        run.cancel()
    try:
        await run
    except BaseException:  # noqa: BLE001 - its cancellation (or failure) is recorded or logged by arun
        pass


async def _events(caller: _Caller, prepared, conversation_key, slot: _Slot, started: float, run, queue, held,
                  *, done: bool):
    """The run as server-sent events (see the module docstring): ``run.started``, the events ``_stream``
    held back, then each as it comes. The client going away cancels this generator's task or closes it
    (Django does either): the run is cancelled, recorded and settled before its place among this
    process's executions in flight is given back."""
    try:
        yield _event("run.started", {"runId": prepared.run_id, "revisionId": prepared.revision.id,
                                     "source": prepared.source, "conversationId": conversation_key})
        if run is None:
            queue, run = _start(prepared)
        for item in held:
            yield _event(*item)
        while not done and (item := await queue.get()) is not _DONE:
            yield _event(*item)
        outcome = run.result()
        if outcome.result.ok:
            yield _event("run.completed", _body(outcome.run, conversation_key))
        else:
            error, _, _ = _failure(caller, outcome)
            error["details"] = _body(outcome.run, conversation_key)
            yield _event("run.failed", {"runId": outcome.run.id, "error": error})
        overhead = (time.monotonic() - started) * 1000.0 - outcome.result.provider_ms
        observability.execute_overhead(organization=caller.organization, agent=caller.agent,
                                       seconds=max(overhead, 0.0) / 1000.0)
    except Exception as exc:  # the run could not be recorded (the database went away mid-stream)
        logger.exception("execute stream failed")
        handled = exception_handler(exc, {"view": None})
        error = (handled.data["error"] if handled is not None
                 else {"code": "internal_error", "message": "An internal error occurred.", "details": {}})
        yield _event("run.failed", {"runId": prepared.run_id, "error": error})
    finally:
        # Django cancels this task (CancelledError here) or, when it was waiting to send, closes this
        # generator (GeneratorExit at the yield): either way the run stops now.
        if run is not None:
            await _stop(run)
        slot.release()
