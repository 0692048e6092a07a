"""The route inventory the sweep tests walk, generated from Django's URL resolver.

Every route under ``/v1/<tenant>/`` must have an entry in ``OBJECTS`` saying
how to point it at org A's objects; a route without one fails
``test_every_tenant_route_is_covered``. That is the point: a new endpoint
cannot ship without isolation and role coverage.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from django.urls import URLPattern, URLResolver, get_resolver

from fruxon.api.base import OrgScopedAPIView, OrgScopedGenericAPIView, OrgScopedViewSet
from orgs.roles import ROLE_SCOPES

TENANT_BASES = (OrgScopedAPIView, OrgScopedGenericAPIView, OrgScopedViewSet)
PRINCIPAL_ROUTES = {"auth-token", "org-list"}
NON_API_ROUTES = {"schema", "docs", "not-found"}


@dataclass(frozen=True)
class Route:
    name: str
    pattern: str
    view_class: type
    methods: tuple[str, ...]


def _walk(patterns, prefix=""):
    for entry in patterns:
        if isinstance(entry, URLResolver):
            yield from _walk(entry.url_patterns, prefix + str(entry.pattern))
        elif isinstance(entry, URLPattern):
            yield prefix + str(entry.pattern), entry


def api_routes() -> list[Route]:
    routes = []
    for pattern, entry in _walk(get_resolver().url_patterns):
        if not pattern.startswith("v1/"):
            continue
        callback = entry.callback
        cls = getattr(callback, "cls", None)
        if cls is None:
            continue
        actions = getattr(callback, "actions", None)
        if actions:
            methods = tuple(sorted(m.upper() for m in actions if m != "head"))
        else:
            methods = tuple(sorted(m for m in ("GET", "POST", "PUT", "PATCH", "DELETE") if hasattr(cls, m.lower())))
        routes.append(Route(entry.name, pattern, cls, methods))
    return routes


def tenant_routes() -> list[Route]:
    return [r for r in api_routes() if "<name:tenant>" in r.pattern]


@dataclass
class Target:
    """How to aim a route at org A: URL kwargs (besides tenant) and upsert routes."""

    kwargs: Callable[[object], dict] = field(default=lambda w: {})
    # Methods that create-or-update by a name in the URL: under another org's
    # slug they create a new row there instead of 404; the sweep then checks
    # that org A's object is untouched.
    upsert_methods: tuple[str, ...] = ()
    # Routes that hand out or take away rights (keys, members, grants; issue 12 item 1): a key
    # needs, besides the route's scope, every scope the target holds or the request gives.
    # ``holds`` names those scopes; test_sweep checks a key without them is refused (403).
    holds: Callable[[object], tuple[str, ...]] | None = None


def _an_alert(world):
    """An alert of org A about alpha-agent (made on first use), with an email delivery row."""
    from monitoring.models import Alert, AlertDelivery

    alert, created = Alert.objects.get_or_create(
        organization=world.a, dedupe_key="sweep", defaults={
            "kind": "budget.threshold", "subject": "alpha-agent reached 80%", "emails": ["ops@alpha.example"],
            "payload": {"agent": "alpha-agent", "threshold": 0.8}})
    if created:
        AlertDelivery.objects.create(organization=world.a, alert=alert, channel="email", status="delivered")
    return alert


OBJECTS: dict[str, Target] = {
    "org-settings": Target(),
    "org-webhook-secret-rotate": Target(),
    "alert-list": Target(),
    "alert-detail": Target(lambda w: {"alert": _an_alert(w).pk}),
    "alert-redeliver": Target(lambda w: {"alert": _an_alert(w).pk}),
    "member-list": Target(),
    "member-detail": Target(lambda w: {"pk": w.a_viewer_membership.pk}, holds=lambda w: tuple(ROLE_SCOPES["viewer"])),
    "apikey-list": Target(),
    "apikey-scopes": Target(),
    "apikey-detail": Target(lambda w: {"pk": w.a_narrow_key.pk}, holds=lambda w: tuple(w.a_narrow_key.scopes)),
    "apikey-rotate": Target(lambda w: {"pk": w.a_narrow_key.pk}, holds=lambda w: tuple(w.a_narrow_key.scopes)),
    "secret-list": Target(),
    "secret-detail": Target(lambda w: {"name": "ALPHA_SECRET"}, upsert_methods=("PUT",)),
    "secret-rollback": Target(lambda w: {"name": "ALPHA_SECRET"}),
    "integration-list": Target(),
    "integration-detail": Target(lambda w: {"slug": "alpha-int"}),
    "auditevent-list": Target(),
    "org-rate-limits": Target(),
    "agent-list": Target(),
    "agent-detail": Target(lambda w: {"agent": "alpha-agent"}),
    "agent-execute": Target(lambda w: {"agent": "alpha-agent"}),
    "agent-prices": Target(lambda w: {"agent": "alpha-agent"}),
    "org-prices": Target(),
    "revision-list": Target(lambda w: {"agent": "alpha-agent"}),
    "revision-detail": Target(lambda w: {"agent": "alpha-agent", "rev": w.a_revision.id}),
    "revision-diff": Target(lambda w: {"agent": "alpha-agent", "rev": w.a_revision.id}),
    "grant-list": Target(lambda w: {"agent": "alpha-agent"}),
    "grant-detail": Target(lambda w: {"agent": "alpha-agent", "user": "alpha-viewer"},
                           holds=lambda w: tuple(ROLE_SCOPES["viewer"])),
    "run-detail": Target(lambda w: {"run": w.a_run.id}),
    "run-list": Target(),
    "run-pin": Target(lambda w: {"run": w.a_run.id}),
    "run-spans": Target(lambda w: {"run": w.a_run.id}),
    "conversation-list": Target(),
    "conversation-detail": Target(lambda w: {"conversation": w.a_run.conversation.key}),
    "org-metrics": Target(),
    "agent-readiness": Target(lambda w: {"agent": "alpha-agent"}),
    "agent-deploy": Target(lambda w: {"agent": "alpha-agent"}),
    "agent-rollback": Target(lambda w: {"agent": "alpha-agent"}),
    "deployment-list": Target(lambda w: {"agent": "alpha-agent"}),
    "deployment-detail": Target(lambda w: {"agent": "alpha-agent", "deployment": w.a_deployment.pk}),
    "deployment-health": Target(lambda w: {"agent": "alpha-agent", "deployment": w.a_deployment.pk}),
    "schedule-list": Target(lambda w: {"agent": "alpha-agent"}),
    "schedule-detail": Target(lambda w: {"agent": "alpha-agent", "schedule": w.a_schedule.pk}),
    "schedule-cancel": Target(lambda w: {"agent": "alpha-agent", "schedule": w.a_schedule.pk}),
    "agent-shadow": Target(lambda w: {"agent": "alpha-agent"}),
    "shadow-results": Target(lambda w: {"agent": "alpha-agent"}),
    "agent-deploy-policy": Target(lambda w: {"agent": "alpha-agent"}),
    "dataset-list": Target(),
    "dataset-detail": Target(lambda w: {"dataset": "alpha-data"}),
    "case-list": Target(lambda w: {"dataset": "alpha-data"}),
    "case-detail": Target(lambda w: {"dataset": "alpha-data", "case": w.a_case.pk}),
    "run-add-to-dataset": Target(lambda w: {"run": w.a_run.id}),
    "evaluation-list": Target(),
    "evaluation-detail": Target(lambda w: {"evaluation": w.a_evaluation.id}),
    "evaluation-compare": Target(lambda w: {"evaluation": w.a_evaluation.id}),
    "evaluation-cancel": Target(lambda w: {"evaluation": w.a_evaluation.id}),
    "evaluation-schedule": Target(lambda w: {"agent": "alpha-agent"}),
    "agent-budget": Target(lambda w: {"agent": "alpha-agent"}),
    "agent-budget-correct": Target(lambda w: {"agent": "alpha-agent"}),
    "org-export": Target(),
    "org-import": Target(),
    "agent-promote": Target(lambda w: {"agent": "alpha-agent"}),
}
