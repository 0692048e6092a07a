"""Per-run state shared by all threads and sub-runs (:class:`RunState`), and the
per-(sub-)run :class:`Frame`.

``RunState`` caches what the runtime answers for the length of one run: a
secret is resolved once per (agent, name), with the hosts it may go to, and
registered with the redactor the moment it is resolved (each use checks its
destination against those hosts); integrations and prices once per key. That keeps the
execute hot path to a handful of runtime calls however long the tool loop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from .destinations import host_allowed, url_host
from .errors import ModelCallLimitReached
from .errors import RunCancelled, RunTimeout, SecretDestinationRefused
from .limits import DEFAULT_LIMITS
from .providers.base import Provider
from .runtime import IntegrationInfo, Price, Runtime, SecretValue
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

    def check(self, state: RunState) -> None:
        """Raise if the run was cancelled or its deadline passed: called before each call out."""
        if state.cancel.is_set():
            raise RunCancelled("stopped: another part of the run failed")
        if time.monotonic() >= self.deadline:
            raise RunTimeout("the run passed its timeoutSeconds")


_MISSING = object()


class RunState:
    def __init__(self, *, runtime: Runtime, providers: Mapping[str, Provider], shadow: bool,
                 execute: Callable[[Frame, RunState], Any], client: httpx.Client):
        self.runtime = runtime
        self.providers = providers
        self.shadow = shadow
        # The workflow executor, injected so sub-agent calls can run a nested frame
        # without the step module importing the workflow module (which imports it).
        self.execute = execute
        self.client = client
        # The host's run limits (model calls and spans per run, sub-runs included), else the defaults.
        self.limits = getattr(runtime, "limits", None) or DEFAULT_LIMITS
        self.recorder = Recorder(max_spans=self.limits.max_spans)
        self._model_calls = 0
        self.redactor = Redactor()
        self.cancel = threading.Event()
        self.usage_over_reservation = False  # a model call reported more than its reservation's bound
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, ...], Any] = {}

    def count_model_call(self) -> None:
        """Count one model call of this run; raise :class:`ModelCallLimitReached` past ``limits.max_model_calls``."""
        with self._lock:
            if self._model_calls >= self.limits.max_model_calls:
                raise ModelCallLimitReached(f"the run reached its limit of {self.limits.max_model_calls} model calls "
                                            "(FRUXON_MAX_MODEL_CALLS_PER_RUN); the next call was not made")
            self._model_calls += 1

    def _cached(self, key: tuple[str, ...], load: Callable[[], Any]) -> Any:
        with self._lock:
            value = self._cache.get(key, _MISSING)
        if value is _MISSING:
            # Loaded outside the lock: a slow runtime must not serialize parallel steps.
            value = load()
            with self._lock:
                self._cache[key] = value
        return value

    def secret_to(self, agent: str, name: str, url: str) -> str:
        """The value of ``name`` for a request to ``url``, if the secret may go to that URL's host.

        Raises :class:`SecretDestinationRefused` (nothing is sent) when no entry of the
        secret's allowed hosts matches; the hosts come with the value, cached per run.
        """
        def load() -> SecretValue:
            resolved = self.runtime.resolve_secret(name, agent=agent)
            if not isinstance(resolved, SecretValue):  # a runtime that knows no hosts: allowed nowhere
                resolved = SecretValue(str(resolved))
            self.redactor.add(name, resolved.value)
            return resolved

        resolved: SecretValue = self._cached(("secret", agent, name), load)
        host = url_host(url)
        if not host_allowed(host, resolved.allowed_hosts):
            where = f"host {str(host)!r}" if host else "a URL with no fixed http(s) host"
            raise SecretDestinationRefused(
                f"secret {name!r} may not be sent to {where}: it is not among the secret's allowedHosts "
                "or the hosts of the integrations that use it")
        return resolved.value

    def integration(self, slug: str) -> IntegrationInfo | None:
        return self._cached(("integration", slug), lambda: self.runtime.get_integration(slug))

    def agent(self, slug: str, revision_id: str | None) -> tuple[str, Mapping[str, Any]]:
        return self._cached(("agent", slug, revision_id or ""), lambda: self.runtime.load_agent(slug, revision_id))

    def price(self, provider: str, model: str) -> Price | None:
        return self._cached(("price", provider, model), lambda: self.runtime.price_for(provider, model))
