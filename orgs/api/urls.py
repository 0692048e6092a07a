"""Routes of the orgs app, mounted under /v1/ and /v1/<tenant>/."""
from django.urls import path

from . import rate_limits, views

principal_urls = [
    path("auth/token", views.AuthTokenView.as_view(), name="auth-token"),
    path("orgs", views.OrgListView.as_view(), name="org-list"),
]

tenant_urls = [
    path("settings", views.SettingsView.as_view(), name="org-settings"),
    path("members", views.MemberViewSet.as_view({"get": "list", "post": "create"}), name="member-list"),
    path("members/<int:pk>", views.MemberViewSet.as_view({"get": "retrieve", "patch": "partial_update", "delete": "destroy"}), name="member-detail"),
    path("api-keys", views.ApiKeyViewSet.as_view({"get": "list", "post": "create"}), name="apikey-list"),
    path("api-keys/scopes", views.ApiKeyScopesView.as_view(), name="apikey-scopes"),
    path("api-keys/<int:pk>", views.ApiKeyViewSet.as_view({"get": "retrieve", "patch": "partial_update", "delete": "destroy"}), name="apikey-detail"),
    path("api-keys/<int:pk>:rotate", views.ApiKeyViewSet.as_view({"post": "rotate"}), name="apikey-rotate"),
    path("secrets", views.SecretViewSet.as_view({"get": "list"}), name="secret-list"),
    path("secrets/<name:name>", views.SecretViewSet.as_view({"get": "retrieve", "put": "update", "delete": "destroy"}), name="secret-detail"),
    path("secrets/<name:name>:rollback", views.SecretViewSet.as_view({"post": "rollback"}), name="secret-rollback"),
    path("integrations", views.IntegrationViewSet.as_view({"get": "list", "post": "create"}), name="integration-list"),
    path("integrations/<name:slug>", views.IntegrationViewSet.as_view({"get": "retrieve", "patch": "partial_update", "delete": "destroy"}), name="integration-detail"),
    path("audit-events", views.AuditEventViewSet.as_view({"get": "list"}), name="auditevent-list"),
    path("rate-limits", rate_limits.RateLimitsView.as_view(), name="org-rate-limits"),
]
