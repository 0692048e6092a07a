"""Fruxon's agent engine: pure Python, no Django or ORM, async.

A host awaits :func:`arun` with a revision spec, the execute input, a
:class:`RunContext`, its :class:`AsyncRuntime` (or a sync :class:`Runtime`) and,
to stream, an ``events`` callback; it gets back a :class:`RunResult` to record
(also when the run was cancelled). Sync callers (Celery workers, sync views) call
:func:`run`, which drives the same :func:`arun` on the calling thread's event loop. :func:`validate_spec`, :func:`content_hash` and the
``referenced_*`` helpers serve revision creation and readiness checks.
"""

from .errors import (
    AgentNotFound,
    BudgetExceeded,
    EngineError,
    InputError,
    NotDeployed,
    ProviderError,
    ProviderTimeout,
    SecretDestinationRefused,
    SecretNotAllowed,
    SecretNotFound,
    SpecError,
    TemplateError,
)
from .inputs import validate_inputs
from .result import RunResult, SpanRecord, Totals
from .runner import arun, run
from .runtime import AsyncRuntime, IntegrationInfo, Price, RunContext, Runtime, SecretValue, SyncRuntimeAdapter
from .spec import (
    SpecProblem,
    SubAgentRef,
    canonical_json,
    content_hash,
    referenced_integrations,
    referenced_secrets,
    referenced_subagents,
    validate_spec,
)

__all__ = [
    "AgentNotFound",
    "AsyncRuntime",
    "BudgetExceeded",
    "EngineError",
    "InputError",
    "IntegrationInfo",
    "NotDeployed",
    "Price",
    "ProviderError",
    "ProviderTimeout",
    "RunContext",
    "RunResult",
    "Runtime",
    "SecretDestinationRefused",
    "SecretNotAllowed",
    "SecretNotFound",
    "SecretValue",
    "SpanRecord",
    "SpecError",
    "SpecProblem",
    "SubAgentRef",
    "SyncRuntimeAdapter",
    "TemplateError",
    "Totals",
    "arun",
    "canonical_json",
    "content_hash",
    "referenced_integrations",
    "referenced_secrets",
    "referenced_subagents",
    "run",
    "validate_inputs",
    "validate_spec",
]
