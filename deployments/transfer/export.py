"""Export: an organization (or some of its agents) as a ``fruxon.export/v1`` document.

``export_organization`` reads; it writes nothing and never touches a secret
value: it reads secret *names* from revision references, integration
``credentials_secret`` and judge models, and imports nothing that decrypts.
What goes in (the format is ``deployments/schemas/fruxon.export.v1.json``):

* agents (all, or the ``agents`` slugs; an unknown slug is a 400; for a key limited to some
  agents, only those, and another agent named is a 403) with their
  deployed revision, or every revision with ``history=True``, oldest first;
  each agent's gating dataset slug, gate tolerance and budget;
* datasets with their cases: all of them, or (with an ``agents`` filter) the
  gating datasets of those agents;
* integrations without credentials: all, or (filtered) the ones the exported
  revisions call;
* the names of the secrets the exported objects reference.

``export_revision`` is the narrow document a promotion carries: one agent,
one revision, nothing else (no budget, gate or dataset, so the target's own
settings stay as they are).
"""
from __future__ import annotations

from collections import defaultdict

from django.utils import timezone

from agents import engine
from agents.models import Agent, Revision
from evaluations.models import Case, Dataset
from fruxon.errors import Forbidden, InvalidRequest
from monitoring.models import Budget
from orgs.models import Integration, Organization

from .document import FORMAT, judge_secrets


def _iso(moment) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _revision(revision: Revision) -> dict:
    return {"id": revision.id, "contentHash": revision.content_hash, "parentId": revision.parent_id,
            "message": revision.message, "createdAt": _iso(revision.created_at), "spec": revision.spec}


def _budget(budget: Budget | None) -> dict | None:
    if budget is None:
        return None
    # No alertWebhook: a webhook URL is a bearer credential (Slack's, for one) and belongs to one
    # environment; the target keeps its own.
    return {"period": budget.period, "amountUsd": format(budget.amount_usd, "f"), "enforce": budget.enforce,
            "alertThresholds": list(budget.alert_thresholds), "alertEmails": list(budget.alert_emails)}


def _dataset(dataset: Dataset, cases: list[Case]) -> dict:
    return {"slug": dataset.slug, "name": dataset.name, "description": dataset.description,
            "metrics": dataset.metrics, "passThreshold": dataset.pass_threshold,
            "cases": [{"input": c.input, "expected": c.expected, "critical": c.critical, "tags": list(c.tags)}
                      for c in cases]}


def _integration(integration: Integration) -> dict:
    return {"slug": integration.slug, "name": integration.name, "kind": integration.kind,
            "config": integration.config, "credentialsSecret": integration.credentials_secret,
            "sideEffects": integration.side_effects}


def _secrets(agents: list[dict], datasets: list[dict], integrations: list[dict]) -> list[dict]:
    used_by: dict[str, set[str]] = defaultdict(set)
    for agent in agents:
        for revision in agent["revisions"]:
            for name in engine.referenced_secrets(revision["spec"]):
                used_by[name].add(f"agent:{agent['slug']}")
    for dataset in datasets:
        for name in judge_secrets(dataset["metrics"]):
            used_by[name].add(f"dataset:{dataset['slug']}")
    for integration in integrations:
        if integration["credentialsSecret"]:
            used_by[integration["credentialsSecret"]].add(f"integration:{integration['slug']}")
    return [{"name": name, "usedBy": sorted(users)} for name, users in sorted(used_by.items())]


def _document(organization: Organization, *, history: bool, agents: list[dict], datasets: list[dict],
              integrations: list[dict]) -> dict:
    return {"format": FORMAT, "exportedAt": _iso(timezone.now()), "sourceOrg": organization.slug,
            "history": history, "agents": agents, "datasets": datasets, "integrations": integrations,
            "secrets": _secrets(agents, datasets, integrations)}


def _chosen_agents(organization: Organization, slugs: list[str] | None, allowed: list[str] | None) -> list[Agent]:
    agents = Agent.objects.filter(organization=organization).select_related("gating_dataset", "budget").order_by("slug")
    if allowed is not None:
        outside = sorted(set(slugs or ()) - set(allowed))
        if outside:
            # The same answer as /agents/{agent} gives such a key: 403, whether or not the agent exists.
            raise Forbidden(f"This API key is limited to other agents than {', '.join(repr(s) for s in outside)}.",
                            details={"agents": outside})
        if slugs is None:
            return list(agents.filter(slug__in=set(allowed)))
    if slugs is None:
        return list(agents)
    chosen = list(agents.filter(slug__in=set(slugs)))
    unknown = sorted(set(slugs) - {a.slug for a in chosen})
    if unknown:
        raise InvalidRequest(f"Unknown agent(s) in this organization: {', '.join(unknown)}.", code="unknown_agent",
                             details={"fields": {"agents": [f"Unknown agent '{s}'." for s in unknown]}})
    return chosen


def export_organization(*, organization: Organization, agents: list[str] | None = None,
                        history: bool = False, allowed: list[str] | None = None) -> dict:
    """The export document of ``organization`` (see the module docstring). Reads only.

    ``allowed`` is the agent list of the API key asking (None: no limit). With it, the
    export holds only those agents (``agents`` defaults to them, and is then narrowed like
    an explicit ``agents`` filter: their gating datasets and the integrations they call);
    naming another agent in ``agents`` is a 403.
    """
    chosen = _chosen_agents(organization, agents, allowed)
    if allowed is not None:
        agents = [a.slug for a in chosen]
    revisions = Revision.objects.filter(agent__in=chosen).order_by("created_at", "id")
    if not history:
        revisions = revisions.filter(pk__in=[a.deployed_revision_id for a in chosen if a.deployed_revision_id])
    by_agent: dict[int, list[Revision]] = defaultdict(list)
    for revision in revisions:
        by_agent[revision.agent_id].append(revision)
    agent_docs = [{
        "slug": agent.slug, "name": agent.name, "description": agent.description,
        "deployedRevisionId": agent.deployed_revision_id,
        "gatingDataset": agent.gating_dataset.slug if agent.gating_dataset else None,
        "gateTolerance": agent.gate_tolerance,
        "budget": _budget(getattr(agent, "budget", None)),  # a missing one-to-one raises AttributeError
        "revisions": [_revision(r) for r in by_agent[agent.pk]],
    } for agent in chosen]

    datasets = Dataset.objects.filter(organization=organization).order_by("slug")
    integrations = Integration.objects.filter(organization=organization).order_by("slug")
    if agents is not None:
        datasets = datasets.filter(pk__in=[a.gating_dataset_id for a in chosen if a.gating_dataset_id])
        called = {slug for doc in agent_docs for r in doc["revisions"] for slug in engine.referenced_integrations(r["spec"])}
        integrations = integrations.filter(slug__in=called)
    datasets = list(datasets)
    cases: dict[int, list[Case]] = defaultdict(list)
    for case in Case.objects.filter(dataset__in=datasets).order_by("id"):
        cases[case.dataset_id].append(case)
    return _document(organization, history=history, agents=agent_docs,
                     datasets=[_dataset(d, cases[d.pk]) for d in datasets],
                     integrations=[_integration(i) for i in integrations])


def export_revision(*, agent: Agent, revision: Revision) -> dict:
    """The document a promotion imports: ``agent`` with only ``revision``, marked as the one to deploy."""
    agent_doc = {"slug": agent.slug, "name": agent.name, "description": agent.description,
                 "deployedRevisionId": revision.id, "revisions": [_revision(revision)]}
    return _document(agent.organization, history=False, agents=[agent_doc], datasets=[], integrations=[])
