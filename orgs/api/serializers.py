"""Request and response shapes for orgs endpoints (camelCase, API.md)."""
from __future__ import annotations

import re

from django.core.validators import URLValidator
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from fruxon.api.serializers import StrictSerializer
from orgs.api.rate_limits import KeyRateLimitsSerializer
from orgs.models import ApiKey, AuditEvent, Integration, Membership, Organization, Secret, secret_name_validator, slug_validator
from orgs.roles import ALL_SCOPES, ORG_ROLE_CHOICES, PRESETS

_CREDENTIAL_HEADER = re.compile(r"authorization|api[-_]?key|token|cookie|secret|password", re.I)


# --- auth -------------------------------------------------------------------------
class TokenRequest(StrictSerializer):
    username = serializers.CharField(max_length=150)
    password = serializers.CharField(max_length=4096, trim_whitespace=False, style={"input_type": "password"})


class TokenResponse(serializers.Serializer):
    token = serializers.CharField(help_text="fxu_... personal token, shown once")
    prefix = serializers.CharField()


# --- organizations ----------------------------------------------------------------------
class OrganizationSerializer(serializers.ModelSerializer):
    retentionDays = serializers.IntegerField(source="retention_days", read_only=True)
    createdAt = serializers.DateTimeField(source="created_at", read_only=True)
    role = serializers.SerializerMethodField()

    class Meta:
        model = Organization
        fields = ["slug", "name", "retentionDays", "createdAt", "role"]

    def get_role(self, org) -> str | None:
        return self.context.get("roles", {}).get(org.pk)


class OrganizationCreate(StrictSerializer):
    slug = serializers.CharField(max_length=50, validators=[slug_validator])
    name = serializers.CharField(max_length=200)
    retentionDays = serializers.IntegerField(source="retention_days", min_value=1, max_value=3650, default=30)


class SettingsSerializer(StrictSerializer):
    name = serializers.CharField(max_length=200, required=False)
    retentionDays = serializers.IntegerField(source="retention_days", min_value=1, max_value=3650, required=False)
    slug = serializers.CharField(read_only=True)
    webhookSecretPreviousUntil = serializers.DateTimeField(
        read_only=True, allow_null=True,
        help_text="after a rotation of the alert-webhook signing secret, until when the previous secret also "
                  "signs (a second webhook-signature entry); null when it no longer does. The secret itself is "
                  "shown only by POST settings/webhook-secret:rotate")


# --- members ------------------------------------------------------------------------------
class MembershipSerializer(serializers.ModelSerializer):
    user = serializers.CharField(source="user.username")
    email = serializers.EmailField(source="user.email")
    createdAt = serializers.DateTimeField(source="created_at")

    class Meta:
        model = Membership
        fields = ["id", "user", "email", "role", "createdAt"]


class MemberCreate(StrictSerializer):
    user = serializers.CharField(max_length=254, help_text="username or email of an existing user, or an email "
                                                           "with no account yet (invited)")
    role = serializers.ChoiceField(choices=ORG_ROLE_CHOICES)


class MemberInvited(serializers.Serializer):
    invited = serializers.BooleanField(help_text="always true: an invitation was sent instead of a membership")


class MemberUpdate(StrictSerializer):
    role = serializers.ChoiceField(choices=ORG_ROLE_CHOICES)


# --- API keys ------------------------------------------------------------------------------
class ApiKeySerializer(serializers.ModelSerializer):
    createdAt = serializers.DateTimeField(source="created_at")
    expiresAt = serializers.DateTimeField(source="expires_at", allow_null=True)
    revokedAt = serializers.DateTimeField(source="revoked_at", allow_null=True)
    lastUsedAt = serializers.DateTimeField(source="last_used_at", allow_null=True)
    createdBy = serializers.CharField(source="created_by.username", default=None, allow_null=True)
    rotatedFromId = serializers.IntegerField(source="rotated_from_id", allow_null=True)
    active = serializers.SerializerMethodField()
    rateLimits = serializers.SerializerMethodField(help_text="This key's own rate limits (null: only the org's apply).")

    class Meta:
        model = ApiKey
        fields = ["id", "name", "prefix", "scopes", "agents", "active", "createdAt", "createdBy", "expiresAt",
                  "revokedAt", "lastUsedAt", "rotatedFromId", "rateLimits"]

    def get_active(self, key) -> bool:
        return key.is_active()

    @extend_schema_field(KeyRateLimitsSerializer)
    def get_rateLimits(self, key) -> dict:
        from orgs.services.rate_limits import to_api

        return to_api(key)


class ApiKeyCreated(ApiKeySerializer):
    key = serializers.SerializerMethodField(help_text="The plaintext fx_live_ key. Shown only in this response.")

    def get_key(self, key) -> str:
        return self.context["plaintext"]

    class Meta(ApiKeySerializer.Meta):
        fields = ApiKeySerializer.Meta.fields + ["key"]


class ApiKeyCreate(StrictSerializer):
    name = serializers.CharField(max_length=200)
    scopes = serializers.ListField(child=serializers.ChoiceField(choices=ALL_SCOPES), required=False, max_length=len(ALL_SCOPES))
    preset = serializers.ChoiceField(choices=sorted(PRESETS), required=False)
    agents = serializers.ListField(child=serializers.CharField(max_length=50, validators=[slug_validator]), required=False, max_length=500)
    expiresAt = serializers.DateTimeField(source="expires_at", required=False, allow_null=True)
    rateLimits = KeyRateLimitsSerializer(required=False, help_text="This key's own rate limits, within the org's "
                                            "(and, when a key creates it, within the creating key's).")

    def validate(self, attrs):
        if not attrs.get("scopes") and not attrs.get("preset"):
            raise serializers.ValidationError({"scopes": ["Give scopes, a preset, or both."]})
        return attrs


class ApiKeyPatch(StrictSerializer):
    rateLimits = KeyRateLimitsSerializer(help_text="The limits given change; the others stay.")


class ApiKeyRotate(StrictSerializer):
    overlapSeconds = serializers.IntegerField(min_value=0, max_value=30 * 86400, default=3600,
                                              help_text="How long the old key keeps working.")


class ScopesResponse(serializers.Serializer):
    scopes = serializers.ListField(child=serializers.CharField())
    presets = serializers.DictField(child=serializers.ListField(child=serializers.CharField()))


# --- secrets ----------------------------------------------------------------------------------
class SecretSerializer(serializers.ModelSerializer):
    """A secret's metadata. There is deliberately no value field."""

    allowedAgents = serializers.ListField(source="allowed_agents", child=serializers.CharField())
    allowedHosts = serializers.ListField(
        source="allowed_hosts", child=serializers.CharField(),
        help_text="Hosts (host or host:port, lowercase, IDNA in ASCII form) the value may be sent to, besides the "
                  "hosts of the integrations whose credentialsSecret it is.")
    version = serializers.IntegerField(source="current_version")
    createdAt = serializers.DateTimeField(source="created_at")
    updatedAt = serializers.DateTimeField(source="updated_at")
    updatedBy = serializers.CharField(source="updated_by.username", default=None, allow_null=True)

    class Meta:
        model = Secret
        fields = ["name", "description", "version", "allowedAgents", "allowedHosts", "createdAt", "updatedAt",
                  "updatedBy"]


class SecretPut(StrictSerializer):
    value = serializers.CharField(required=False, allow_blank=False, trim_whitespace=False, write_only=True,
                                  style={"input_type": "password"}, help_text="Write-only; a new value makes a new version.")
    description = serializers.CharField(required=False, allow_blank=True, max_length=500)
    allowedAgents = serializers.ListField(
        source="allowed_agents", required=False, max_length=500,
        child=serializers.RegexField(r"^(\*|[a-z0-9](?:[a-z0-9-]{0,48}[a-z0-9])?)$", max_length=50),
        help_text='Agent slugs allowed to resolve this secret, or ["*"].',
    )
    allowedHosts = serializers.ListField(
        source="allowed_hosts", required=False, max_length=100,
        child=serializers.CharField(max_length=261, trim_whitespace=False),
        help_text='Hosts the value may be sent to, e.g. ["api.openai.com", "llm.internal:8443"]: a host name '
                  "(internationalized names allowed) or IP address, optionally :port (then only that port; "
                  "without one, any port); no scheme, path or wildcard. The hosts of the integrations whose "
                  "credentialsSecret it is are allowed as well. A revision that would send the secret elsewhere "
                  "is refused with 400 secret_destination, and the engine checks again at every call.",
    )


class SecretRollback(StrictSerializer):
    version = serializers.IntegerField(min_value=1)


class SecretName(StrictSerializer):
    name = serializers.CharField(max_length=64, validators=[secret_name_validator])


# --- integrations ------------------------------------------------------------------------------
class HttpUrlField(serializers.URLField):
    """A URL whose scheme is http or https (URLField's own validator, narrowed: one message, not two)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.validators[-1] = URLValidator(schemes=["http", "https"], message=self.error_messages["invalid"])


class HttpConfig(StrictSerializer):
    baseUrl = HttpUrlField(max_length=2000)
    headers = serializers.DictField(child=serializers.CharField(max_length=2000), required=False, default=dict)
    authHeader = serializers.CharField(max_length=100, required=False, default="Authorization",
                                       help_text="Header that carries the credentials secret's value.")
    authScheme = serializers.CharField(max_length=30, required=False, default="Bearer", allow_blank=True,
                                       help_text='prefix of the credentials value ("Bearer"); empty sends the bare value')

    def validate_headers(self, headers):
        bad = [name for name in headers if _CREDENTIAL_HEADER.search(name)]
        if bad:
            raise serializers.ValidationError(
                f"Headers {bad} look like credentials; store them in a secret and set credentialsSecret."
            )
        return headers


class IntegrationSerializer(serializers.ModelSerializer):
    credentialsSecret = serializers.CharField(source="credentials_secret")
    sideEffects = serializers.BooleanField(source="side_effects")
    createdAt = serializers.DateTimeField(source="created_at")
    updatedAt = serializers.DateTimeField(source="updated_at")

    class Meta:
        model = Integration
        fields = ["slug", "name", "kind", "config", "credentialsSecret", "sideEffects", "status", "createdAt", "updatedAt"]


class IntegrationWrite(StrictSerializer):
    slug = serializers.CharField(max_length=50, validators=[slug_validator])
    name = serializers.CharField(max_length=200, required=False, allow_blank=True)
    kind = serializers.ChoiceField(choices=Integration.KIND_CHOICES, default="http")
    config = HttpConfig()
    credentialsSecret = serializers.CharField(source="credentials_secret", max_length=64, required=False,
                                              allow_blank=True, validators=[secret_name_validator])
    sideEffects = serializers.BooleanField(source="side_effects", required=False, default=False)
    status = serializers.ChoiceField(choices=Integration.STATUS_CHOICES, default="connected")


class IntegrationPatch(IntegrationWrite):
    slug = None  # immutable

    def __init__(self, *args, **kwargs):
        kwargs["partial"] = True
        super().__init__(*args, **kwargs)


# --- audit ----------------------------------------------------------------------------------------
class AuditEventSerializer(serializers.ModelSerializer):
    actor = serializers.CharField(source="actor_label")
    targetType = serializers.CharField(source="target_type")
    targetId = serializers.CharField(source="target_id")

    class Meta:
        model = AuditEvent
        fields = ["id", "at", "actor", "action", "targetType", "targetId", "data"]
