"""What the engine needs from its host: the :class:`Runtime` protocol and :class:`RunContext`.

The engine never touches the database. The Django layer implements
:class:`Runtime` (secrets, integrations, sub-agent revisions, prices, budget
hooks); :class:`agents.engine.testing.StaticRuntime` is an in-memory one.

Runtime methods may be called from several threads at once (independent steps
run in parallel), so implementations must be thread-safe. Within one run the
engine caches secrets, integrations and prices, so each is asked for at most once
per run (per agent, for secrets).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

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
    * ``before_model_call(estimate_usd)``: called before every model call with the
      worst-case cost (a ``Decimal``); raise
      :class:`~agents.engine.errors.BudgetExceeded` to refuse it.
    * ``after_model_call(actual_usd)``: called exactly once after every model call
      whose ``before_model_call`` returned, with the actual cost (``Decimal('0')``
      when the call failed), so a reservation can always be settled.
    * ``http_client``: a shared ``httpx.Client`` for provider and tool calls, or
      ``None`` for the engine's module-level client.
    * ``limits``: the run limits (:class:`~agents.engine.limits.Limits`: model calls
      and spans per run), or ``None`` for the engine's defaults.
    """

    http_client: httpx.Client | None = None
    limits: Limits | None = None

    def resolve_secret(self, name: str, *, agent: str) -> SecretValue: ...

    def get_integration(self, slug: str) -> IntegrationInfo | None: ...

    def load_agent(self, slug: str, revision_id: str | None) -> tuple[str, dict[str, Any]]: ...

    def price_for(self, provider: str, model: str) -> Price | None: ...

    def before_model_call(self, estimate_usd: Decimal) -> None:
        """Budget hook; the default admits every call."""

    def after_model_call(self, actual_usd: Decimal) -> None:
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
