"""What ran: runs, their spans, conversations; and what it cost: model prices.

Runs and spans are written once, by the execution service, in one bulk insert
per run; they are read by the monitoring API and the admin.
"""
from __future__ import annotations

from decimal import Decimal

from django.db import models
from django.utils import timezone

from fruxon.ids import conversation_id, run_id, span_id
from orgs.models import ApiKey, TenantModel

RUN_STATUSES = ["ok", "error", "budget_exceeded", "timeout", "max_tool_calls", "cancelled"]
RUN_SOURCES = ["api", "canary", "shadow", "evaluation", "studio"]
SPAN_KINDS = ["step", "llm", "tool", "subAgent"]
COST = dict(max_digits=18, decimal_places=8, default=Decimal("0"))


class Conversation(TenantModel):
    """A thread of runs. ``key`` is the public ``conversationId``, unique per org.

    Clients may choose the key (their own session id) or let Fruxon mint one;
    keys live in the org's namespace, so two orgs can use the same key.
    """

    key = models.CharField(max_length=64, default=conversation_id)
    agent = models.ForeignKey("agents.Agent", on_delete=models.CASCADE, related_name="conversations")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    turns = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-updated_at"]
        constraints = [models.UniqueConstraint(fields=["organization", "key"], name="uniq_conversation_key")]
        indexes = [models.Index(fields=["organization", "-updated_at"], name="conv_org_updated")]

    def __str__(self) -> str:
        return self.key


class Run(TenantModel):
    id = models.CharField(primary_key=True, max_length=24, default=run_id, editable=False)
    agent = models.ForeignKey("agents.Agent", on_delete=models.CASCADE, related_name="runs")
    revision = models.ForeignKey("agents.Revision", on_delete=models.CASCADE, related_name="runs")
    conversation = models.ForeignKey(Conversation, null=True, blank=True, on_delete=models.SET_NULL, related_name="runs")
    source = models.CharField(max_length=12, choices=[(s, s) for s in RUN_SOURCES], default="api")
    status = models.CharField(max_length=16, choices=[(s, s) for s in RUN_STATUSES])
    input = models.JSONField(default=dict)
    output = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    input_tokens = models.PositiveIntegerField(default=0)
    cached_input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    reasoning_tokens = models.PositiveIntegerField(default=0)
    cost_usd = models.DecimalField(**COST)
    latency_ms = models.PositiveIntegerField(default=0)
    provider_ms = models.PositiveIntegerField(default=0)
    api_key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    pinned = models.BooleanField(default=False)
    # Not used: whether a run's detail cuts its span tree depends on FRUXON_RUN_DETAIL_SPANS at read time,
    # so it is computed then (monitoring.spans.detail_spans, `spansTruncated` of GET /runs/{id}).
    spans_truncated = models.BooleanField(default=False)
    # A model call reported more usage than its reservation's bound (recorded as reported, counted).
    usage_over_reservation = models.BooleanField(default=False)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["organization", "-created_at"], name="run_org_created"),
            models.Index(fields=["organization", "agent", "status", "-created_at"], name="run_org_agent_status"),
            models.Index(fields=["agent", "revision", "-created_at"], name="run_agent_rev_created"),
            models.Index(fields=["conversation", "created_at"], name="run_conversation"),
        ]

    def __str__(self) -> str:
        return self.id


class Span(TenantModel):
    id = models.CharField(primary_key=True, max_length=40, default=span_id, editable=False)
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="spans")
    parent_id = models.CharField(max_length=40, blank=True, default="")
    position = models.PositiveIntegerField(default=0)
    kind = models.CharField(max_length=10, choices=[(k, k) for k in SPAN_KINDS])
    name = models.CharField(max_length=200)
    status = models.CharField(max_length=20, default="ok")
    started_at = models.DateTimeField()
    latency_ms = models.PositiveIntegerField(default=0)
    provider = models.CharField(max_length=40, blank=True, default="")
    model = models.CharField(max_length=200, blank=True, default="")
    input = models.JSONField(null=True, blank=True)
    output = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    attributes = models.JSONField(default=dict, blank=True)
    input_tokens = models.PositiveIntegerField(default=0)
    cached_input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    reasoning_tokens = models.PositiveIntegerField(default=0)
    cost_usd = models.DecimalField(**COST)

    class Meta:
        ordering = ["run", "position"]

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"


class ModelPrice(models.Model):
    """USD per million tokens for one provider/model.

    Three levels, most specific wins: an agent's override, the org's override,
    the built-in row (organization and agent both null, seeded by migration).
    """

    organization = models.ForeignKey("orgs.Organization", null=True, blank=True, on_delete=models.CASCADE)
    agent = models.ForeignKey("agents.Agent", null=True, blank=True, on_delete=models.CASCADE)
    provider = models.CharField(max_length=40)
    model = models.CharField(max_length=200)
    input_per_million = models.DecimalField(max_digits=12, decimal_places=6)
    cached_input_per_million = models.DecimalField(max_digits=12, decimal_places=6, null=True, blank=True)
    output_per_million = models.DecimalField(max_digits=12, decimal_places=6)
    reasoning_per_million = models.DecimalField(max_digits=12, decimal_places=6, null=True, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["provider", "model"]
        constraints = [
            models.UniqueConstraint(fields=["provider", "model"], condition=models.Q(organization__isnull=True),
                                    name="uniq_builtin_price"),
            models.UniqueConstraint(fields=["organization", "provider", "model"],
                                    condition=models.Q(organization__isnull=False, agent__isnull=True), name="uniq_org_price"),
            models.UniqueConstraint(fields=["agent", "provider", "model"], condition=models.Q(agent__isnull=False),
                                    name="uniq_agent_price"),
        ]

    def __str__(self) -> str:
        return f"{self.provider}/{self.model}"


class Budget(TenantModel):
    """A per-agent spend budget per UTC period. ``enforce`` makes ``amount_usd`` a hard cap."""

    PERIODS = [("day", "day"), ("month", "month")]

    agent = models.OneToOneField("agents.Agent", on_delete=models.CASCADE, related_name="budget")
    period = models.CharField(max_length=5, choices=PERIODS, default="month")
    amount_usd = models.DecimalField(max_digits=14, decimal_places=4)
    enforce = models.BooleanField(default=True)
    alert_thresholds = models.JSONField(default=list, blank=True)
    alert_webhook = models.URLField(blank=True, default="", max_length=2000)
    alert_emails = models.JSONField(default=list, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.agent}: ${self.amount_usd}/{self.period}{' (cap)' if self.enforce else ''}"


class Alert(TenantModel):
    """One alert to deliver (webhook and/or email); ``dedupe_key`` makes raising it idempotent.

    Delivery state lives in its ``AlertDelivery`` rows, one per channel. ``delivered_at`` is set when
    every channel has delivered; ``webhook_sent``, ``email_sent``, ``attempts`` and ``last_error`` are
    the pre-delivery-row summary, kept up to date for readers of the old fields.
    """

    kind = models.CharField(max_length=50)
    subject = models.CharField(max_length=300)
    payload = models.JSONField(default=dict)
    webhook = models.URLField(blank=True, default="", max_length=2000)
    emails = models.JSONField(default=list, blank=True)
    dedupe_key = models.CharField(max_length=200)
    webhook_sent = models.BooleanField(default=False)
    email_sent = models.BooleanField(default=False)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.CharField(max_length=1000, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["organization", "dedupe_key"], name="uniq_alert_dedupe")]

    @property
    def message_id(self) -> str:
        """The Standard Webhooks ``webhook-id``: the same for every attempt, so receivers can dedupe."""
        return f"msg_alert_{self.pk}"


class AlertDelivery(TenantModel):
    """One channel (webhook or email) of one alert: due work the beat tick claims (DESIGN rule 9).

    ``pending`` rows with ``next_attempt_at`` due are claimed with ``select_for_update(skip_locked=True)``:
    the claim moves ``next_attempt_at`` past a lease and sets ``claim``, then commits; the call happens
    with no transaction open and no lock held; its outcome is written only if ``claim`` is still the
    one taken (a redelivery or an expired lease re-claimed it otherwise). A worker killed mid-call
    leaves the row to be claimed again when the lease ends: delivery is at least once.
    """

    PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
    STATUSES = (PENDING, DELIVERED, FAILED)
    WEBHOOK, EMAIL = "webhook", "email"

    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="deliveries")
    channel = models.CharField(max_length=10, choices=[(WEBHOOK, WEBHOOK), (EMAIL, EMAIL)])
    status = models.CharField(max_length=10, default=PENDING, choices=[(s, s) for s in STATUSES])
    attempts = models.PositiveIntegerField(default=0, help_text="attempts in the current series")
    # When the current attempt series began (creation, or the last redeliver); retries stop past the window.
    series_started_at = models.DateTimeField(default=timezone.now)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=300, blank=True, default="")
    delivered_at = models.DateTimeField(null=True, blank=True)
    claim = models.CharField(max_length=32, blank=True, default="")

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["alert", "channel"], name="uniq_alert_delivery_channel")]
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="alertdelivery_due")]


class BudgetPeriod(TenantModel):
    """The durable spend of one agent in one budget period (units of 1e-8 USD), whichever ledger runs.

    Keyed by agent, not by Budget: deleting a budget removes enforcement, not this
    history. Nothing deletes these rows but their agent's deletion; retention
    deletes runs, not periods.

    * ``spent_units``: with the database ledger, the ledger itself (settled
      spend, moved by ``settle``); with the Redis ledger, the high-water mark
      of the Redis total, checkpointed by reconciliation. Seeded from the
      recorded runs when the row is created.
    * ``reserved_units``: the database ledger's open reservations.
    * ``deleted_units``: the cost of the period's runs that were deleted
      (retention, ``monitoring.services.delete_run``), added in the deleting
      transaction: the spend the remaining runs no longer show.

    ``monitoring.ledger.spend.durable_spent_units`` is the floor a ledger is
    seeded and reconciled from: ``max(spent_units, cost of the runs still
    recorded + deleted_units)``.
    """

    agent = models.ForeignKey("agents.Agent", on_delete=models.CASCADE, related_name="budget_periods")
    period = models.CharField(max_length=5)
    period_start = models.DateTimeField()
    spent_units = models.BigIntegerField(default=0)
    reserved_units = models.BigIntegerField(default=0)
    deleted_units = models.BigIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["agent", "period", "period_start"], name="uniq_budget_period")]


class BudgetReservation(TenantModel):
    """An open reservation of the database ledger; deleted when settled or released."""

    id = models.CharField(primary_key=True, max_length=40)
    budget_period = models.ForeignKey(BudgetPeriod, on_delete=models.CASCADE, related_name="reservations")
    units = models.BigIntegerField()
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
