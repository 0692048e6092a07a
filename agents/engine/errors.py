"""Exception types of the engine.

Two families:

* Caller errors raised out of :func:`agents.engine.runner.run` before any work
  starts: :class:`SpecError` (the spec is invalid) and :class:`InputError` (the
  execute input does not match the spec's declared inputs). The HTTP layer maps
  both to 400.
* :class:`EngineError` subclasses, raised inside a run. Each carries the run
  ``status`` it ends the run with and the error ``code`` recorded on the run
  (``RunResult.error``). The runner catches them; they never escape ``run()``.

Messages name things (a secret's name, a step, an agent) and never carry secret
values; the runner additionally redacts every message before recording it.
"""

from __future__ import annotations

from typing import Any


class SpecError(ValueError):
    """The spec failed :func:`agents.engine.spec.validate_spec`.

    ``problems`` is the list of :class:`agents.engine.spec.SpecProblem`.
    """

    def __init__(self, problems: list[Any]):
        self.problems = list(problems)
        first = self.problems[0] if self.problems else None
        summary = f"{first.path}: {first.message}" if first else "invalid spec"
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        super().__init__(summary + more)


class InputError(ValueError):
    """The execute input does not match the spec's ``inputs``.

    ``errors`` is a list of ``{"path": "input.<name>", "message": str}``.
    """

    def __init__(self, errors: list[dict[str, str]]):
        self.errors = list(errors)
        super().__init__("; ".join(f"{e['path']}: {e['message']}" for e in self.errors) or "invalid input")


class EngineError(Exception):
    """Base of the errors that end a run. ``status`` and ``code`` go on the run."""

    status = "error"
    code = "engine_error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class TemplateError(EngineError, ValueError):
    """A ``{{...}}`` reference could not be rendered; the message names it."""

    code = "template_error"


class ProviderError(EngineError):
    """The model provider failed (HTTP error, malformed answer, retries exhausted).

    ``provider_ms`` is the time already spent waiting on the provider, so the
    overhead figure stays honest for failed runs too.
    """

    code = "provider_error"

    def __init__(self, message: str, *, provider_ms: float = 0.0):
        super().__init__(message)
        self.provider_ms = provider_ms


class ProviderTimeout(ProviderError):
    """The provider did not answer before the run deadline."""

    status = "timeout"
    code = "provider_timeout"


class RunTimeout(EngineError):
    """The run deadline passed outside a provider call (tool call, between steps)."""

    status = "timeout"
    code = "timeout"


class BudgetExceeded(EngineError):
    """Raised by ``Runtime.before_model_call`` when the budget refuses the estimate."""

    status = "budget_exceeded"
    code = "budget_exceeded"


class MaxToolCallsExceeded(EngineError):
    """A step's model asked for more tool calls than its ``maxToolCalls``."""

    status = "max_tool_calls"
    code = "max_tool_calls"


class IntegrationUnavailable(EngineError):
    """A tool's integration is missing or ``disconnected``."""

    code = "integration_unavailable"


class SecretNotFound(EngineError):
    """``{{secret.NAME}}`` names a secret that does not exist in the organization."""

    code = "unknown_secret"


class SecretNotAllowed(EngineError):
    """The secret exists but the agent is outside its ``allowedAgents``."""

    code = "secret_not_allowed"


class SecretDestinationRefused(EngineError):
    """A secret would go to a host outside the hosts it may be sent to (``allowedHosts``
    and its integrations' hosts), or from a position that is not a credential. Nothing was sent.
    The message names the secret and the host, never the value."""

    code = "secret_destination"


class AgentNotFound(EngineError):
    """A sub-agent (or its pinned revision) does not exist."""

    code = "subagent_not_found"


class NotDeployed(EngineError):
    """An unpinned sub-agent has no deployed revision."""

    code = "subagent_not_deployed"


class SubAgentCycle(EngineError):
    """A sub-agent call would re-enter an agent already on the call chain."""

    code = "subagent_cycle"


class SubAgentDepth(EngineError):
    """Sub-agents nest deeper than the engine allows."""

    code = "subagent_depth"


class SubAgentSpecInvalid(EngineError):
    """A sub-agent's stored revision does not pass spec validation."""

    code = "invalid_spec"


class ModelCallLimitReached(EngineError):
    """The run (sub-runs included) already made its ``Limits.max_model_calls`` model calls."""

    code = "max_model_calls_per_run"


class SpanLimitReached(EngineError):
    """The run (sub-runs included) already recorded its ``Limits.max_spans`` spans."""

    code = "max_spans_per_run"


class RunCancelled(EngineError):
    """Another part of the same run failed; parallel work stops at its next check.

    Only ever a span status: the run itself reports the failure that caused it. (A run
    whose caller cancelled it ends with status ``cancelled`` too, through
    :class:`asyncio.CancelledError`: see :func:`agents.engine.arun`.)
    """

    status = "cancelled"
    code = "cancelled"
