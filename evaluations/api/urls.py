"""Routes of evaluations (mounted under /v1/<tenant>/)."""
from django.urls import path

from . import views

tenant_urls = [
    path("datasets", views.DatasetViewSet.as_view({"get": "list", "post": "create"}), name="dataset-list"),
    path("datasets/<name:dataset>", views.DatasetViewSet.as_view({"get": "retrieve", "patch": "partial_update", "delete": "destroy"}), name="dataset-detail"),
    path("datasets/<name:dataset>/cases", views.CaseViewSet.as_view({"get": "list", "post": "create"}), name="case-list"),
    path("datasets/<name:dataset>/cases/<int:case>", views.CaseViewSet.as_view({"get": "retrieve", "patch": "partial_update", "delete": "destroy"}), name="case-detail"),
    path("runs/<name:run>:add-to-dataset", views.AddToDatasetView.as_view(), name="run-add-to-dataset"),
    path("evaluations", views.EvaluationViewSet.as_view({"get": "list", "post": "create"}), name="evaluation-list"),
    path("evaluations/<name:evaluation>", views.EvaluationViewSet.as_view({"get": "retrieve"}), name="evaluation-detail"),
    path("evaluations/<name:evaluation>:compare", views.EvaluationViewSet.as_view({"get": "compare"}), name="evaluation-compare"),
    path("evaluations/<name:evaluation>:cancel", views.EvaluationViewSet.as_view({"post": "cancel"}), name="evaluation-cancel"),
    path("agents/<name:agent>/evaluation-schedule", views.EvaluationScheduleView.as_view(), name="evaluation-schedule"),
]
