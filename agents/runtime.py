"""The engine's host services, backed by the database (``agents.engine.Runtime``).

One ``DjangoRuntime`` serves one run. Prices and integrations are cached for the
run; secrets are resolved at call time through ``orgs.services.secrets`` (the
only decrypting path) and never cached beyond the engine's own per-run cache.
The engine may call these from several threads: each uses its own DB
connection, which Django closes when the thread's work ends (see
``close_thread_connections``).
"""
from __future__ import annotations

import threading
from decimal import Decimal

from django.db import connection

from fruxon.errors import NotFound
from monitoring import pricing
from orgs.models import Integration
from orgs.services import secrets

from . import engine
from .models import Agent, Revision


class DjangoRuntime(engine.Runtime):
    http_client = None  # the engine's shared, pooled client

    def __init__(self, *, organization_id: int, agent_id: int):
        self.organization_id = organization_id
        self.agent_id = agent_id
        self._lock = threading.Lock()
        self._prices: dict | None = None
        self._main_thread = threading.get_ident()

    # Worker threads of parallel steps open their own connections; close them
    # so a long-lived server does not leak one per step.
    def _thread_done(self) -> None:
        if threading.get_ident() != self._main_thread:
            connection.close()

    def resolve_secret(self, name: str, *, agent: str) -> str:
        try:
            return secrets.resolve_value(organization_id=self.organization_id, name=name, agent_slug=agent)
        except secrets.SecretNotAllowed as exc:
            raise engine.SecretNotAllowed(exc.message) from None
        except NotFound as exc:
            raise engine.SecretNotFound(exc.message) from None
        finally:
            self._thread_done()

    def get_integration(self, slug: str):
        try:
            row = Integration.objects.filter(organization_id=self.organization_id, slug=slug).first()
        finally:
            self._thread_done()
        if row is None:
            return None
        config = row.config or {}
        return engine.IntegrationInfo(
            slug=row.slug, base_url=config.get("baseUrl", ""), headers=dict(config.get("headers") or {}),
            credentials_secret=row.credentials_secret or None, side_effects=row.side_effects, status=row.status,
        )

    def load_agent(self, slug: str, revision_id: str | None):
        try:
            agent = Agent.objects.filter(organization_id=self.organization_id, slug=slug).first()
            if agent is None:
                raise engine.AgentNotFound(f"sub-agent {slug!r} does not exist in this organization")
            target = revision_id or agent.deployed_revision_id
            if target is None:
                raise engine.NotDeployed(f"sub-agent {slug!r} has no deployed revision and is not pinned")
            revision = Revision.objects.filter(agent=agent, pk=target).only("id", "spec").first()
            if revision is None:
                raise engine.AgentNotFound(f"sub-agent {slug!r} has no revision {target!r}")
            return revision.id, revision.spec
        finally:
            self._thread_done()

    def price_for(self, provider: str, model: str):
        with self._lock:
            if self._prices is None:
                try:
                    self._prices = pricing.effective_rows(organization_id=self.organization_id, agent_id=self.agent_id)
                finally:
                    self._thread_done()
        row = self._prices.get((provider, model)) or self._prices.get((provider, "*"))
        return pricing.as_price(row) if row else None

    def before_model_call(self, estimate_usd: Decimal) -> None:
        """No budget is enforced on this runtime: every call is admitted."""

    def after_model_call(self, actual_usd: Decimal) -> None:
        """Nothing to settle without a budget."""

