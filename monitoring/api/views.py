"""Monitoring endpoints: runs (with their span trees)."""
from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.response import Response

from fruxon.api.base import Access, OrgScopedViewSet
from orgs.roles import VIEWER

from ..models import Run
from . import serializers as s


class RunViewSet(OrgScopedViewSet):
    queryset = Run.objects.all()
    serializer_class = s.RunSerializer
    lookup_url_kwarg = "run"
    lookup_field = "pk"
    access = {"GET": Access(VIEWER, "runs:read")}

    def refine_queryset(self, queryset):
        queryset = queryset.select_related("agent", "conversation")
        if self.api_key is not None and self.api_key.agents:
            queryset = queryset.filter(agent__slug__in=self.api_key.agents)
        return queryset

    @extend_schema(responses=s.RunDetailSerializer)
    def retrieve(self, request, tenant, run):
        return Response(s.RunDetailSerializer(self.object).data)
