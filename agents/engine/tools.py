"""Tool calls to integrations.

Wire contract (``http`` integrations): ``POST {base_url}/{tool_name}`` with the
model's arguments as the JSON body, the integration's ``headers``, and
``<auth_header>: <auth_scheme> <value>`` (default ``Authorization: Bearer``)
when the integration has a ``credentials_secret`` (resolved at call time; the
value is never recorded).
Waits never pass the run deadline (:class:`RunTimeout` if they would).

What the model gets back:

* 2xx: the response body as text (at most :data:`MAX_RESULT_CHARS`, so one large
  answer cannot blow the context window and the budget);
* non-2xx or an unreachable integration: a JSON ``{"error": ...}`` text, so the
  model can recover or explain; the span is marked ``error``. A non-2xx answer
  carries the integration's body (the destination passed the egress policy, and a
  2xx body reaches the model anyway); a failure to connect says only that it could
  not be reached, or that the egress policy refused the destination (never the
  transport error, which would tell an open port from a closed one);
* a side-effecting integration in a shadow run: not called; a synthetic result
  says it was skipped and the span is marked ``skipped``.

A missing or ``disconnected`` integration is not the model's problem to solve:
it fails the run with ``integration_unavailable``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from . import egress
from .errors import IntegrationUnavailable, RunTimeout
from .limits import loads_bounded
from .runtime import IntegrationInfo
from .transport import DeadlineReached, ResponseTooLarge, apost_json

MAX_RESULT_CHARS = 32_000
SHADOW_SKIP_REASON = "side effects in shadow mode"
USABLE_STATUSES = ("connected", "authorized")


def tool_definition(tool: Mapping[str, Any]) -> dict[str, Any]:
    """The spec's tool in the OpenAI function-tool format offered to the model."""
    return {
        "type": "function",
        "function": {
            "name": tool["name"],
            "description": tool.get("description", ""),
            "parameters": tool.get("parameters") or {"type": "object", "properties": {}},
        },
    }


def require_usable(slug: str, integration: IntegrationInfo | None) -> IntegrationInfo:
    if integration is None:
        raise IntegrationUnavailable(f"integration {slug!r} does not exist")
    if integration.status not in USABLE_STATUSES:
        raise IntegrationUnavailable(f"integration {slug!r} is {integration.status}")
    return integration


@dataclass
class ToolOutcome:
    content: str  # what the model reads
    status: str  # span status: ok | error | skipped
    output: Any  # what the span records
    attributes: dict[str, Any] = field(default_factory=dict)


def _error(message: str, **extra: Any) -> ToolOutcome:
    body = {"error": {"message": message, **extra}}
    return ToolOutcome(content=json.dumps(body), status="error", output=body)


def _parsed(text: str) -> Any:
    try:
        return loads_bounded(text)
    except ValueError:  # not JSON, or nested too deep to walk: kept as text
        return text


async def call_tool(tool: Mapping[str, Any], arguments: dict[str, Any], *, integration: IntegrationInfo,
                    resolve_secret: Callable[[str, str], Awaitable[str]], client: httpx.AsyncClient,
                    deadline: float, shadow: bool, clip: Callable[[str, int], str] | None = None) -> ToolOutcome:
    """Call one tool on a usable integration (see the module contract), on the run's event loop.

    ``clip(text, limit)`` cuts the answer's text where it is kept; the engine
    passes :meth:`~agents.engine.templating.Redactor.clip`, which redacts the
    run's secrets before it cuts (an integration may echo the credential).

    ``await resolve_secret(name, url)`` returns the credential's value for a request to
    ``url``, or raises (:class:`~agents.engine.errors.SecretDestinationRefused`) before
    anything is sent.
    """
    attributes = {"integration": integration.slug, "sideEffects": integration.side_effects}
    if shadow and integration.side_effects:
        body = {"skipped": SHADOW_SKIP_REASON,
                "message": "This tool was not called: it has side effects and this is a shadow run."}
        return ToolOutcome(content=json.dumps(body), status="skipped", output=body,
                           attributes={**attributes, "skipped": SHADOW_SKIP_REASON})

    url = f"{integration.base_url.rstrip('/')}/{tool['name']}"
    headers = {"Accept": "application/json", **integration.headers}
    if integration.credentials_secret:
        # The URL the request goes to decides whether the credential may go with it.
        value = await resolve_secret(integration.credentials_secret, url)
        headers[integration.auth_header] = f"{integration.auth_scheme} {value}" if integration.auth_scheme else value
    try:
        reply = await apost_json(client, url, payload=arguments, headers=headers, deadline=deadline)
    except DeadlineReached:
        raise RunTimeout(f"tool {tool['name']!r} did not answer before the run deadline") from None
    except (httpx.HTTPError, ResponseTooLarge) as exc:
        # Generic on purpose: the exception's class or text would tell an open port from a closed one.
        outcome = _error(egress.DENIED_MESSAGE if egress.is_denied(exc)
                         else f"integration {integration.slug!r} could not be reached")
        outcome.attributes.update(attributes)
        return outcome

    text = reply.text()
    cut = clip or (lambda value, limit: value[:limit])
    attributes["httpStatus"] = reply.status
    if 200 <= reply.status < 300:
        if len(text) > MAX_RESULT_CHARS:
            attributes["truncated"] = True
            text = cut(text, MAX_RESULT_CHARS)
        return ToolOutcome(content=text, status="ok", output=_parsed(text), attributes=attributes)
    outcome = _error(f"integration {integration.slug!r} answered HTTP {reply.status}", status=reply.status,
                     body=_parsed(cut(text, 2000)))
    outcome.attributes.update(attributes)
    return outcome
