"""The OpenAPI schema (/v1/schema) describes every endpoint, validly, with the error shape.

API.md: "it must describe every endpoint below". drf-spectacular's own validator
and warnings run over the whole schema; every route of the URL resolver must be in
it with each of its methods; every operation documents the error answers.
"""
from __future__ import annotations

import functools
import io
import json
import re

from django.core.management import call_command

from .sweep import NON_API_ROUTES, api_routes


@functools.cache
def _schema() -> dict:
    out = io.StringIO()
    call_command("spectacular", "--validate", "--fail-on-warn", "--format", "openapi-json", stdout=out)
    return json.loads(out.getvalue())


def _openapi_path(pattern: str) -> str:
    # Django "v1/<name:tenant>/agents/<name:agent>:execute" -> OpenAPI "/v1/{tenant}/agents/{agent}:execute"
    # (drf-spectacular names a primary-key lookup {id}, as API.md does)
    return "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", pattern).replace("{pk}", "{id}")


def test_schema_is_valid_and_covers_every_route():
    schema = _schema()  # --fail-on-warn: a view spectacular cannot describe fails here
    paths = schema["paths"]
    missing = []
    for route in api_routes():
        if route.name in NON_API_ROUTES:
            continue
        described = paths.get(_openapi_path(route.pattern), {})
        for method in route.methods:
            if method.lower() not in described:
                missing.append(f"{method} {_openapi_path(route.pattern)}")
    assert not missing, "routes the schema does not describe: " + ", ".join(missing)


def test_every_operation_documents_the_error_shape():
    schema = _schema()
    assert set(schema["components"]["schemas"]["Error"]["properties"]["error"]["required"]) == {
        "code", "message", "details"}
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            if method not in {"get", "put", "post", "patch", "delete"}:
                continue
            errors = {s for s in operation["responses"] if s[0] in "45"}
            assert {"400", "405"} <= errors, (method, path, errors)
            if path != "/v1/auth/token" or method != "post":
                assert {"401", "403"} <= errors, (method, path, errors)


def test_execute_documents_its_answers_and_overhead_header():
    execute = _schema()["paths"]["/v1/{tenant}/agents/{agent}:execute"]["post"]
    assert {"200", "400", "401", "403", "404", "409", "429", "502", "503", "504"} <= set(execute["responses"])
    assert "X-Fruxon-Overhead-Ms" in execute["responses"]["200"]["headers"]
