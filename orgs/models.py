"""Tenancy, people, credentials and the audit trail.

Every tenant-owned row carries an indexed ``organization`` FK (DESIGN rule 1);
nothing here filters by it: ``orgs.scoping`` and the API base class do.
"""
from __future__ import annotations

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.utils import timezone

from .roles import ORG_ROLE_CHOICES, VIEWER

slug_validator = RegexValidator(
    r"^[a-z0-9](?:[a-z0-9-]{0,48}[a-z0-9])?$",
    "Use 1-50 lowercase letters, digits or hyphens, not starting or ending with a hyphen.",
)
secret_name_validator = RegexValidator(
    r"^[A-Za-z_][A-Za-z0-9_]{0,63}$",
    "Use 1-64 letters, digits or underscores, not starting with a digit.",
)


def _webhook_secret() -> str:
    """A Standard Webhooks signing secret: ``whsec_`` and the standard base64 of 32 random bytes (the HMAC key)."""
    import base64
    import secrets

    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


class Organization(models.Model):
    slug = models.CharField(max_length=50, unique=True, validators=[slug_validator])
    name = models.CharField(max_length=200)
    retention_days = models.PositiveIntegerField(
        default=30, validators=[MinValueValidator(1), MaxValueValidator(3650)]
    )
    created_at = models.DateTimeField(default=timezone.now)
    # Signs alert webhooks (Standard Webhooks, monitoring.alerts); shown once, by settings/webhook-secret:rotate.
    webhook_secret = models.CharField(max_length=80, default=_webhook_secret)
    # After a rotation the replaced secret also signs until this moment (a second signature), so receivers
    # can switch at their pace; empty / null when there is none.
    webhook_secret_previous = models.CharField(max_length=80, blank=True, default="", db_default="")
    webhook_secret_previous_until = models.DateTimeField(null=True, blank=True)
    # Rate limits for the whole org (fruxon.ratelimit); null = unlimited. Set through orgs.services.rate_limits.
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    executions_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_minute = models.PositiveBigIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug


class TenantModel(models.Model):
    """Base for every row that belongs to one organization."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, db_index=True)

    class Meta:
        abstract = True


class Membership(TenantModel):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=ORG_ROLE_CHOICES, default=VIEWER)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization", "user"], name="uniq_membership")]
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.user} @ {self.organization} ({self.role})"


class ApiKey(TenantModel):
    """A program's credential. Only a sha256 of the plaintext is stored."""

    name = models.CharField(max_length=200)
    prefix = models.CharField(max_length=16, help_text="The first characters, safe to show.")
    key_hash = models.CharField(max_length=64, unique=True)
    scopes = models.JSONField(default=list)
    agents = models.JSONField(default=list, blank=True, help_text="Agent slugs this key may touch; empty = all.")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    rotated_from = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    # This key's own rate limits, within the org's (fruxon.ratelimit); null = only the org's apply.
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    executions_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_minute = models.PositiveBigIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    def is_active(self, now=None) -> bool:
        now = now or timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    def allows_agent(self, agent_slug: str) -> bool:
        return not self.agents or agent_slug in self.agents


class UserToken(models.Model):
    """A person's personal API token (``fxu_...``), hashed like API keys."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    prefix = models.CharField(max_length=16)
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    # Tokens end: at ``expires_at`` (set at issue from FRUXON_USER_TOKEN_TTL), or when the password changes.
    expires_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.user} ({self.prefix}…)"


class Secret(TenantModel):
    """A named, versioned, encrypted value. The name never changes."""

    name = models.CharField(max_length=64, validators=[secret_name_validator])
    description = models.CharField(max_length=500, blank=True, default="")
    allowed_agents = models.JSONField(default=list, blank=True, help_text='Agent slugs, or ["*"] for all.')
    # Hosts (lowercase, optionally host:port) this secret may be sent to, besides the hosts of the
    # integrations whose credentials it is. Never ["*"]: a secret goes only where its owner said.
    allowed_hosts = models.JSONField(default=list, blank=True, help_text="Hosts the value may be sent to.")
    current_version = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization", "name"], name="uniq_secret_name")]
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def allows_agent(self, agent_slug: str) -> bool:
        return "*" in self.allowed_agents or agent_slug in self.allowed_agents


class SecretVersion(TenantModel):
    """One value of a secret, Fernet-encrypted. Old versions are kept for rollback."""

    secret = models.ForeignKey(Secret, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    ciphertext = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["secret", "version"], name="uniq_secret_version")]
        ordering = ["-version"]

    def __str__(self) -> str:
        return f"{self.secret.name} v{self.version}"


class Invitation(TenantModel):
    """An email with no account yet, invited to an org with a role; accepted when that account appears."""

    email = models.EmailField()
    role = models.CharField(max_length=10, choices=ORG_ROLE_CHOICES, default=VIEWER)
    invited_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    accepted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization", "email"], name="uniq_invitation_email")]
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.email} @ {self.organization} ({self.role})"


class Integration(TenantModel):
    KIND_CHOICES = [("http", "HTTP")]
    STATUS_CHOICES = [("connected", "Connected"), ("authorized", "Authorized"), ("disconnected", "Disconnected")]

    slug = models.CharField(max_length=50, validators=[slug_validator])
    name = models.CharField(max_length=200, blank=True, default="")
    kind = models.CharField(max_length=20, choices=KIND_CHOICES, default="http")
    config = models.JSONField(default=dict, blank=True)
    credentials_secret = models.CharField(max_length=64, blank=True, default="")
    side_effects = models.BooleanField(default=False)
    status = models.CharField(max_length=20, choices=STATUS_CHOICES, default="connected")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization", "slug"], name="uniq_integration_slug")]
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug


class AuditEvent(TenantModel):
    """Who did what, when, to which object. Written by services, never by views."""

    at = models.DateTimeField(default=timezone.now, db_index=True)
    actor_user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    actor_key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    actor_label = models.CharField(max_length=200)
    action = models.CharField(max_length=64)
    target_type = models.CharField(max_length=64)
    target_id = models.CharField(max_length=200)
    data = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [
            models.Index(fields=["organization", "-at"], name="audit_org_at"),
            models.Index(fields=["organization", "action", "-at"], name="audit_org_action_at"),
        ]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M} {self.actor_label} {self.action} {self.target_type}:{self.target_id}"
