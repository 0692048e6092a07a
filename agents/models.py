"""Agents and their immutable revisions (DESIGN rule 4).

A Revision's spec never changes after creation: ``save()`` on an existing row
and ``delete()`` raise. Its ``content_hash`` (sha256 of the canonical spec)
proves two orgs run the same thing. ``RevisionReference`` rows list what a
revision depends on (secrets, integrations, sub-agents), written with it, so
readiness and delete checks are indexed queries instead of spec scans.
"""
from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from fruxon.ids import revision_id
from orgs.models import TenantModel, slug_validator


class ImmutableRevision(Exception):
    """A revision was about to be changed or deleted."""


class Agent(TenantModel):
    slug = models.CharField(max_length=50, validators=[slug_validator])
    name = models.CharField(max_length=200, blank=True, default="")
    description = models.TextField(blank=True, default="", max_length=5000)
    deployed_revision = models.ForeignKey("Revision", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    # The deploy gate: a candidate needs a completed evaluation on this dataset scoring at
    # least the deployed revision's score minus gate_tolerance, with no critical regression.
    gating_dataset = models.ForeignKey("evaluations.Dataset", null=True, blank=True, on_delete=models.SET_NULL,
                                       related_name="gated_agents")
    gate_tolerance = models.FloatField(default=0.0)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization", "slug"], name="uniq_agent_slug")]
        ordering = ["slug"]
        # Per-agent grants (django-guardian object permissions); see agents.grants.
        permissions = [
            ("agent_viewer", "Viewer on this agent"),
            ("agent_editor", "Editor on this agent"),
            ("agent_admin", "Admin on this agent (manages its collaborators)"),
        ]

    def __str__(self) -> str:
        return self.slug


class Revision(TenantModel):
    id = models.CharField(primary_key=True, max_length=20, default=revision_id, editable=False)
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="revisions")
    spec = models.JSONField()
    content_hash = models.CharField(max_length=64, db_index=True)
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    message = models.CharField(max_length=1000, blank=True, default="")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_by_label = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    # Where an imported revision came from: {"org": slug, "revisionId": id}; empty for local ones.
    origin = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["agent", "-created_at"], name="revision_agent_created")]

    def __str__(self) -> str:
        return self.id

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise ImmutableRevision(f"Revision {self.id} is immutable; create a new revision instead.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise ImmutableRevision(f"Revision {self.id} cannot be deleted.")


class RevisionReference(TenantModel):
    KIND_CHOICES = [("secret", "secret"), ("integration", "integration"), ("agent", "sub-agent")]

    revision = models.ForeignKey(Revision, on_delete=models.CASCADE, related_name="references")
    kind = models.CharField(max_length=12, choices=KIND_CHOICES)
    name = models.CharField(max_length=64)
    pinned_revision = models.CharField(max_length=20, blank=True, default="")

    class Meta:
        indexes = [models.Index(fields=["organization", "kind", "name"], name="revref_org_kind_name")]

    def __str__(self) -> str:
        return f"{self.revision_id} -> {self.kind}:{self.name}"
