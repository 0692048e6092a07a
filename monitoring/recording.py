"""Writing what ran: one Run and all its spans in one transaction, spans in one bulk insert."""
from __future__ import annotations

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from agents.engine import RunResult

from .models import Conversation, Run, Span


def _clip_ms(value: float) -> int:
    return max(0, int(round(value)))


def continue_conversation(*, organization_id: int, agent_id: int, key: str) -> Conversation:
    """Get or create the org's conversation ``key`` and count one more turn (row-locked)."""
    conversation, _ = Conversation.objects.get_or_create(organization_id=organization_id, key=key,
                                                         defaults={"agent_id": agent_id})
    Conversation.objects.filter(pk=conversation.pk).update(turns=F("turns") + 1, updated_at=timezone.now())
    return conversation


def record_run(*, organization_id: int, agent_id: int, revision_id: str, result: RunResult, source: str,
               input: dict, api_key_id: int | None = None, conversation_key: str | None = None) -> Run:
    """Write the run, its conversation turn and its spans atomically: all or nothing."""
    spans = result.spans
    with transaction.atomic():
        conversation = None
        if conversation_key is not None:
            conversation = continue_conversation(organization_id=organization_id, agent_id=agent_id, key=conversation_key)
        run = Run.objects.create(
            organization_id=organization_id, agent_id=agent_id, revision_id=revision_id,
            conversation=conversation, source=source, status=result.status, input=input,
            output=result.output, error=result.error,
            input_tokens=result.totals.input_tokens, cached_input_tokens=result.totals.cached_input_tokens,
            output_tokens=result.totals.output_tokens, reasoning_tokens=result.totals.reasoning_tokens,
            cost_usd=result.totals.cost_usd, latency_ms=_clip_ms(result.latency_ms),
            provider_ms=_clip_ms(result.provider_ms), api_key_id=api_key_id, created_at=result.started_at,
        )
        Span.objects.bulk_create([
            Span(
                id=span.id, organization_id=organization_id, run=run, parent_id=span.parent_id or "", position=index,
                kind=span.kind, name=span.name[:200], status=span.status, started_at=span.started_at,
                latency_ms=_clip_ms(span.latency_ms), provider=span.provider or "", model=(span.model or "")[:200],
                input=span.input, output=span.output, error=span.error, attributes=span.attributes,
                input_tokens=span.input_tokens, cached_input_tokens=span.cached_input_tokens,
                output_tokens=span.output_tokens, reasoning_tokens=span.reasoning_tokens, cost_usd=span.cost_usd,
            )
            for index, span in enumerate(spans)
        ])
    return run
