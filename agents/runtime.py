"""The engine's host services, backed by the database (``agents.engine.Runtime``).

One ``DjangoRuntime`` serves one run. Prices come from ``monitoring.pricing``'s
cache (no query on the hot path) and integrations are cached for the run;
secrets are resolved at call time through ``orgs.services.secrets`` (the only
decrypting path) and never cached beyond the engine's own per-run cache.
The engine may call these from several threads: a worker thread's DB connection
is closed when its lookup ends; the run's own thread hands its connection back
to the pool, if there is one (``fruxon.db``), since the engine goes on to wait
on model providers.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from decimal import Decimal

from django.db import connection
from django.utils import timezone

from fruxon.db import release_connection
from fruxon.errors import NotFound
from monitoring import observability, pricing
from monitoring.ledger import BudgetState, LedgerUnavailable, ledger, to_units
from orgs.models import Integration
from orgs.services import secrets

from . import engine
from .limits import engine_limits
from .models import Agent, Revision

logger = logging.getLogger(__name__)


# --- what both runtimes read from the database (sync ORM: the async runtime runs them via fruxon.adb) ---

def secret_value(organization_id: int, name: str, agent: str) -> engine.SecretValue:
    """The value with the hosts it may go to (its allowedHosts and its integrations' hosts), read now:
    a narrowed allowedHosts or a moved integration counts from the next run on."""
    try:
        value, hosts = secrets.resolve(organization_id=organization_id, name=name, agent_slug=agent)
        return engine.SecretValue(value, hosts)
    except secrets.SecretNotAllowed as exc:
        raise engine.SecretNotAllowed(exc.message) from None
    except NotFound as exc:
        raise engine.SecretNotFound(exc.message) from None


def integration_info(organization_id: int, slug: str) -> engine.IntegrationInfo | None:
    row = Integration.objects.filter(organization_id=organization_id, slug=slug).first()
    if row is None:
        return None
    config = row.config or {}
    return engine.IntegrationInfo(
        slug=row.slug, base_url=config.get("baseUrl", ""), headers=dict(config.get("headers") or {}),
        credentials_secret=row.credentials_secret or None, side_effects=row.side_effects, status=row.status,
        auth_header=config.get("authHeader") or "Authorization", auth_scheme=config.get("authScheme", "Bearer"),
    )


def subagent_revision(organization_id: int, slug: str, revision_id: str | None) -> tuple[str, dict]:
    agent = Agent.objects.filter(organization_id=organization_id, slug=slug).first()
    if agent is None:
        raise engine.AgentNotFound(f"sub-agent {slug!r} does not exist in this organization")
    target = revision_id or agent.deployed_revision_id
    if target is None:
        raise engine.NotDeployed(f"sub-agent {slug!r} has no deployed revision and is not pinned")
    revision = Revision.objects.filter(agent=agent, pk=target).only("id", "spec").first()
    if revision is None:
        raise engine.AgentNotFound(f"sub-agent {slug!r} has no revision {target!r}")
    return revision.id, revision.spec


class BudgetTracking:
    """What a run spent on its budget, for the threshold alerts (shared by both runtimes).

    Subclasses set ``budget``, ``_budget_state``, ``_lock``, ``spent_before`` and ``spent_after``.
    """

    def _note_spent(self, spent: int, actual: int) -> None:
        with self._lock:
            before = spent - actual
            self.spent_before = before if self.spent_before is None else min(self.spent_before, before)
            self.spent_after = spent if self.spent_after is None else max(self.spent_after, spent)

    def budget_thresholds_crossed(self) -> bool:
        """Did this run's spend cross an alert threshold? (cheap: no query)"""
        if self.budget is None or self.spent_before is None or not self.budget.alert_thresholds:
            return False
        cap = self._budget_state.cap_units
        return any(self.spent_before < cap * t <= self.spent_after for t in self.budget.alert_thresholds)

    def alert_if_needed(self) -> None:
        """After the run is recorded: enqueue the threshold alerts it crossed (deduplicated per period)."""
        if not self.budget_thresholds_crossed():
            return
        from fruxon.tasks import defer
        from monitoring.budget_tasks import check_thresholds

        defer(check_thresholds, self.budget.pk, int(self._budget_state.period_start.timestamp()),
              self.spent_before, self.spent_after)


class DjangoRuntime(BudgetTracking, engine.Runtime):
    # The run limits of settings (FRUXON_MAX_MODEL_CALLS_PER_RUN, FRUXON_MAX_SPANS_PER_RUN), read when a run starts.
    limits = property(lambda self: engine_limits())

    def __init__(self, *, organization_id: int, agent_id: int, budget=None, token_limits=()):
        self.organization_id = organization_id
        # Tokens-per-minute limits of the caller (fruxon.ratelimit.Limit); empty when none apply.
        self.token_limits = tuple(token_limits)
        self.rate_refusal = None  # the limiter's refusal that stopped this run, if one did
        self.agent_id = agent_id
        self._lock = threading.Lock()
        self._prices: dict | None = None
        self._main_thread = threading.get_ident()
        # The budget period is fixed for the whole run: a run that starts before
        # midnight spends from the day it started in.
        self.budget = budget
        self._budget_state = BudgetState.of(budget, timezone.now()) if budget is not None else None
        self._open = threading.local()  # per-thread stack: parallel steps reserve and settle on their own threads
        self.spent_before: int | None = None
        self.spent_after: int | None = None

    # Worker threads of parallel steps open their own connections; close them
    # so a long-lived server does not leak one per step. The run's own thread
    # gives its connection back to the pool while the engine waits on providers.
    def _thread_done(self) -> None:
        if threading.get_ident() != self._main_thread:
            connection.close()
        else:
            release_connection()

    def resolve_secret(self, name: str, *, agent: str) -> engine.SecretValue:
        try:
            return secret_value(self.organization_id, name, agent)
        finally:
            self._thread_done()

    def get_integration(self, slug: str):
        try:
            return integration_info(self.organization_id, slug)
        finally:
            self._thread_done()

    def load_agent(self, slug: str, revision_id: str | None):
        try:
            return subagent_revision(self.organization_id, slug, revision_id)
        finally:
            self._thread_done()

    def price_for(self, provider: str, model: str):
        with self._lock:
            if self._prices is None:
                try:
                    self._prices = pricing.cached_prices(organization_id=self.organization_id, agent_id=self.agent_id)
                finally:
                    self._thread_done()
        return pricing.lookup(self._prices, provider, model)

    def before_model_call(self, estimate_usd: Decimal, tokens: int | None = None) -> None:
        """Reserve the call's worst case on the ledger; refuse past the cap; fail closed when unreachable.
        Then reserve its upper bound of ``tokens`` on the rate limiter (tokens per minute, fail open):
        refused, the budget reservation is released and the run stops with ``rate_limited``."""
        if self._budget_state is None:
            self._push(None, self._reserve_tokens(tokens, None))
            return
        try:
            reservation = ledger().reserve(self._budget_state, to_units(estimate_usd))
        except LedgerUnavailable as exc:
            if not self._budget_state.enforce:  # tracking only: run; its recorded cost reaches the ledger later
                self._push(None, self._reserve_tokens(tokens, None))
                return
            observability.ledger_refused(organization_id=self.organization_id, agent_id=self.agent_id,
                                         reason="ledger_unavailable")
            raise LedgerUnavailableError(str(exc)) from None
        finally:
            self._thread_done()
        if reservation is None:
            observability.ledger_refused(organization_id=self.organization_id, agent_id=self.agent_id,
                                         reason="budget_exceeded")
            raise engine.BudgetExceeded(
                f"the agent's {self._budget_state.period} budget cannot admit this model call "
                f"(worst case ${estimate_usd})")
        self._push(reservation, self._reserve_tokens(tokens, reservation))

    def _push(self, reservation, admitted) -> None:
        """Keep this thread's open reservations (budget, tokens) for ``after_model_call``."""
        if self._budget_state is None and not self.token_limits:
            return
        stack = getattr(self._open, "stack", None)
        if stack is None:
            stack = self._open.stack = []
        stack.append((reservation, admitted))

    def _reserve_tokens(self, tokens: int | None, reservation):
        """Admit ``tokens`` against the tokens-per-minute limits (the key's and the org's), or raise
        ``RateLimitedError`` after releasing the call's budget ``reservation``. None when nothing was reserved."""
        if not self.token_limits or tokens is None:
            return None
        from fruxon import ratelimit

        decision = ratelimit.limiter().check(self.token_limits, int(tokens))
        if decision.allowed:
            return decision if decision.enforced else None
        if reservation is not None:
            try:
                ledger().settle(reservation, 0)
            except Exception:  # the stale sweep releases it
                logger.exception("could not release a budget reservation")
            finally:
                self._thread_done()
        self.rate_refusal = decision
        raise RateLimitedError(ratelimit.refusal(decision).message)

    def after_model_call(self, actual_usd: Decimal, tokens: int | None = None) -> None:
        """Settle the reservations this thread made: the budget's to the actual cost, the tokens' to ``tokens``."""
        stack = getattr(self._open, "stack", None)
        if not stack:
            return
        reservation, admitted = stack.pop()
        if admitted is not None:
            from fruxon import ratelimit

            ratelimit.limiter().settle(admitted, tokens or 0)
        if reservation is None:
            return
        actual = to_units(actual_usd, round_up=False)
        try:
            spent = ledger().settle(reservation, actual)
        except Exception:  # the reservation stays open; the stale sweep and reconciliation repair the ledger
            logger.exception("could not settle a budget reservation")
            return
        finally:
            self._thread_done()
        self._note_spent(spent, actual)


class RateLimitedError(engine.EngineError):
    """A model call's tokens do not fit the caller's tokens-per-minute limit: the run stops before the call."""

    code = "rate_limited"


class LedgerUnavailableError(engine.EngineError):
    """The budget ledger could not be reached: the run stops before spending (fail closed)."""

    code = "ledger_unavailable"



class AsyncDjangoRuntime(BudgetTracking, engine.AsyncRuntime):
    """``DjangoRuntime`` for the async execute family (``agents.engine.AsyncRuntime``), on the event loop.

    The budget ledger (``monitoring.ledger.async_ledger``), the tokens-per-minute limiter and the
    price cache are awaited over redis.asyncio; secrets, integrations and sub-agents are the same
    sync lookups as ``DjangoRuntime``'s, run by ``fruxon.adb.run`` (a bounded executor; they are
    rare and cached per run by the engine). A model call's reservation is the value
    ``before_model_call`` returns: ``(budget reservation or None, tokens admission or None)``.
    """

    limits = property(lambda self: engine_limits())
    http_client = None  # the loop's pooled client (agents.engine.transport.default_async_client)

    def __init__(self, *, organization_id: int, agent_id: int, budget=None, token_limits=(), price_entries=None):
        self.organization_id = organization_id
        self.agent_id = agent_id
        self.token_limits = tuple(token_limits)
        # A task fetching the org's price cache entries, started while the agent was looked up
        # (agents.api.execute); None: fetched when the first model call asks.
        self._price_entries = price_entries
        self.rate_refusal = None
        self.budget = budget
        self._budget_state = BudgetState.of(budget, timezone.now()) if budget is not None else None
        self._lock = threading.Lock()
        self._prices: dict | None = None
        self.spent_before: int | None = None
        self.spent_after: int | None = None

    async def resolve_secret(self, name: str, *, agent: str) -> engine.SecretValue:
        try:
            value, hosts = await secrets.aresolve(organization_id=self.organization_id, name=name, agent_slug=agent)
        except secrets.SecretNotAllowed as exc:
            raise engine.SecretNotAllowed(exc.message) from None
        except NotFound as exc:
            raise engine.SecretNotFound(exc.message) from None
        return engine.SecretValue(value, hosts)

    async def get_integration(self, slug: str):
        from fruxon import adb

        return await adb.run(integration_info, self.organization_id, slug)

    async def load_agent(self, slug: str, revision_id: str | None):
        from fruxon import adb

        return await adb.run(subagent_revision, self.organization_id, slug, revision_id)

    async def price_for(self, provider: str, model: str):
        if self._prices is None:
            early, found = self._price_entries, None
            # (Outside the ASGI server a stream is read on another event loop than the view ran on.)
            if early is not None and early.get_loop() is asyncio.get_running_loop():
                found = await early
            self._prices = await pricing.acached_prices(organization_id=self.organization_id, agent_id=self.agent_id,
                                                        found=found)
        return pricing.lookup(self._prices, provider, model)

    async def before_model_call(self, estimate_usd: Decimal, *, tokens: int):
        reservation = None
        if self._budget_state is not None:
            from monitoring.ledger import async_ledger

            unreserved = False
            try:
                reservation = await async_ledger().reserve(self._budget_state, to_units(estimate_usd))
            except LedgerUnavailable as exc:
                if self._budget_state.enforce:
                    observability.ledger_refused(organization_id=self.organization_id, agent_id=self.agent_id,
                                                 reason="ledger_unavailable")
                    raise LedgerUnavailableError(str(exc)) from None
                # Tracking only: the run goes on unreserved; its recorded cost is part of the durable
                # spend that seeding and reconciliation bring the ledger up to (monitoring.ledger).
                unreserved = True
            if reservation is None and not unreserved:
                observability.ledger_refused(organization_id=self.organization_id, agent_id=self.agent_id,
                                             reason="budget_exceeded")
                raise engine.BudgetExceeded(
                    f"the agent's {self._budget_state.period} budget cannot admit this model call "
                    f"(worst case ${estimate_usd})")
        admitted = None
        if self.token_limits and tokens is not None:
            from fruxon import ratelimit

            decision = await ratelimit.acheck(self.token_limits, int(tokens))
            if not decision.allowed:
                if reservation is not None:
                    await self._settle(reservation, 0)
                self.rate_refusal = decision
                raise RateLimitedError(ratelimit.refusal(decision).message)
            admitted = decision if decision.enforced else None
        if reservation is None and admitted is None:
            return None
        return reservation, admitted

    async def _settle(self, reservation, actual: int) -> int | None:
        from monitoring.ledger import async_ledger

        try:
            return await async_ledger().settle(reservation, actual)
        except Exception:  # the reservation stays open; the stale sweep and reconciliation repair the ledger
            logger.exception("could not settle a budget reservation")
            return None

    async def after_model_call(self, actual_usd: Decimal, *, tokens: int, reservation) -> None:
        if reservation is None:
            return
        budget_reservation, admitted = reservation
        if admitted is not None:
            from fruxon import ratelimit

            await ratelimit.asettle(admitted, tokens or 0)
        if budget_reservation is None:
            return
        actual = to_units(actual_usd, round_up=False)
        spent = await self._settle(budget_reservation, actual)
        if spent is not None:
            self._note_spent(spent, actual)
