"""Routes of monitoring (mounted under /v1/<tenant>/).

A conversation's id is client-chosen and may contain ":" (``agents.execution``
allows letters, digits and ``_ . : -``), so its route takes any text up to "/".
"""
from django.urls import path

from . import alerts, budgets, views

tenant_urls = [
    path("runs", views.RunViewSet.as_view({"get": "list"}), name="run-list"),
    path("runs/<name:run>", views.RunViewSet.as_view({"get": "retrieve"}), name="run-detail"),
    path("runs/<name:run>:pin", views.RunViewSet.as_view({"post": "pin"}), name="run-pin"),
    path("runs/<name:run>/spans", views.RunSpansViewSet.as_view({"get": "list"}), name="run-spans"),
    path("conversations", views.ConversationViewSet.as_view({"get": "list"}), name="conversation-list"),
    path("conversations/<str:conversation>", views.ConversationViewSet.as_view({"get": "retrieve"}),
         name="conversation-detail"),
    path("metrics", views.MetricsView.as_view(), name="org-metrics"),
    path("agents/<name:agent>/budget", budgets.BudgetView.as_view(), name="agent-budget"),
    path("agents/<name:agent>/budget:correct", budgets.BudgetCorrectionView.as_view(), name="agent-budget-correct"),
    path("settings/webhook-secret:rotate", alerts.WebhookSecretRotateView.as_view(), name="org-webhook-secret-rotate"),
    path("alerts", alerts.AlertViewSet.as_view({"get": "list"}), name="alert-list"),
    path("alerts/<int:alert>", alerts.AlertViewSet.as_view({"get": "retrieve"}), name="alert-detail"),
    path("alerts/<int:alert>:redeliver", alerts.AlertViewSet.as_view({"post": "redeliver"}), name="alert-redeliver"),
]
