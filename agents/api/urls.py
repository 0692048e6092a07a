"""Routes of agents (mounted under /v1/<tenant>/)."""
from django.urls import path

from . import views

agent_detail = {"get": "retrieve", "patch": "partial_update", "delete": "destroy"}

tenant_urls = [
    path("agents", views.AgentViewSet.as_view({"get": "list", "post": "create"}), name="agent-list"),
    path("agents/<name:agent>", views.AgentViewSet.as_view(agent_detail), name="agent-detail"),
    path("agents/<name:agent>:execute", views.ExecuteView.as_view(), name="agent-execute"),
    path("agents/<name:agent>/revisions", views.RevisionViewSet.as_view({"get": "list", "post": "create"}), name="revision-list"),
    path("agents/<name:agent>/revisions/<name:rev>", views.RevisionViewSet.as_view({"get": "retrieve"}), name="revision-detail"),
    path("agents/<name:agent>/revisions/<name:rev>:diff", views.RevisionViewSet.as_view({"get": "diff"}), name="revision-diff"),
    path("agents/<name:agent>/grants", views.GrantViewSet.as_view({"get": "list_all"}), name="grant-list"),
    path("agents/<name:agent>/grants/<name:user>", views.GrantViewSet.as_view({"get": "retrieve", "put": "update", "delete": "destroy"}), name="grant-detail"),
    path("agents/<name:agent>/prices", views.PricesView.as_view(), name="agent-prices"),
    path("prices", views.PricesView.as_view(), name="org-prices"),
]
