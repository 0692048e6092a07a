"""Routes of deployments (mounted under /v1/<tenant>/)."""
from django.urls import path

from . import transfer, views

A = "agents/<name:agent>"

tenant_urls = [
    path(f"{A}/readiness", views.ReadinessView.as_view(), name="agent-readiness"),
    path(f"{A}:deploy", views.DeployView.as_view(), name="agent-deploy"),
    path(f"{A}:rollback", views.RollbackView.as_view(), name="agent-rollback"),
    path(f"{A}/deployments", views.DeploymentViewSet.as_view({"get": "list"}), name="deployment-list"),
    path(f"{A}/deployments/<int:deployment>", views.DeploymentViewSet.as_view({"get": "retrieve"}), name="deployment-detail"),
    path(f"{A}/deployments/<int:deployment>/health", views.DeploymentViewSet.as_view({"get": "health"}), name="deployment-health"),
    path(f"{A}/scheduled-deployments", views.ScheduledDeploymentViewSet.as_view({"get": "list", "post": "create"}), name="schedule-list"),
    path(f"{A}/scheduled-deployments/<int:schedule>", views.ScheduledDeploymentViewSet.as_view({"get": "retrieve"}), name="schedule-detail"),
    path(f"{A}/scheduled-deployments/<int:schedule>:cancel", views.ScheduledDeploymentViewSet.as_view({"post": "cancel"}), name="schedule-cancel"),
    path(f"{A}/shadow", views.ShadowView.as_view(), name="agent-shadow"),
    path(f"{A}/shadow/results", views.ShadowResultViewSet.as_view({"get": "list"}), name="shadow-results"),
    path(f"{A}/deploy-policy", views.DeployPolicyView.as_view(), name="agent-deploy-policy"),
    path("export", transfer.ExportView.as_view(), name="org-export"),
    path("import", transfer.ImportView.as_view(), name="org-import"),
    path(f"{A}:promote", transfer.PromoteView.as_view(), name="agent-promote"),
]
