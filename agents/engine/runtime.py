"""What the engine needs from its host: the :class:`Runtime` protocol and :class:`RunContext`.

The engine never touches the database. The Django layer implements
:class:`Runtime` (secrets, integrations, sub-agent revisions, prices, budget
hooks); :class:`agents.engine.testing.StaticRuntime` is an in-memory one.

The engine is async (:func:`agents.engine.arun`); its host services come in two forms:

* :class:`AsyncRuntime`: coroutines, awaited on the run's event loop (what an async
  server implements, with an async DB pool and ``redis.asyncio``); a model call's
  reservation is a value ``before_model_call`` returns and ``after_model_call`` gets back,
  so concurrent steps on one loop never mix theirs up;
* :class:`Runtime`: the sync protocol (Django's ``DjangoRuntime``, Celery workers).
  :func:`as_async_runtime` wraps one in a :class:`SyncRuntimeAdapter`, which runs its
  methods without blocking a shared loop and keeps each *lane* (the run's main path, each
  parallel step: :class:`agents.engine.aio.Lane`) on one thread, so a sync runtime that
  keeps its open reservations per thread pairs them exactly as before.

Sync runtime methods may be called from several threads at once (parallel steps run
in their own lanes), so implementations must be thread-safe. Within one run the
engine caches secrets, integrations and prices, so each is asked for at most once
per run (per agent, for secrets).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

from .aio import CURRENT_LANE, Lane
from .limits import Limits
from .spec import DEFAULT_TIMEOUT_SECONDS

if TYPE_CHECKING:
    import httpx


@dataclass(frozen=True)
class IntegrationInfo:
    """An integration as the engine sees it.

    Tools POST to ``{base_url}/{tool_name}``. ``headers`` are sent as given;
    ``credentials_secret`` names the secret whose value goes into the
    ``auth_header`` header as ``"<auth_scheme> <value>"`` (just the value when the
    scheme is empty); resolved at call time, never recorded.
    ``status`` is ``connected``, ``authorized`` or ``disconnected``; a disconnected
    integration fails the run with ``integration_unavailable``.
    """

    slug: str
    base_url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    credentials_secret: str | None = None
    side_effects: bool = False
    status: str = "connected"
    auth_header: str = "Authorization"
    auth_scheme: str = "Bearer"


@dataclass(frozen=True)
class SecretValue:
    """A resolved secret: its value and the host entries it may be sent to.

    ``allowed_hosts`` holds the secret's ``allowedHosts`` plus the hosts of the
    integrations whose credentials it is, as entries of
    :func:`agents.engine.destinations.normalize_host_entry` (``host`` or ``host:port``).
    The engine sends the value only to a URL one of them matches; empty means nowhere.
    """

    value: str
    allowed_hosts: frozenset[str] = frozenset()

    def __repr__(self) -> str:  # never the value, whatever prints this
        return f"SecretValue(value=<redacted>, allowed_hosts={sorted(self.allowed_hosts)!r})"


def _decimal(value: Any) -> Decimal | None:
    if value is None or isinstance(value, Decimal):
        return value
    return Decimal(str(value))


@dataclass(frozen=True)
class Price:
    """USD per million tokens. Cached input and reasoning fall back to input and output prices.

    Usage follows OpenAI's accounting: ``input_tokens`` includes cached ones and
    ``output_tokens`` includes reasoning ones; each subset is charged at its own
    price and the rest at the base price (see :func:`agents.engine.pricing.cost_usd`).
    """

    input: Decimal
    output: Decimal
    cached_input: Decimal | None = None
    reasoning: Decimal | None = None

    def __post_init__(self) -> None:
        # Accept ints, floats and strings from config; compute in Decimal.
        for name in ("input", "output", "cached_input", "reasoning"):
            object.__setattr__(self, name, _decimal(getattr(self, name)))


class Runtime(Protocol):
    """Host services for a run. Subclass it to inherit the no-op budget hooks.

    * ``resolve_secret(name, agent=...)``: the secret's current value and the hosts it
      may be sent to, as a :class:`SecretValue` (a bare ``str`` is taken as a value
      allowed nowhere, so it is never sent); raises
      :class:`~agents.engine.errors.SecretNotFound` or
      :class:`~agents.engine.errors.SecretNotAllowed` (agent outside ``allowedAgents``).
      ``agent`` is the slug of the agent whose spec references the secret (a
      sub-agent's own slug inside a sub-run).
    * ``get_integration(slug)``: :class:`IntegrationInfo` or ``None`` if there is none.
    * ``load_agent(slug, revision_id)``: ``(revision_id, spec)`` of the pinned
      revision, or of the deployed one when ``revision_id`` is ``None``; raises
      :class:`~agents.engine.errors.AgentNotFound` or
      :class:`~agents.engine.errors.NotDeployed`.
    * ``price_for(provider, model)``: :class:`Price` or ``None`` (cost counts as 0).
    * ``before_model_call(estimate_usd, tokens=...)``: called before every model call with the
      worst-case cost (a ``Decimal``) and the upper bound of its tokens (input bound plus
      ``maxTokens``); raise :class:`~agents.engine.errors.BudgetExceeded` (or another
      ``EngineError``, e.g. a rate limit) to refuse it.
    * ``after_model_call(actual_usd, tokens=...)``: called exactly once after every model call
      whose ``before_model_call`` returned, with the actual cost (``Decimal('0')``
      when the call failed) and the tokens used (input plus output; 0 when it failed),
      so a reservation can always be settled.
    * ``http_client``: not used by the engine any more (it is async): provider and tool
      calls go through the run's ``httpx.AsyncClient`` (:class:`AsyncRuntime`), by default
      :func:`agents.engine.transport.default_async_client`. Kept for hosts that set it.
    * ``limits``: the run limits (:class:`~agents.engine.limits.Limits`: model calls
      and spans per run), or ``None`` for the engine's defaults.
    """

    http_client: httpx.Client | None = None
    limits: Limits | None = None

    def resolve_secret(self, name: str, *, agent: str) -> SecretValue: ...

    def get_integration(self, slug: str) -> IntegrationInfo | None: ...

    def load_agent(self, slug: str, revision_id: str | None) -> tuple[str, dict[str, Any]]: ...

    def price_for(self, provider: str, model: str) -> Price | None: ...

    def before_model_call(self, estimate_usd: Decimal, tokens: int | None = None) -> None:
        """Budget hook; the default admits every call."""

    def after_model_call(self, actual_usd: Decimal, tokens: int | None = None) -> None:
        """Budget hook; the default records nothing."""


@dataclass(frozen=True)
class RunContext:
    """Who runs, on what, and until when.

    ``deadline`` is a :func:`time.monotonic` timestamp. Leave it ``None`` and
    :func:`agents.engine.runner.run` sets it to "now + the spec's
    ``timeoutSeconds``" (default 60); or build it with :meth:`for_spec` to count
    time already spent before the run (authentication, revision lookup).
    ``shadow`` runs never call tools whose integration has side effects.
    """

    agent: str
    revision_id: str | None = None
    shadow: bool = False
    deadline: float | None = None

    @classmethod
    def for_spec(cls, spec: Mapping[str, Any], *, agent: str, revision_id: str | None = None,
                 shadow: bool = False, started: float | None = None) -> RunContext:
        start = time.monotonic() if started is None else started
        return cls(agent=agent, revision_id=revision_id, shadow=shadow,
                   deadline=start + timeout_seconds(spec))


def timeout_seconds(spec: Mapping[str, Any]) -> float:
    """The spec's ``timeoutSeconds``, or the default of 60."""
    value = spec.get("timeoutSeconds", DEFAULT_TIMEOUT_SECONDS)
    return float(value)


class AsyncRuntime(Protocol):
    """Host services for a run, async (see the module docstring). Subclass it to inherit the no-op hooks.

    The same contract as :class:`Runtime`, method for method, with these differences:

    * every method is a coroutine, awaited on the run's event loop: it must not block it
      (use an async pool; run a blocking call in a thread);
    * ``before_model_call(estimate_usd, *, tokens)`` returns the call's reservation (any
      value, ``None`` included), and ``after_model_call(actual_usd, *, tokens, reservation)``
      gets that value back: steps run concurrently on one loop, so a reservation cannot be
      found by thread. ``after_model_call`` is awaited exactly once for every
      ``before_model_call`` that returned, even when the run is cancelled meanwhile;
    * ``http_client``: the ``httpx.AsyncClient`` for provider and tool calls (it must go
      through the egress policy: :func:`agents.engine.egress.async_client`), or ``None`` for
      :func:`agents.engine.transport.default_async_client` (one pooled client per event loop).
    """

    http_client: httpx.AsyncClient | None = None
    limits: Limits | None = None

    async def resolve_secret(self, name: str, *, agent: str) -> SecretValue: ...

    async def get_integration(self, slug: str) -> IntegrationInfo | None: ...

    async def load_agent(self, slug: str, revision_id: str | None) -> tuple[str, dict[str, Any]]: ...

    async def price_for(self, provider: str, model: str) -> Price | None: ...

    async def before_model_call(self, estimate_usd: Decimal, *, tokens: int) -> Any:
        """Budget hook; the default admits every call and reserves nothing."""
        return None

    async def after_model_call(self, actual_usd: Decimal, *, tokens: int, reservation: Any) -> None:
        """Budget hook; the default records nothing."""


def _accepts_tokens(method: Any) -> bool:
    try:
        parameters = inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False
    return "tokens" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


class SyncRuntimeAdapter(AsyncRuntime):
    """A sync :class:`Runtime` seen as an :class:`AsyncRuntime`.

    Each call runs in the current lane (:data:`agents.engine.aio.CURRENT_LANE`): inline on
    the loop's thread for an inline lane (the sync :func:`agents.engine.run`, whose loop is
    private to the run, so ``DjangoRuntime`` keeps the caller's DB connection and test
    transaction), otherwise on the lane's own worker thread, so the loop never blocks and a
    lane's ``before_model_call`` and ``after_model_call`` meet on one thread, as a runtime
    keeping its reservations per thread needs. Outside any lane a call gets a thread of its own.
    ``tokens`` is passed on only to hooks that accept it. The sync runtime's ``http_client``
    (an ``httpx.Client``) cannot serve an async run: ``http_client`` is ``None`` unless it is an
    ``httpx.AsyncClient``.
    """

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.limits = getattr(runtime, "limits", None)
        client = getattr(runtime, "http_client", None)
        self.http_client = client if _is_async_client(client) else None
        self._before_tokens = _accepts_tokens(runtime.before_model_call)
        self._after_tokens = _accepts_tokens(runtime.after_model_call)

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        lane = CURRENT_LANE.get()
        if lane is None:
            lane = Lane()
            try:
                return await lane.call(fn, *args, **kwargs)
            finally:
                lane.close()
        return await lane.call(fn, *args, **kwargs)

    async def resolve_secret(self, name: str, *, agent: str) -> SecretValue:
        return await self._call(self.runtime.resolve_secret, name, agent=agent)

    async def get_integration(self, slug: str) -> IntegrationInfo | None:
        return await self._call(self.runtime.get_integration, slug)

    async def load_agent(self, slug: str, revision_id: str | None) -> tuple[str, dict[str, Any]]:
        return await self._call(self.runtime.load_agent, slug, revision_id)

    async def price_for(self, provider: str, model: str) -> Price | None:
        return await self._call(self.runtime.price_for, provider, model)

    async def before_model_call(self, estimate_usd: Decimal, *, tokens: int) -> Any:
        extra = {"tokens": tokens} if self._before_tokens else {}
        await self._call(self.runtime.before_model_call, estimate_usd, **extra)
        return None

    async def after_model_call(self, actual_usd: Decimal, *, tokens: int, reservation: Any) -> None:
        extra = {"tokens": tokens} if self._after_tokens else {}
        await self._call(self.runtime.after_model_call, actual_usd, **extra)


def _is_async_client(client: Any) -> bool:
    if client is None:
        return False
    import httpx

    return isinstance(client, httpx.AsyncClient)


def is_async_runtime(runtime: Any) -> bool:
    """Does ``runtime`` implement :class:`AsyncRuntime` (its hooks are coroutine functions)?"""
    return inspect.iscoroutinefunction(getattr(runtime, "before_model_call", None))


def as_async_runtime(runtime: Runtime | AsyncRuntime) -> AsyncRuntime:
    """``runtime`` itself when it is async, else a :class:`SyncRuntimeAdapter` around it."""
    return runtime if is_async_runtime(runtime) else SyncRuntimeAdapter(runtime)  # type: ignore[return-value]
