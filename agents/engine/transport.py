"""Deadline-bound JSON POST over httpx, shared by the OpenAI provider and tools.

Contract of :func:`post_json`:

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

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from . import egress
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
        if isinstance(exc, httpx.ConnectTimeout) and time.monotonic() < deadline:
            raise
        raise DeadlineReached() from exc
