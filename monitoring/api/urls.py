"""Routes of monitoring (mounted under /v1/<tenant>/)."""
from django.urls import path

from . import views

tenant_urls = [
    path("runs/<name:run>", views.RunViewSet.as_view({"get": "retrieve"}), name="run-detail"),
]
