"""Models of the ``fruxon`` app itself: the task outbox (``fruxon.outbox``)."""
from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils import timezone


class OutboxMessage(models.Model):
    """A Celery task to send, written in the transaction of the change that calls for it.

    ``available_at``: when the beat sweep may send it (a message being sent by the
    request that wrote it is leased for ``FRUXON_OUTBOX_LEASE_SECONDS``). ``sent_at``:
    when the broker accepted it; sent messages are deleted after a day.
    """

    task = models.CharField(max_length=200)
    args = models.JSONField(default=list)
    created_at = models.DateTimeField(default=timezone.now)
    available_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")

    class Meta:
        indexes = [
            models.Index(fields=["available_at"], condition=Q(sent_at__isnull=True), name="fruxon_outbox_due"),
            models.Index(fields=["sent_at"], condition=Q(sent_at__isnull=False), name="fruxon_outbox_sent"),
        ]

    def __str__(self) -> str:
        return f"{self.task}{tuple(self.args)}"
