"""Shared fixtures: API clients authenticated as people or keys, and org worlds."""
from __future__ import annotations

import os

import pytest
from rest_framework.test import APIClient

from orgs.models import Organization

from . import factories as f


class Api:
    """A JSON API client. ``as_user`` / ``as_key`` return clients with credentials."""

    @staticmethod
    def anonymous() -> APIClient:
        return APIClient()

    @staticmethod
    def as_user(user) -> APIClient:
        client = APIClient()
        client.force_authenticate(user=None)
        from orgs.services.tokens import issue_token

        _, plaintext = issue_token(username=user.username, password=f.PASSWORD)
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
        return client

    @staticmethod
    def as_key(plaintext: str, header: str = "x-api-key") -> APIClient:
        client = APIClient()
        if header == "x-api-key":
            client.credentials(HTTP_X_API_KEY=plaintext)
        else:
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
        return client


# The suite's stub servers (tests/server.py, agents/engine/testing.py) listen on 127.0.0.1, which the
# egress policy refuses unless allowed: allow it for this process and the servers and workers it starts
# (they inherit the environment). Regression tests turn it off with ``settings.FRUXON_EGRESS_ALLOW = ""``.
TEST_EGRESS_ALLOW = "127.0.0.1"
os.environ["FRUXON_EGRESS_ALLOW"] = TEST_EGRESS_ALLOW


@pytest.fixture(autouse=True, scope="session")
def _egress_allows_test_stubs():
    from django.conf import settings

    from fruxon import egress

    settings.FRUXON_EGRESS_ALLOW = TEST_EGRESS_ALLOW  # settings may have loaded before this module
    egress.configure_from_settings()


@pytest.fixture
def api() -> type[Api]:
    return Api


@pytest.fixture
def org(db) -> Organization:
    return f.OrganizationFactory(slug="acme")


@pytest.fixture
def owner(org):
    return f.member(org, "owner", "olivia")


@pytest.fixture
def editor(org):
    return f.member(org, "editor", "eddie")


@pytest.fixture
def viewer(org):
    return f.member(org, "viewer", "vera")


@pytest.fixture
def owner_client(owner, api):
    return api.as_user(owner)


@pytest.fixture(autouse=True)
def _clear_cache():
    """API-key lookups are cached; each test starts cold."""
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


def pytest_runtest_logreport(report):
    """With FRUXON_FAIL_ON_SKIP (CI), a skipped test fails the run: a skip is a broken promise."""
    import os

    if os.environ.get("FRUXON_FAIL_ON_SKIP") and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which is not allowed: {report.longrepr}"
