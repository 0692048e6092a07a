"""Every 4xx/5xx is the JSON error shape, including unknown routes, wrong methods and crashes."""
from __future__ import annotations

import pytest
from django.test import override_settings
from django.urls import path

from fruxon.api.base import Access, OrgScopedAPIView


def _shape(response, status, code):
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["error"]["code"] == code and body["error"]["message"]
    return body


@pytest.mark.parametrize("url", ["/nope", "/v1/", "/v1/acme/unknown-thing", "/v1/acme/members/abc", "/v1/acme/agents/x:explode"])
def test_unknown_routes_are_json_404(client, url):
    _shape(client.get(url), 404, "not_found")


def test_unknown_routes_are_json_404_in_debug_too(client):
    with override_settings(DEBUG=True):
        _shape(client.get("/definitely/not/here"), 404, "not_found")


def test_wrong_method_is_json_405(org, owner_client):
    _shape(owner_client.delete("/v1/acme/audit-events"), 405, "method_not_allowed")
    _shape(owner_client.put("/v1/orgs", {}, format="json"), 405, "method_not_allowed")


class Boom(OrgScopedAPIView):
    access = {"GET": Access("viewer", "org:read")}

    def get(self, request, tenant):
        raise RuntimeError("database password is hunter2")


urlpatterns = [path("v1/<name:tenant>/boom", Boom.as_view())]


@override_settings(ROOT_URLCONF=__name__, DEBUG=False)
def test_unhandled_exception_is_json_500_without_trace(org, owner_client):
    body = _shape(owner_client.get("/v1/acme/boom"), 500, "internal_error")
    text = str(body)
    assert "hunter2" not in text and "Traceback" not in text and "RuntimeError" not in text


def test_subclass_cannot_bypass_tenancy():
    with pytest.raises(TypeError, match="tenancy"):
        class Sneaky(OrgScopedAPIView):  # noqa: F841
            def initial(self, request, *args, **kwargs):
                return None
    with pytest.raises(TypeError):
        from fruxon.api.base import OrgScopedViewSet

        class Sneakier(OrgScopedViewSet):  # noqa: F841
            def get_queryset(self):
                return None


@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
@pytest.mark.parametrize("url", ["/v1/acme/nothing-here", "/v1/acme/agents/support:frobnicate",
                                 "/v1/acme/agents/support:execute/", "/nowhere"])
def test_unknown_routes_are_json_404_for_unsafe_methods_too(org, url, method):
    """Not a CSRF refusal (403): an unknown route is a 404 whatever the method, with or without a session."""
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    _shape(getattr(client, method)(url, data="{}", content_type="application/json"), 404, "not_found")


def test_invalid_cursor_is_400(org, owner_client):
    body = _shape(owner_client.get("/v1/acme/audit-events?cursor=garbage"), 400, "invalid_request")
    assert body["error"]["details"]["fields"] == {"cursor": ["Invalid cursor."]}


def test_body_level_errors_are_named_body(org, owner_client):
    body = _shape(owner_client.post("/v1/acme/api-keys", "null", content_type="application/json"), 400,
                  "invalid_request")
    assert "body" in body["error"]["details"]["fields"], body
    assert "non_field_errors" not in str(body)


@override_settings(ROOT_URLCONF=__name__, DEBUG=True)
def test_debug_500_names_the_exception_class_but_not_its_text(org, owner_client):
    body = _shape(owner_client.get("/v1/acme/boom"), 500, "internal_error")
    assert "RuntimeError" in body["error"]["message"] and "hunter2" not in str(body)


def test_a_path_with_a_newline_is_a_json_404_in_debug_too(client):
    with override_settings(DEBUG=True):
        _shape(client.get("/v1/acme/datasets/%0Ax/cases/-650"), 404, "not_found")


def test_options_describes_without_probing_objects(org, owner_client):
    from .builders import agent_with_revision

    agent_with_revision(org, "support")
    response = owner_client.options("/v1/acme/agents/support/grants/nobody")
    assert response.status_code == 200 and response.json()["name"]
