"""Test doubles for the engine, usable by tests, the demo and the benchmark.

* :class:`StaticRuntime`: an in-memory :class:`~agents.engine.runtime.Runtime`
  (secrets with allowed agents, integrations, agents with revisions, prices, an
  optional hard budget cap) that records what the engine asked of it.
* :func:`start_json_server`: a loopback HTTP/1.1 server on ``127.0.0.1`` and a
  free port, answering every request through a Python function.
* :func:`start_openai_stub`: such a server speaking the OpenAI chat-completions
  format, answering after ``latency_ms``, optionally following a script.

Servers run in a daemon thread; call ``server.close()`` (or use ``with``).
Nothing here needs Django or pytest.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from .destinations import url_host
from .errors import AgentNotFound, BudgetExceeded, NotDeployed, SecretNotAllowed, SecretNotFound
from .runtime import IntegrationInfo, Price, Runtime, SecretValue

# --- runtime ---------------------------------------------------------------------


@dataclass(frozen=True)
class StaticSecret:
    """A secret's value, the agents that may use it and the hosts it may be sent to
    (besides the hosts of the integrations whose credentials it is). No hosts: nowhere."""

    value: str
    allowed_agents: tuple[str, ...] = ("*",)
    allowed_hosts: tuple[str, ...] = ()


@dataclass
class StaticAgent:
    revisions: dict[str, dict[str, Any]]
    deployed: str | None = None


class StaticRuntime(Runtime):
    """In-memory runtime. ``budget_usd`` (optional) is a hard cap enforced like the real ledger:
    a call is admitted only if ``spent + reserved + estimate <= budget_usd``."""

    def __init__(self, *, secrets: Mapping[str, str | StaticSecret] | None = None,
                 integrations: Mapping[str, IntegrationInfo] | None = None,
                 agents: Mapping[str, StaticAgent] | None = None,
                 prices: Mapping[tuple[str, str], Price] | None = None,
                 budget_usd: Decimal | str | None = None, http_client: httpx.Client | None = None):
        self.secrets = {name: value if isinstance(value, StaticSecret) else StaticSecret(value)
                        for name, value in (secrets or {}).items()}
        self.integrations = dict(integrations or {})
        self.agents = dict(agents or {})
        self.prices = dict(prices or {})
        self.budget_usd = Decimal(str(budget_usd)) if budget_usd is not None else None
        self.http_client = http_client
        self.spent = Decimal(0)
        self.reserved = Decimal(0)
        self.estimates: list[Decimal] = []
        self.actuals: list[Decimal] = []
        self.secret_requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._pending = threading.local()  # each thread settles the reservation it made

    def resolve_secret(self, name: str, *, agent: str) -> SecretValue:
        with self._lock:
            self.secret_requests.append((name, agent))
        secret = self.secrets.get(name)
        if secret is None:
            raise SecretNotFound(f"secret {name!r} does not exist")
        if "*" not in secret.allowed_agents and agent not in secret.allowed_agents:
            raise SecretNotAllowed(f"agent {agent!r} is not allowed to use secret {name!r}")
        # As the Django runtime does: the hosts of the integrations it is the credentials of count too.
        hosts = set(secret.allowed_hosts)
        hosts |= {str(host) for integration in self.integrations.values()
                  if integration.credentials_secret == name and (host := url_host(integration.base_url))}
        return SecretValue(secret.value, frozenset(hosts))

    def get_integration(self, slug: str) -> IntegrationInfo | None:
        return self.integrations.get(slug)

    def load_agent(self, slug: str, revision_id: str | None) -> tuple[str, dict[str, Any]]:
        agent = self.agents.get(slug)
        if agent is None:
            raise AgentNotFound(f"agent {slug!r} does not exist")
        if revision_id is None:
            if agent.deployed is None:
                raise NotDeployed(f"agent {slug!r} has no deployed revision")
            revision_id = agent.deployed
        if revision_id not in agent.revisions:
            raise AgentNotFound(f"agent {slug!r} has no revision {revision_id}")
        return revision_id, agent.revisions[revision_id]

    def price_for(self, provider: str, model: str) -> Price | None:
        return self.prices.get((provider, model))

    def before_model_call(self, estimate_usd: Decimal) -> None:
        with self._lock:
            self.estimates.append(estimate_usd)
            if self.budget_usd is not None and self.spent + self.reserved + estimate_usd > self.budget_usd:
                raise BudgetExceeded(f"budget of {self.budget_usd} USD would be exceeded")
            self.reserved += estimate_usd
        self._pending.estimate = estimate_usd

    def after_model_call(self, actual_usd: Decimal) -> None:
        estimate = getattr(self._pending, "estimate", Decimal(0))
        self._pending.estimate = Decimal(0)
        with self._lock:
            self.actuals.append(actual_usd)
            self.reserved -= estimate
            self.spent += actual_usd


# --- loopback HTTP servers -------------------------------------------------------


@dataclass(frozen=True)
class StubRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any  # parsed JSON, or None
    raw: bytes = b""  # the body's bytes as received (what a webhook signature covers)


@dataclass
class StubReply:
    status: int = 200
    body: Any = None  # JSON-encoded unless it is bytes
    headers: dict[str, str] = field(default_factory=dict)
    delay_ms: float = 0


class StubServer(ThreadingHTTPServer):
    """A loopback server; ``requests`` lists every request received, in order
    (unless ``record`` is false: a long benchmark should not hoard every body)."""

    daemon_threads = True
    block_on_close = False
    # Benchmarks open hundreds of connections at once; the default backlog is 5.
    request_queue_size = 1024

    def __init__(self, handler: Callable[[StubRequest], StubReply], *, record: bool = True):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.handler = handler
        self.record = record
        self.requests: list[StubRequest] = []
        self.lock = threading.Lock()
        self.closing = threading.Event()  # wakes delayed replies so close() is prompt
        # A short poll interval keeps close() (which waits for the serve loop) quick.
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                                       name="fruxon-stub", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def close(self) -> None:
        self.closing.set()
        self.shutdown()
        self.server_close()
        self.thread.join(timeout=5)

    def __enter__(self) -> StubServer:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so clients pool connections as with a real provider
    server: StubServer

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        request = StubRequest(self.command, self.path, dict(self.headers.items()), body, raw)
        if self.server.record:
            with self.server.lock:
                self.server.requests.append(request)
        try:
            reply = self.server.handler(request)
        except Exception as exc:  # a broken handler answers 500 instead of hanging the client
            reply = StubReply(500, {"error": {"message": f"stub handler failed: {exc!r}"}})
        if reply.delay_ms and self.server.closing.wait(reply.delay_ms / 1000.0):
            return
        payload = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (its timeout); nothing to answer

    do_POST = _serve
    do_GET = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: test output should show failures, not access logs."""


def start_json_server(handler: Callable[[StubRequest], StubReply], *, record: bool = True) -> tuple[str, StubServer]:
    """Start a loopback server answering through ``handler``; return ``(base_url, server)``."""
    server = StubServer(handler, record=record)
    server.thread.start()
    return server.base_url, server


def _last_user_content(body: Any) -> str:
    messages = body.get("messages") if isinstance(body, dict) else None
    for message in reversed(messages or []):
        if isinstance(message, dict) and message.get("role") == "user" and isinstance(message.get("content"), str):
            return message["content"]
    return ""


def _completion(entry: Mapping[str, Any], request: StubRequest, index: int) -> dict[str, Any]:
    content = entry.get("content", f"stub: {_last_user_content(request.body)}")
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if entry.get("toolCalls"):
        message["tool_calls"] = [
            {"id": f"call_{index}_{position}", "type": "function",
             "function": {"name": call["name"], "arguments": json.dumps(call.get("arguments", {}))}}
            for position, call in enumerate(entry["toolCalls"])
        ]
    prompt_chars = len(json.dumps((request.body or {}).get("messages", [])))
    usage = entry.get("usage") or {"prompt_tokens": math.ceil(prompt_chars / 4),
                                    "completion_tokens": math.ceil(len(content or "") / 4)}
    return {
        "id": f"chatcmpl-stub-{index}",
        "object": "chat.completion",
        "model": (request.body or {}).get("model", "stub"),
        "choices": [{"index": 0, "message": message,
                     "finish_reason": "tool_calls" if entry.get("toolCalls") else "stop"}],
        "usage": usage,
    }


def start_openai_stub(latency_ms: float = 0, script: list[Mapping[str, Any]] | None = None, *,
                      record: bool = True) -> tuple[str, StubServer]:
    """An OpenAI-compatible chat-completions server on loopback; returns ``(base_url, server)``.

    ``base_url`` ends in ``/v1`` (use it as the model's ``baseUrl``). The k-th
    request to ``/v1/chat/completions`` plays ``script[k]`` (the last repeats);
    without a script every answer is ``"stub: " + the last user message``. Entries:

    * a completion: ``{"content": "...", "toolCalls": [{"name", "arguments"}],
      "usage": {OpenAI usage object}, "delayMs": n}``;
    * an HTTP failure: ``{"status": 429, "headers": {"Retry-After": "0"},
      "body": {...}, "delayMs": n}``;
    * a hang: any entry with a ``delayMs`` beyond the client's timeout.

    ``delayMs`` defaults to ``latency_ms``. ``record=False`` keeps ``server.requests``
    empty, for long benchmarks.
    """
    counter = {"next": 0}
    lock = threading.Lock()

    def handle(request: StubRequest) -> StubReply:
        if request.method != "POST" or not request.path.endswith("/chat/completions"):
            return StubReply(404, {"error": {"message": f"no route {request.method} {request.path}"}})
        with lock:
            index = counter["next"]
            counter["next"] += 1
        entry = script[min(index, len(script) - 1)] if script else {}
        delay = entry.get("delayMs", latency_ms)
        if entry.get("status", 200) != 200:
            body = entry.get("body", {"error": {"message": f"stub failure {entry['status']}"}})
            return StubReply(entry["status"], body, dict(entry.get("headers", {})), delay)
        return StubReply(200, _completion(entry, request, index), dict(entry.get("headers", {})), delay)

    base_url, server = start_json_server(handle, record=record)
    return f"{base_url}/v1", server
