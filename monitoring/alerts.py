"""Alerts: stored rows, delivered by webhook (Standard Webhooks) and email, retried until they arrive.

Raised by budgets (a threshold crossed), scheduled re-evaluations (a score drop)
and auto-rollback (a degraded deploy). ``raise_alert`` writes, in the caller's
transaction, one ``Alert`` row (kind, subject, payload) and one ``AlertDelivery``
row per channel (``webhook``, ``email``), due at once. After commit it nudges
Celery to deliver now; if the broker is down the nudge is lost but the rows are
not: the beat tick ``monitoring.deliver_due_alerts`` sweeps due rows.

Delivery (``deliver_due``), DESIGN rule 9:

1. claim: in a short transaction, due ``pending`` rows are locked with
   ``select_for_update(skip_locked=True)``, given a claim token and an attempt,
   and their ``next_attempt_at`` moved one lease ahead; commit. Two ticks never
   claim the same row; a worker killed mid-call leaves it to be claimed again
   when the lease ends (at least once; the ``webhook-id`` is the same on every
   attempt so receivers can dedupe).
2. call: the HTTP POST (or the email) with no transaction open and no lock held.
3. record: one UPDATE that applies only if the claim token is still the row's.

A failure (connection error, timeout, an answer other than 2xx, an egress
refusal, an SMTP error) schedules the next attempt with exponential backoff and
jitter (``FRUXON_ALERT_BACKOFF_SECONDS`` doubling per attempt, at most
``FRUXON_ALERT_BACKOFF_MAX_SECONDS``); an attempt that fails once the series is
``FRUXON_ALERT_RETRY_HOURS`` (24) old marks the delivery ``failed``.
``redeliver`` starts a new series. Errors are recorded generically ("could not
be reached", "answered HTTP 500", "not allowed by the egress policy", "timed
out"), never the receiver's body or the transport error (docs/security.md).

Webhook: ``POST <url>`` with the JSON body ``{"type", "timestamp", "data", ...}``
and the Standard Webhooks headers ``webhook-id``, ``webhook-timestamp`` (Unix
seconds of this attempt) and ``webhook-signature`` (``v1,<base64 HMAC-SHA256 of
"{id}.{timestamp}.{body}">``, keyed with the base64-decoded part of the org's
``whsec_`` secret; signed by the ``standardwebhooks`` package). For a grace
period after a rotation (``rotate_webhook_secret``) the previous secret signs
too: two signatures, space-separated, as the specification allows. The POST
goes through the egress policy (no internal address unless
``FRUXON_EGRESS_ALLOW`` allows it, checked on the resolved address) and follows
no redirect.
"""
from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
from django.conf import settings
from django.core.mail import send_mail
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.db.models import F
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from agents.engine import egress

logger = logging.getLogger(__name__)
WEBHOOK_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
# A claimed attempt may take this long before another tick may claim the row again: longer than any
# webhook call (WEBHOOK_TIMEOUT) or SMTP exchange (EMAIL_TIMEOUT) can last.
CLAIM_LEASE = timedelta(seconds=120)
# Claimed together, then attempted one after another: small enough that the last is attempted well
# within its lease (10 x WEBHOOK_TIMEOUT < CLAIM_LEASE).
CLAIM_BATCH = 10
MAX_BATCHES_PER_TICK = 20
_client: httpx.Client | None = None
_client_lock = threading.Lock()


def webhook_client() -> httpx.Client:
    """The process's client for webhooks: through the egress policy, no redirects followed."""
    global _client
    if _client is None:
        with _client_lock:
            if _client is None:
                _client = egress.client(limits=httpx.Limits(max_connections=20, max_keepalive_connections=5),
                                        follow_redirects=False)
    return _client


# --- signing -------------------------------------------------------------------------------------------
def signing_secrets(organization, now: datetime | None = None) -> list[str]:
    """The secrets that sign now: the current one, and the previous one during its grace period."""
    now = now or timezone.now()
    secrets_ = [organization.webhook_secret]
    until = organization.webhook_secret_previous_until
    if organization.webhook_secret_previous and until is not None and until > now:
        secrets_.append(organization.webhook_secret_previous)
    return secrets_


def signature_headers(*, secrets: list[str], message_id: str, body: bytes, timestamp: int) -> dict[str, str]:
    """The Standard Webhooks headers for one attempt: one ``v1,`` signature per secret, space-separated."""
    moment = datetime.fromtimestamp(timestamp, tz=UTC)
    text = body.decode()
    signatures = " ".join(Webhook(secret).sign(msg_id=message_id, timestamp=moment, data=text) for secret in secrets)
    return {"webhook-id": message_id, "webhook-timestamp": str(timestamp), "webhook-signature": signatures}


def body_of(alert) -> bytes:
    """The JSON body of an alert: the same bytes on every attempt (only the headers change)."""
    return json.dumps({
        "type": alert.kind, "timestamp": alert.created_at, "data": alert.payload,
        "id": alert.pk, "event": alert.kind, "subject": alert.subject, "organization": alert.organization.slug,
        "at": alert.created_at,
    }, cls=DjangoJSONEncoder).encode()


# --- raising ---------------------------------------------------------------------------------------------
def raise_alert(*, organization, kind: str, subject: str, payload: dict, webhook: str = "", emails: list | None = None,
                dedupe_key: str = ""):
    """Record an alert and its deliveries (due now), and nudge delivery after commit.

    With ``dedupe_key``, a second call is a no-op (returns None). With no channel, nothing is recorded.
    """
    from .models import Alert, AlertDelivery

    if not webhook and not emails:
        return None
    now = timezone.now()
    with transaction.atomic():
        alert, created = Alert.objects.get_or_create(
            organization=organization, dedupe_key=dedupe_key or f"{kind}:{now.isoformat()}:{uuid.uuid4().hex[:8]}",
            defaults={"kind": kind, "subject": subject[:300], "payload": payload, "webhook": webhook,
                      "emails": emails or [], "created_at": now},
        )
        if not created:
            return None
        channels = ([AlertDelivery.WEBHOOK] if webhook else []) + ([AlertDelivery.EMAIL] if emails else [])
        AlertDelivery.objects.bulk_create([
            AlertDelivery(organization=organization, alert=alert, channel=channel, series_started_at=now,
                          next_attempt_at=now) for channel in channels])
    _nudge(alert.pk)
    return alert


def _nudge(alert_id: int) -> None:
    """Deliver soon, after commit. A broker that is down loses nothing: the beat tick sweeps the rows."""
    from .tasks import deliver_alert

    if settings.CELERY_TASK_ALWAYS_EAGER:
        from fruxon.tasks import defer

        defer(deliver_alert, alert_id)
        return

    def send():
        try:
            deliver_alert.delay(alert_id)
        except Exception:  # the broker is away: the row stays due and the beat tick delivers it
            logger.warning("could not enqueue the delivery of alert %s; the beat tick will deliver it", alert_id)

    transaction.on_commit(send)


# --- delivering ------------------------------------------------------------------------------------------
# The defaults of fruxon/settings.py's alerts block (read with getattr so a settings module without it works).
DEFAULTS = {"FRUXON_ALERT_RETRY_HOURS": 24.0, "FRUXON_ALERT_BACKOFF_SECONDS": 30.0,
            "FRUXON_ALERT_BACKOFF_MAX_SECONDS": 3600.0, "FRUXON_WEBHOOK_SECRET_GRACE_HOURS": 24.0}


def setting(name: str) -> float:
    return float(getattr(settings, name, DEFAULTS[name]))


def backoff(attempts: int) -> timedelta:
    """The wait after the ``attempts``-th failed attempt: doubling from the base, capped, with +-25% jitter."""
    base = setting("FRUXON_ALERT_BACKOFF_SECONDS")
    delay = min(setting("FRUXON_ALERT_BACKOFF_MAX_SECONDS"), base * 2 ** max(0, attempts - 1))
    return timedelta(seconds=delay * random.uniform(0.75, 1.25))


def _claim(*, now: datetime, alert_id: int | None, limit: int) -> list[tuple[int, str]]:
    from .models import AlertDelivery

    claimed = []
    with transaction.atomic():
        due = (AlertDelivery.objects.select_for_update(skip_locked=True)
               .filter(status=AlertDelivery.PENDING, next_attempt_at__lte=now).order_by("next_attempt_at", "id"))
        if alert_id is not None:
            due = due.filter(alert_id=alert_id)
        for pk in list(due.values_list("pk", flat=True)[:limit]):
            token = uuid.uuid4().hex
            AlertDelivery.objects.filter(pk=pk).update(claim=token, attempts=F("attempts") + 1, last_attempt_at=now,
                                                       next_attempt_at=now + CLAIM_LEASE)
            claimed.append((pk, token))
    return claimed


def deliver_due(*, now: datetime | None = None, alert_id: int | None = None) -> int:
    """Claim due deliveries (of one alert, or all) in small batches, attempt each outside any transaction.

    Returns how many attempts were made. ``now`` is the clock (tests advance it).
    """
    attempted = 0
    for _ in range(MAX_BATCHES_PER_TICK):
        moment = now or timezone.now()
        claimed = _claim(now=moment, alert_id=alert_id, limit=CLAIM_BATCH)
        for pk, token in claimed:
            _attempt(pk, token, moment)
        attempted += len(claimed)
        if len(claimed) < CLAIM_BATCH:
            break
    return attempted


def _send_webhook(alert) -> str:
    """POST the alert; '' when a 2xx answered it, else a generic reason."""
    body = body_of(alert)
    headers = {"Content-Type": "application/json", "X-Fruxon-Event": alert.kind, **signature_headers(
        secrets=signing_secrets(alert.organization), message_id=alert.message_id, body=body,
        timestamp=int(time.time()))}
    try:
        response = webhook_client().post(alert.webhook, content=body, timeout=WEBHOOK_TIMEOUT, headers=headers)
    except httpx.TimeoutException:
        return "webhook timed out"
    except httpx.HTTPError as exc:
        return f"webhook: {egress.DENIED_MESSAGE}" if egress.is_denied(exc) else "webhook could not be reached"
    if not 200 <= response.status_code < 300:
        return f"webhook answered HTTP {response.status_code}"
    return ""


def _send_email(alert) -> str:
    body = body_of(alert)
    try:
        send_mail(f"[Fruxon] {alert.subject}", json.dumps(json.loads(body), indent=2),
                  settings.DEFAULT_FROM_EMAIL, alert.emails)
    except Exception:  # SMTP refusals, timeouts, TLS and auth errors: retried like a webhook
        logger.warning("alert %s: email could not be sent", alert.pk, exc_info=True)
        return "email could not be sent"
    return ""


def _attempt(pk: int, token: str, now: datetime) -> None:
    from .models import Alert, AlertDelivery

    delivery = AlertDelivery.objects.select_related("alert__organization").filter(pk=pk, claim=token).first()
    if delivery is None:
        return
    alert = delivery.alert
    error = _send_webhook(alert) if delivery.channel == AlertDelivery.WEBHOOK else _send_email(alert)
    mine = AlertDelivery.objects.filter(pk=pk, claim=token, status=AlertDelivery.PENDING)
    if not error:
        if mine.update(status=AlertDelivery.DELIVERED, delivered_at=now, next_attempt_at=None, last_error="", claim=""):
            _summarize(alert.pk, now)
        return
    window = timedelta(hours=setting("FRUXON_ALERT_RETRY_HOURS"))
    if now - delivery.series_started_at >= window:
        mine.update(status=AlertDelivery.FAILED, next_attempt_at=None, last_error=error, claim="")
        logger.warning("alert %s: %s delivery failed after %s attempts: %s", alert.pk, delivery.channel,
                       delivery.attempts, error)
    else:
        mine.update(next_attempt_at=now + backoff(delivery.attempts), last_error=error, claim="")
        logger.info("alert %s: %s attempt %s failed (%s); retrying", alert.pk, delivery.channel, delivery.attempts,
                    error)
    Alert.objects.filter(pk=alert.pk).update(last_error=error[:1000], attempts=F("attempts") + 1)


def _summarize(alert_id: int, now: datetime) -> None:
    """Keep the alert's summary fields in step with its deliveries."""
    from .models import Alert, AlertDelivery

    statuses = dict(AlertDelivery.objects.filter(alert_id=alert_id).values_list("channel", "status"))
    delivered = {c for c, s in statuses.items() if s == AlertDelivery.DELIVERED}
    changes = {"webhook_sent": AlertDelivery.WEBHOOK in delivered, "email_sent": AlertDelivery.EMAIL in delivered,
               "attempts": F("attempts") + 1}
    if delivered == set(statuses):
        changes |= {"delivered_at": now, "last_error": ""}
    Alert.objects.filter(pk=alert_id).update(**changes)


def deliver(alert_id: int) -> int:
    """Deliver what of one alert is due now (the task a raise enqueues)."""
    return deliver_due(alert_id=alert_id)


def redeliver(*, actor, alert):
    """Send an alert again on each of its channels: a new attempt series, due now. Audited."""
    from orgs.services import audit

    from .models import AlertDelivery

    now = timezone.now()
    with transaction.atomic():
        # A new claim token: the outcome of an attempt still in flight no longer applies to the row.
        count = AlertDelivery.objects.filter(alert=alert).update(
            status=AlertDelivery.PENDING, attempts=0, series_started_at=now, next_attempt_at=now,
            last_error="", delivered_at=None, claim=uuid.uuid4().hex)
        alert.delivered_at = None
        alert.save(update_fields=["delivered_at"])
        audit.record(organization=alert.organization, actor=actor, action="alert.redelivered", target_type="alert",
                     target_id=str(alert.pk), data={"kind": alert.kind, "channels": count})
    _nudge(alert.pk)
    return alert
