"""Test doubles for the engine, usable by tests, the demo and the benchmark.

* :class:`StaticRuntime`: an in-memory :class:`~agents.engine.runtime.Runtime`
  (secrets with allowed agents, integrations, agents with revisions, prices, an
  optional hard budget cap) that records what the engine asked of it.
* :func:`start_json_server`: a loopback HTTP/1.1 server on ``127.0.0.1`` and a
  free port, answering every request through a Python function.
* :class:`AsyncStaticRuntime`: the same runtime as a native
  :class:`~agents.engine.runtime.AsyncRuntime` (coroutines, reservations handed back).
* :func:`start_openai_stub`: such a server speaking the OpenAI chat-completions
  format, answering after ``latency_ms``, optionally following a script; it streams
  (server-sent events, chunk by chunk, with delays) when a request asks for it, and
  records every client that closed its connection before the answer ended
  (``server.disconnects``, ``server.wait_for_disconnect()``).

Servers run in a daemon thread; call ``server.close()`` (or use ``with``).
Nothing here needs Django or pytest.
"""

from __future__ import annotations

import asyncio
import json
import math
import select
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from .destinations import url_host
from .errors import AgentNotFound, BudgetExceeded, NotDeployed, SecretNotAllowed, SecretNotFound
from .runtime import AsyncRuntime, IntegrationInfo, Price, Runtime, SecretValue

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

    def before_model_call(self, estimate_usd: Decimal, tokens: int | None = None) -> None:
        with self._lock:
            self.estimates.append(estimate_usd)
            if self.budget_usd is not None and self.spent + self.reserved + estimate_usd > self.budget_usd:
                raise BudgetExceeded(f"budget of {self.budget_usd} USD would be exceeded")
            self.reserved += estimate_usd
        self._pending.estimate = estimate_usd

    def after_model_call(self, actual_usd: Decimal, tokens: int | None = None) -> None:
        estimate = getattr(self._pending, "estimate", Decimal(0))
        self._pending.estimate = Decimal(0)
        with self._lock:
            self.actuals.append(actual_usd)
            self.reserved -= estimate
            self.spent += actual_usd


class AsyncStaticRuntime(AsyncRuntime):
    """:class:`StaticRuntime` as a native :class:`~agents.engine.runtime.AsyncRuntime`.

    Same constructor (``http_client`` is an ``httpx.AsyncClient`` or ``None``) and the same
    records (``estimates``, ``actuals``, ``spent``, ``reserved``, ``secret_requests``, ...:
    read through to the :class:`StaticRuntime` in ``self.static``). ``before_model_call``
    returns the estimate it reserved as the reservation, which ``after_model_call`` releases,
    so steps running concurrently on one loop settle their own. ``delay_ms`` makes every
    lookup take that long (awaited, not blocking), like a database would.
    """

    def __init__(self, *, http_client: httpx.AsyncClient | None = None, delay_ms: float = 0, **kwargs: Any):
        self.static = StaticRuntime(**kwargs)
        self.http_client = http_client
        self.limits = None
        self.delay_ms = delay_ms
        self.tokens: list[tuple[str, int]] = []  # ("before" | "after", tokens) in call order

    def __getattr__(self, name: str) -> Any:
        return getattr(self.static, name)

    async def _lookup(self) -> None:
        if self.delay_ms:
            await asyncio.sleep(self.delay_ms / 1000.0)

    async def resolve_secret(self, name: str, *, agent: str) -> SecretValue:
        await self._lookup()
        return self.static.resolve_secret(name, agent=agent)

    async def get_integration(self, slug: str) -> IntegrationInfo | None:
        await self._lookup()
        return self.static.get_integration(slug)

    async def load_agent(self, slug: str, revision_id: str | None) -> tuple[str, dict[str, Any]]:
        await self._lookup()
        return self.static.load_agent(slug, revision_id)

    async def price_for(self, provider: str, model: str) -> Price | None:
        return self.static.price_for(provider, model)

    async def before_model_call(self, estimate_usd: Decimal, *, tokens: int) -> Any:
        static = self.static
        with static._lock:
            static.estimates.append(estimate_usd)
            self.tokens.append(("before", tokens))
            if static.budget_usd is not None and static.spent + static.reserved + estimate_usd > static.budget_usd:
                raise BudgetExceeded(f"budget of {static.budget_usd} USD would be exceeded")
            static.reserved += estimate_usd
        return estimate_usd

    async def after_model_call(self, actual_usd: Decimal, *, tokens: int, reservation: Any) -> None:
        static = self.static
        with static._lock:
            static.actuals.append(actual_usd)
            self.tokens.append(("after", tokens))
            static.reserved -= reservation or Decimal(0)
            static.spent += actual_usd


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
    """An answer. ``stream``: send a ``text/event-stream`` body instead, as ``(delay_ms, bytes)``
    events, each after its delay (chunked encoding); ``drop_after``: close the connection after
    that many events, without ending the body (a stream that breaks off)."""

    status: int = 200
    body: Any = None  # JSON-encoded unless it is bytes
    headers: dict[str, str] = field(default_factory=dict)
    delay_ms: float = 0
    stream: list[tuple[float, bytes]] | None = None
    drop_after: int | None = None


@dataclass(frozen=True)
class StubDisconnect:
    """A client closed its connection before the answer ended: which request, how many stream
    events it had been sent, and when (``time.monotonic()``)."""

    path: str
    events_sent: int
    at: float


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
        self.disconnects: list[StubDisconnect] = []
        self.disconnected = threading.Event()
        # A short poll interval keeps close() (which waits for the serve loop) quick.
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                                       name="fruxon-stub", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def wait_for_disconnect(self, timeout: float = 5.0) -> bool:
        """Wait until a client has closed a connection early (see :class:`StubDisconnect`)."""
        return self.disconnected.wait(timeout)

    def record_disconnect(self, path: str, events_sent: int) -> None:
        with self.lock:
            self.disconnects.append(StubDisconnect(path, events_sent, time.monotonic()))
        self.disconnected.set()

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
    # Headers and body go out in two writes: with Nagle's algorithm the body waits for the client's
    # delayed ACK of the headers (40 ms on a reused connection), which a real provider never costs.
    disable_nagle_algorithm = True
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
        if reply.delay_ms and self._wait(reply.delay_ms / 1000.0):
            self._gone(request.path, 0)
            return
        if reply.stream is not None:
            self._stream(request, reply)
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

    def _wait(self, seconds: float) -> bool:
        """Wait ``seconds``; True as soon as the client closed the connection (or the server closes)."""
        end = time.monotonic() + seconds
        while True:
            remaining = end - time.monotonic()
            if remaining <= 0:
                return False
            if self.server.closing.is_set():
                return True
            readable, _, _ = select.select([self.connection], [], [], min(remaining, 0.02))
            if readable:
                try:
                    peeked = self.connection.recv(1, socket.MSG_PEEK)
                except OSError:
                    return True
                if not peeked:
                    return True  # end of file: the client closed its side
                self.server.closing.wait(remaining)  # a pipelined request: nothing to watch for
                return self.server.closing.is_set()

    def _gone(self, path: str, events_sent: int) -> None:
        self.close_connection = True
        if not self.server.closing.is_set():
            self.server.record_disconnect(path, events_sent)

    def _stream(self, request: StubRequest, reply: StubReply) -> None:
        sent = 0
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.flush()
            for delay_ms, data in reply.stream or []:
                if reply.drop_after is not None and sent >= reply.drop_after:
                    self.close_connection = True  # broken off: no terminating chunk
                    return
                if delay_ms and self._wait(delay_ms / 1000.0):
                    self._gone(request.path, sent)
                    return
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
                sent += 1
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self._gone(request.path, sent)

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


def _sse(data: Any) -> bytes:
    return b"data: " + (data if isinstance(data, bytes) else json.dumps(data).encode()) + b"\n\n"


def _streamed(completion: dict[str, Any], entry: Mapping[str, Any], body: Mapping[str, Any],
              delay_ms: float) -> StubReply:
    """``completion`` as the stream of chunks OpenAI would send (see :func:`start_openai_stub`)."""
    from .providers.local import split_evenly

    message = completion["choices"][0]["message"]
    base = {"id": completion["id"], "object": "chat.completion.chunk", "model": completion["model"]}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _sse({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    content = message.get("content") or ""
    pieces = list(entry["chunks"]) if isinstance(entry.get("chunks"), list) else \
        (split_evenly(content, int(entry.get("chunkCount", 4))) if content else [])
    gap = float(entry.get("chunkDelayMs", 0))
    events: list[tuple[float, bytes]] = [(delay_ms, chunk({"role": "assistant", "content": ""}))]
    events += [(gap if position else 0.0, chunk({"content": piece})) for position, piece in enumerate(pieces)]
    for position, call in enumerate(message.get("tool_calls") or []):
        arguments = call["function"]["arguments"]
        half = len(arguments) // 2
        events.append((0.0, chunk({"tool_calls": [{"index": position, "id": call["id"], "type": "function",
                                                   "function": {"name": call["function"]["name"],
                                                                "arguments": arguments[:half]}}]})))
        events.append((0.0, chunk({"tool_calls": [{"index": position, "function": {"arguments": arguments[half:]}}]})))
    events.append((0.0, chunk({}, completion["choices"][0]["finish_reason"])))
    if (body.get("stream_options") or {}).get("include_usage"):
        events.append((0.0, _sse({**base, "choices": [], "usage": completion["usage"]})))
    events.append((0.0, _sse(b"[DONE]")))
    fail = entry.get("failAfterChunks")
    return StubReply(200, None, dict(entry.get("headers", {})), 0, stream=events,
                     drop_after=None if fail is None else 1 + int(fail))


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

    Streaming: a request with ``"stream": true`` is answered with server-sent events as
    OpenAI sends them: a first chunk with the role, the content in pieces (entry ``chunks``:
    the pieces themselves, whose concatenation is the content; else the content cut into
    ``chunkCount`` nearly equal pieces, default 4), tool calls as ``delta.tool_calls`` pieces
    (id and name first, the arguments in two halves), a chunk with ``finish_reason``, a
    usage chunk (``choices: []``) when ``stream_options.include_usage`` is set, and
    ``data: [DONE]``. ``delayMs`` is the wait before the first chunk, ``chunkDelayMs``
    (default 0) before each later content piece; ``failAfterChunks: n`` breaks the
    connection off after n content pieces. Usage is the non-streamed answer's.
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
        if isinstance(entry.get("chunks"), list):
            entry = {**entry, "content": "".join(entry["chunks"])}
        completion = _completion(entry, request, index)
        if isinstance(request.body, dict) and request.body.get("stream") is True:
            return _streamed(completion, entry, request.body, delay)
        return StubReply(200, completion, dict(entry.get("headers", {})), delay)

    base_url, server = start_json_server(handle, record=record)
    return f"{base_url}/v1", server
