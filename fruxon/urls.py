"""URL map: /v1/ (API), /v1/schema + /v1/docs (OpenAPI), /admin/ (people).

Anything else answers the JSON 404 error shape, in DEBUG too.
"""
from django.contrib import admin
from django.urls import include, path, re_path
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from fruxon import converters  # noqa: F401  (registers the "name" converter)
from fruxon.api import errors
from agents.api import urls as agents_urls
from deployments.api import urls as deployments_urls
from evaluations.api import urls as evaluations_urls
from monitoring.api import urls as monitoring_urls
from orgs.api import urls as orgs_urls

tenant_urls = [
    *orgs_urls.tenant_urls, *agents_urls.tenant_urls, *deployments_urls.tenant_urls, *evaluations_urls.tenant_urls,
    *monitoring_urls.tenant_urls,
]

urlpatterns = [
    path("admin/", admin.site.urls),
    path("v1/schema", SpectacularAPIView.as_view(), name="schema"),
    # The split view serves its init script at /v1/docs?script (no inline script for the CSP to allow);
    # Swagger UI itself comes from drf-spectacular-sidecar's static files (SPECTACULAR_SETTINGS).
    path("v1/docs", SpectacularSwaggerSplitView.as_view(url_name="schema"), name="docs"),
    path("v1/", include(orgs_urls.principal_urls)),
    path("v1/<name:tenant>/", include(tenant_urls)),
    # csrf_exempt: an unknown route is a 404 for every method, not a CSRF refusal (it changes nothing).
    # [\s\S], not ".": a path holding a newline (%0A) is an unknown route too, not Django's HTML debug 404.
    re_path(r"^[\s\S]*$", csrf_exempt(errors.handler404), name="not-found"),
]

handler400 = errors.handler400
handler403 = errors.handler403
handler404 = errors.handler404
handler500 = errors.handler500
