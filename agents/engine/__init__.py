"""Fruxon's agent engine: pure Python, no Django or ORM.

The Django layer calls :func:`run` with a revision spec, the execute input, a
:class:`RunContext` and its own :class:`Runtime`; it gets back a
:class:`RunResult` to record. :func:`validate_spec`, :func:`content_hash` and the
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
from .runner import run
from .runtime import IntegrationInfo, Price, RunContext, Runtime, SecretValue
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
    "TemplateError",
    "Totals",
    "canonical_json",
    "content_hash",
    "referenced_integrations",
    "referenced_secrets",
    "referenced_subagents",
    "run",
    "validate_inputs",
    "validate_spec",
]
