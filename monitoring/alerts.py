"""Alerts: a webhook POST signed with HMAC-SHA256, and email through Django's backend.

Used by scheduled re-evaluations (a score drop) and budgets (thresholds). Each
alert is an ``Alert`` row first (what, to whom, why), then delivered by a
Celery task after commit; delivery is recorded on the row, so a retry after a
crash does not send twice what already went out.

Webhook: ``POST <url>`` with a JSON body and headers ``X-Fruxon-Event`` and
``X-Fruxon-Signature: sha256=<hex>``, the HMAC-SHA256 of the raw body keyed
with the org's webhook signing secret (``GET /v1/{tenant}/settings``, owners).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging

import httpx
from django.conf import settings
from django.core.mail import send_mail
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.utils import timezone

logger = logging.getLogger(__name__)
WEBHOOK_TIMEOUT = httpx.Timeout(10.0, connect=5.0)


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
                response = httpx.post(alert.webhook, content=body, timeout=WEBHOOK_TIMEOUT, headers={
                    "Content-Type": "application/json", "X-Fruxon-Event": alert.kind,
                    "X-Fruxon-Signature": sign(alert.organization.webhook_secret, body)})
                if response.status_code >= 300:
                    errors.append(f"webhook answered {response.status_code}")
                else:
                    alert.webhook_sent = True
            except httpx.HTTPError as exc:
                errors.append(f"webhook failed: {type(exc).__name__}")
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
