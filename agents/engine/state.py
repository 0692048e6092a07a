"""Per-run state shared by all steps and sub-runs (:class:`RunState`), and the
per-(sub-)run :class:`Frame`.

Everything here lives on the run's event loop; only a sync runtime's calls leave it
(:class:`agents.engine.runtime.SyncRuntimeAdapter`). ``RunState.emit`` delivers the run's
events (:func:`agents.engine.arun`'s ``events``).

``RunState`` caches what the runtime answers for the length of one run: a
secret is resolved once per (agent, name), with the hosts it may go to, and
registered with the redactor the moment it is resolved (each use checks its
destination against those hosts); integrations and prices once per key. That keeps the
execute hot path to a handful of runtime calls however long the tool loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from .destinations import host_allowed, url_host
from .errors import ModelCallLimitReached
from .errors import RunCancelled, RunTimeout, SecretDestinationRefused
from .limits import DEFAULT_LIMITS
from .providers.base import Provider
from .runtime import AsyncRuntime, IntegrationInfo, Price, SecretValue
from .templating import Redactor
from .trace import Recorder


@dataclass(frozen=True)
class Frame:
    """One run or sub-run: which agent, on which spec and inputs, until when.

    ``chain`` lists the agents on the call chain, root first (sub-agent cycle and
    depth checks); ``parent_span_id`` is the ``subAgent`` span of a sub-run.
    """

    agent: str
    revision_id: str | None
    spec: Mapping[str, Any]
    inputs: Mapping[str, Any]
    deadline: float
    chain: tuple[str, ...]
    parent_span_id: str | None = None

    @property
    def top_level(self) -> bool:
        """The run itself, not a sub-run: only its steps send step, tool and output events."""
        return self.parent_span_id is None

    def check(self, state: RunState) -> None:
        """Raise if the run was cancelled or its deadline passed: called before each call out."""
        if state.cancel.is_set():
            raise RunCancelled("stopped: another part of the run failed")
        if time.monotonic() >= self.deadline:
            raise RunTimeout("the run passed its timeoutSeconds")


_MISSING = object()
logger = logging.getLogger(__name__)

Events = Callable[[str, dict[str, Any]], Awaitable[None]]


class RunState:
    def __init__(self, *, runtime: AsyncRuntime, providers: Mapping[str, Provider], shadow: bool,
                 execute: Callable[[Frame, RunState], Awaitable[Any]], client: httpx.AsyncClient,
                 events: Events | None = None):
        self.runtime = runtime
        self.providers = providers
        self.shadow = shadow
        # The workflow executor, injected so sub-agent calls can run a nested frame
        # without the step module importing the workflow module (which imports it).
        self.execute = execute
        self.client = client
        self.events = events
        # The host's run limits (model calls and spans per run, sub-runs included), else the defaults.
        self.limits = getattr(runtime, "limits", None) or DEFAULT_LIMITS
        self.recorder = Recorder(max_spans=self.limits.max_spans)
        self._model_calls = 0
        self.redactor = Redactor()
        # Set when a part of the run failed: other steps stop at their next call out (soft: a call in flight ends).
        self.cancel = threading.Event()
        self.usage_over_reservation = False  # a model call reported more than its reservation's bound
        self._cache: dict[tuple[str, ...], Any] = {}

    async def emit(self, name: str, data: dict[str, Any]) -> None:
        """Deliver one event to the caller's ``events``; a callback that fails is logged and not called again
        (the run goes on: it is recorded whether or not anyone watched it)."""
        if self.events is None:
            return
        try:
            await self.events(name, data)
        except Exception:
            logger.exception("the run's events callback failed; no further events are sent")
            self.events = None

    def count_model_call(self) -> None:
        """Count one model call of this run; raise :class:`ModelCallLimitReached` past ``limits.max_model_calls``."""
        if self._model_calls >= self.limits.max_model_calls:
            raise ModelCallLimitReached(f"the run reached its limit of {self.limits.max_model_calls} model calls "
                                        "(FRUXON_MAX_MODEL_CALLS_PER_RUN); the next call was not made")
        self._model_calls += 1

    async def _cached(self, key: tuple[str, ...], load: Callable[[], Awaitable[Any]]) -> Any:
        value = self._cache.get(key, _MISSING)
        if value is _MISSING:
            value = self._cache[key] = await load()
        return value

    async def secret_to(self, agent: str, name: str, url: str) -> str:
        """The value of ``name`` for a request to ``url``, if the secret may go to that URL's host.

        Raises :class:`SecretDestinationRefused` (nothing is sent) when no entry of the
        secret's allowed hosts matches; the hosts come with the value, cached per run.
        """
        async def load() -> SecretValue:
            resolved = await self.runtime.resolve_secret(name, agent=agent)
            if not isinstance(resolved, SecretValue):  # a runtime that knows no hosts: allowed nowhere
                resolved = SecretValue(str(resolved))
            self.redactor.add(name, resolved.value)
            return resolved

        resolved: SecretValue = await self._cached(("secret", agent, name), load)
        host = url_host(url)
        if not host_allowed(host, resolved.allowed_hosts):
            where = f"host {str(host)!r}" if host else "a URL with no fixed http(s) host"
            raise SecretDestinationRefused(
                f"secret {name!r} may not be sent to {where}: it is not among the secret's allowedHosts "
                "or the hosts of the integrations that use it")
        return resolved.value

    async def integration(self, slug: str) -> IntegrationInfo | None:
        return await self._cached(("integration", slug), lambda: self.runtime.get_integration(slug))

    async def agent(self, slug: str, revision_id: str | None) -> tuple[str, Mapping[str, Any]]:
        return await self._cached(("agent", slug, revision_id or ""),
                                  lambda: self.runtime.load_agent(slug, revision_id))

    async def price(self, provider: str, model: str) -> Price | None:
        return await self._cached(("price", provider, model), lambda: self.runtime.price_for(provider, model))
