"""Schemathesis fuzzes the API against its own OpenAPI schema (DESIGN's stack table).

Every operation of /v1/schema gets generated requests, valid and invalid, sent
in-process through the WSGI app as an org admin key (the tenant and agent path
parameters point at a seeded org, so requests reach the handlers instead of
stopping at 404). Each answer must: not be a server error; use a documented
status code and content type; match the documented response schema; and refuse
schema-violating input. Business refusals of schema-valid input (a taken slug,
an unknown revision) are allowed: they are the API's job, answered with the
error shape the schema documents.
"""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi import checks

from fruxon.wsgi import application

from . import factories as f
from .builders import agent_with_revision

schema = schemathesis.openapi.from_wsgi("/v1/schema?format=json", application)

CHECKS = [checks.status_code_conformance, checks.content_type_conformance, checks.response_schema_conformance,
          checks.response_headers_conformance, checks.negative_data_rejection]
_SEEDED = {"tenant": "acme", "agent": "support"}


@pytest.fixture
def admin_key(db):
    # Requests go straight into the WSGI app, inside the test's transaction: keep Django from
    # closing the connection at each request's end (its test Client does the same).
    from django.core import signals
    from django.db import close_old_connections

    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    org = f.OrganizationFactory(slug="acme")
    f.member(org, "owner", "olivia")
    agent_with_revision(org, "support")
    _, key = f.api_key(org, preset="admin")
    yield key
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@schema.parametrize()
@settings(max_examples=8, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
@pytest.mark.django_db
def test_api_conforms_to_its_schema(case, admin_key):
    for name, value in _SEEDED.items():
        if case.path_parameters and name in case.path_parameters:
            case.path_parameters[name] = value
    case.call_and_validate(headers={"X-API-KEY": admin_key}, checks=[schemathesis.checks.not_a_server_error, *CHECKS])
