"""Fixtures for the engine tests: loopback servers and a private httpx client.

Nothing here touches a database; the engine is pure Python.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

from agents.engine.testing import StubReply, StubRequest, StubServer, start_json_server, start_openai_stub


@pytest.fixture
def http_client() -> Iterator[httpx.Client]:
    # Loopback only: never route test traffic through a proxy from the environment.
    with httpx.Client(trust_env=False) as client:
        yield client


@pytest.fixture
def json_server() -> Iterator[Callable[[Callable[[StubRequest], StubReply]], tuple[str, StubServer]]]:
    """Start loopback servers (closed at teardown): ``base_url, server = json_server(handler)``."""
    servers: list[StubServer] = []

    def start(handler: Callable[[StubRequest], StubReply]) -> tuple[str, StubServer]:
        base_url, server = start_json_server(handler)
        servers.append(server)
        return base_url, server

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def openai_stub() -> Iterator[Callable[..., tuple[str, StubServer]]]:
    """Start OpenAI-compatible stubs (closed at teardown): ``base_url, server = openai_stub(script=[...])``."""
    servers: list[StubServer] = []

    def start(latency_ms: float = 0, script: list[dict] | None = None) -> tuple[str, StubServer]:
        base_url, server = start_openai_stub(latency_ms=latency_ms, script=script)
        servers.append(server)
        return base_url, server

    yield start
    for server in servers:
        server.close()
