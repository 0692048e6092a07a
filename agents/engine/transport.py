"""Deadline-bound JSON POST over httpx, shared by the OpenAI provider and tools.

The engine is async: it uses :func:`apost_json` and :func:`apost_stream` over
:func:`default_async_client` (or the runtime's ``httpx.AsyncClient``). :func:`post_json`
and :func:`default_client` remain for sync callers outside the engine.

Contract of :func:`post_json` (and of :func:`apost_json`, its async twin, which bounds the
whole exchange by the deadline with :func:`asyncio.timeout`, not only each read):

* connect waits at most ``connect_timeout`` (and never past the deadline); read,
  write and pool waits never past the deadline;
* the body is streamed and the deadline re-checked between chunks, so a slow
  trickle cannot keep a run alive much past its deadline;
* bodies larger than :data:`MAX_BODY_BYTES` are refused (:class:`ResponseTooLarge`),
  which keeps one misbehaving endpoint from exhausting memory;
* :class:`DeadlineReached` when the deadline passes; ``httpx`` exceptions for
  other transport failures (``httpx.ConnectTimeout`` only when the connect
  timeout fired with time left before the deadline).
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
import sys
import threading
import time
import weakref
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, NoReturn

import httpx

from . import egress
from .aio import is_private_loop
from .limits import loads_bounded

MAX_BODY_BYTES = 8 * 1024 * 1024
DEFAULT_CONNECT_TIMEOUT = 5.0

_client: httpx.Client | None = None
_client_lock = threading.Lock()


def default_client() -> httpx.Client:
    """The module-level client used when the runtime provides none.

    One pooled client per process: connection reuse matters when hundreds of runs
    wait on the same provider. The pool is sized for that many in-flight calls.
    Its connections go through the egress policy (:mod:`.egress`); redirects are not followed.
    """
    global _client
    if _client is None:
        with _client_lock:
            if _client is None:
                _client = egress.client(
                    limits=httpx.Limits(max_connections=1000, max_keepalive_connections=200),
                    follow_redirects=False,
                )
    return _client


class DeadlineReached(Exception):
    """The run deadline passed before the exchange completed."""


class ResponseTooLarge(Exception):
    """The response body exceeded :data:`MAX_BODY_BYTES`."""


@dataclass(frozen=True)
class HttpReply:
    status: int
    headers: httpx.Headers
    body: bytes

    def json(self) -> Any:
        return loads_bounded(self.body)  # ValueError when not JSON, or nested too deep to walk

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


def _raise_for_timeout(exc: Exception, deadline: float) -> NoReturn:
    """Re-raise a timeout as the contract says: a connect timeout with time left stays itself (the
    caller may retry); any other (httpx's, or the deadline's own ``asyncio.timeout``) is
    :class:`DeadlineReached`."""
    if isinstance(exc, httpx.ConnectTimeout) and time.monotonic() < deadline:
        raise exc
    raise DeadlineReached() from exc


def post_json(client: httpx.Client, url: str, *, payload: Any, headers: Mapping[str, str], deadline: float,
              connect_timeout: float = DEFAULT_CONNECT_TIMEOUT) -> HttpReply:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise DeadlineReached()
    timeout = httpx.Timeout(connect=min(connect_timeout, remaining), read=remaining, write=remaining,
                            pool=remaining)
    try:
        with client.stream("POST", url, json=payload, headers=dict(headers), timeout=timeout) as response:
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise ResponseTooLarge()
                chunks.append(chunk)
                if time.monotonic() >= deadline:
                    raise DeadlineReached()
            return HttpReply(response.status_code, response.headers, b"".join(chunks))
    except httpx.TimeoutException as exc:
        _raise_for_timeout(exc, deadline)


# --- async ------------------------------------------------------------------------

# Each event loop's pool is ASYNC_CLIENT_SHARDS httpx clients, dealt to runs in turn: httpcore
# scans every connection of a pool on each request and each release (measured: with hundreds
# of connections in one pool the scan cost more CPU than the rest of a run), so a pool of
# N connections costs N/shards per request. ASYNC_LIMITS bounds each shard; together they
# hold the in-flight targets of one server process (DESIGN "The execute hot path"); past them
# a call waits for a connection, never past its deadline. A host may change both before the
# first run of a process.
ASYNC_CLIENT_SHARDS = 16
ASYNC_LIMITS = httpx.Limits(max_connections=128, max_keepalive_connections=64, keepalive_expiry=30.0)

_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[httpx.AsyncClient]] = \
    weakref.WeakKeyDictionary()
_next_shard = itertools.count()
_ssl_context: ssl.SSLContext | None = None

try:  # httpcore asks which async library runs on every lock it makes, by importing sniffio
    import sniffio  # noqa: F401
except ImportError:  # absent, each of those imports searched sys.path again (~0.3 ms a request)
    sys.modules.setdefault("sniffio", None)  # type: ignore[arg-type]


def shared_ssl_context() -> ssl.SSLContext:
    """One verifying TLS context per process (building one loads the CA bundle: milliseconds)."""
    global _ssl_context
    if _ssl_context is None:
        with _client_lock:
            if _ssl_context is None:
                _ssl_context = httpx.create_ssl_context()
    return _ssl_context


def default_async_client() -> httpx.AsyncClient:
    """A client of the running event loop's pool (one pool per loop, so one per server process;
    the sync entry points' per-thread loops each keep theirs from run to run), in turn among its
    :data:`ASYNC_CLIENT_SHARDS` shards (one on a thread's private loop: one run at a time there):
    a run keeps the one it was dealt.

    Its connections go through the egress policy (:func:`agents.engine.egress.async_client`),
    redirects are not followed, proxies from the environment are not used, and the pool is
    bounded by :data:`ASYNC_LIMITS`.
    """
    loop = asyncio.get_running_loop()
    shards = _async_clients.get(loop)
    if shards is None:
        shards = _async_clients[loop] = []
    # A thread's private loop (the sync entry points) runs one run at a time: one client, whose
    # keep-alive connections every run of that thread reuses.
    index = 0 if is_private_loop(loop) else next(_next_shard) % ASYNC_CLIENT_SHARDS
    while len(shards) <= index:
        shards.append(None)  # type: ignore[arg-type]
    client = shards[index]
    if client is None or client.is_closed:
        client = shards[index] = egress.async_client(limits=ASYNC_LIMITS, verify=shared_ssl_context(),
                                                     follow_redirects=False)
    return client


@dataclass
class Progress:
    """What an exchange got to, for billing an interrupted model call (see :mod:`agents.engine.step`).

    ``sent`` is true once the request body went out (before that no provider can bill);
    ``streamed_bytes`` counts the UTF-8 bytes of streamed output (content and tool-call
    deltas) received so far, ``chunks`` the streamed chunks that carried any.
    """

    sent: bool = False
    streamed_bytes: int = 0
    chunks: int = 0
    streaming: bool = False

    async def trace(self, event: str, info: Any) -> None:
        # httpcore's trace extension: "http11.send_request_body.complete" and its http2 twin.
        if not self.sent and event.endswith("send_request_body.complete"):
            self.sent = True


def _async_timeout(connect_timeout: float, remaining: float) -> httpx.Timeout:
    # The deadline bounds the exchange as a whole (asyncio.timeout); only connect has its own,
    # shorter limit, so an unreachable provider can be retried within the deadline.
    return httpx.Timeout(connect=min(connect_timeout, remaining), read=None, write=None, pool=None)


def _extensions(progress: Progress | None) -> dict[str, Any]:
    return {"trace": progress.trace} if progress is not None else {}


async def apost_json(client: httpx.AsyncClient, url: str, *, payload: Any, headers: Mapping[str, str],
                     deadline: float, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                     progress: Progress | None = None) -> HttpReply:
    """The async :func:`post_json`: same contract; the deadline bounds the whole exchange."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise DeadlineReached()
    try:
        async with asyncio.timeout(remaining):
            request = client.build_request("POST", url, json=payload, headers=dict(headers),
                                           timeout=_async_timeout(connect_timeout, remaining),
                                           extensions=_extensions(progress))
            response = await client.send(request, stream=True)
            try:
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > MAX_BODY_BYTES:
                        raise ResponseTooLarge()
                    chunks.append(chunk)
                return HttpReply(response.status_code, response.headers, b"".join(chunks))
            finally:
                await response.aclose()
    except (TimeoutError, httpx.TimeoutException) as exc:
        _raise_for_timeout(exc, deadline)


@dataclass
class StreamReply:
    """An answer being streamed: status and headers at once, then :meth:`lines` (``body`` for non-2xx)."""

    status: int
    headers: httpx.Headers
    response: httpx.Response
    body: bytes = b""
    _size: int = field(default=0, repr=False)

    async def lines(self) -> AsyncIterator[bytes]:
        """The body's lines (without their line ends), at most :data:`MAX_BODY_BYTES` in all."""
        buffer = b""
        async for chunk in self.response.aiter_raw():
            self._size += len(chunk)
            if self._size > MAX_BODY_BYTES:
                raise ResponseTooLarge()
            buffer += chunk
            while True:
                end = buffer.find(b"\n")
                if end < 0:
                    break
                line, buffer = buffer[:end], buffer[end + 1:]
                yield line.rstrip(b"\r")
        if buffer:
            yield buffer.rstrip(b"\r")

    def json(self) -> Any:
        return loads_bounded(self.body)

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


@asynccontextmanager
async def apost_stream(client: httpx.AsyncClient, url: str, *, payload: Any, headers: Mapping[str, str],
                       deadline: float, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                       progress: Progress | None = None) -> AsyncIterator[StreamReply]:
    """POST ``payload`` and stream the answer: ``async with apost_stream(...) as reply``.

    A non-2xx answer is read whole (bounded) into ``reply.body``; a 2xx one is read by the
    caller through ``reply.lines()``. Leaving the block closes the response: a response not
    read to its end closes its connection at once (a cancelled run stops the provider).
    The caller bounds its own reading by the deadline (the provider's ``asyncio.timeout``);
    connecting is bounded here as in :func:`apost_json` (:class:`DeadlineReached`,
    ``httpx.ConnectTimeout`` with time left).
    """
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise DeadlineReached()
    request = client.build_request("POST", url, json=payload, headers=dict(headers),
                                   timeout=_async_timeout(connect_timeout, remaining),
                                   extensions=_extensions(progress))
    try:
        async with asyncio.timeout(remaining):
            response = await client.send(request, stream=True)
    except (TimeoutError, httpx.TimeoutException) as exc:
        _raise_for_timeout(exc, deadline)
    try:
        reply = StreamReply(response.status_code, response.headers, response)
        if not 200 <= response.status_code < 300:
            chunks: list[bytes] = []
            size = 0
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > MAX_BODY_BYTES:
                        raise ResponseTooLarge()
                    chunks.append(chunk)
            reply.body = b"".join(chunks)
        yield reply
    finally:
        await response.aclose()
