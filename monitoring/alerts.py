"""Alerts: a webhook POST signed with HMAC-SHA256, and email through Django's backend.

Used by scheduled re-evaluations (a score drop) and budgets (thresholds). Each
alert is an ``Alert`` row first (what, to whom, why), then delivered by a
Celery task after commit; delivery is recorded on the row, so a retry after a
crash does not send twice what already went out.

Webhook: ``POST <url>`` with a JSON body and headers ``X-Fruxon-Event`` and
``X-Fruxon-Signature: sha256=<hex>``, the HMAC-SHA256 of the raw body keyed
with the org's webhook signing secret (``GET /v1/{tenant}/settings``, owners).
The POST goes through the egress policy (``agents.engine.egress``: no internal
address unless ``FRUXON_EGRESS_ALLOW`` allows it, checked on the resolved address)
and follows no redirect. A failure is recorded on the alert generically ("could not
be reached", "not allowed by the egress policy", "answered HTTP 500"), never with
the receiver's body or the transport error.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading

import httpx
from django.conf import settings
from django.core.mail import send_mail
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.utils import timezone

from agents.engine import egress

logger = logging.getLogger(__name__)
WEBHOOK_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
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


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def raise_alert(*, organization, kind: str, subject: str, payload: dict, webhook: str = "", emails: list | None = None,
                dedupe_key: str = ""):
    """Record an alert and deliver it after commit. With ``dedupe_key``, a second call is a no-op."""
    from .models import Alert

    if not webhook and not emails:
        return None
    alert, created = Alert.objects.get_or_create(
        organization=organization, dedupe_key=dedupe_key or f"{kind}:{timezone.now().isoformat()}",
        defaults={"kind": kind, "subject": subject, "payload": payload, "webhook": webhook, "emails": emails or []},
    )
    if created:
        from fruxon.tasks import defer

        from .tasks import deliver_alert

        defer(deliver_alert, alert.pk)
    return alert if created else None


def deliver(alert_id: int) -> None:
    from .models import Alert

    with transaction.atomic():
        alert = Alert.objects.select_for_update().select_related("organization").filter(pk=alert_id).first()
        if alert is None or alert.delivered_at is not None:
            return
        body = json.dumps({"event": alert.kind, "subject": alert.subject, "organization": alert.organization.slug,
                           "data": alert.payload, "at": alert.created_at}, cls=DjangoJSONEncoder).encode()
        errors = []
        if alert.webhook and not alert.webhook_sent:
            try:
                response = webhook_client().post(alert.webhook, content=body, timeout=WEBHOOK_TIMEOUT, headers={
                    "Content-Type": "application/json", "X-Fruxon-Event": alert.kind,
                    "X-Fruxon-Signature": sign(alert.organization.webhook_secret, body)})
                if response.status_code >= 300:
                    errors.append(f"webhook answered HTTP {response.status_code}")
                else:
                    alert.webhook_sent = True
            except httpx.HTTPError as exc:
                errors.append(f"webhook: {egress.DENIED_MESSAGE}" if egress.is_denied(exc)
                              else "webhook could not be reached")
        if alert.emails and not alert.email_sent:
            send_mail(f"[Fruxon] {alert.subject}", json.dumps(json.loads(body), indent=2),
                      settings.DEFAULT_FROM_EMAIL, alert.emails)
            alert.email_sent = True
        alert.attempts += 1
        alert.last_error = "; ".join(errors)
        if not errors:
            alert.delivered_at = timezone.now()
        alert.save()
    if errors:
        logger.warning("alert %s not fully delivered: %s", alert_id, "; ".join(errors))
