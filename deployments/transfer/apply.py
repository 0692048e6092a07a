"""Import: apply a plan to the target organization, all or nothing.

``import_document`` with ``dry_run=True`` returns the plan and writes nothing.
Otherwise, in ONE transaction, it locks the target organization's row (two
imports into one org run one after the other), builds the plan against what
it now holds and carries it out through the apps' own services, so every
rule and audit event of the API applies: integrations, then datasets and
their cases, agents, revisions (``create_revision`` with
``origin={"org": source slug, "revisionId": source id}``; the content hash is
recomputed and equals the document's), budgets, deploys
(``deployments.services.deploy(kind="import")``, with its readiness checks),
and last the agents' gate settings, so a deploy is judged by the gate the
target agent had before the import (none for a new agent). One
``org.imported`` audit event sums it up.

Any error (a service's refusal, a deploy that is not ready: 409 ``not_ready``
with the checklist and the plan) rolls everything back: the target is left
exactly as it was. A document that changes nothing writes nothing at all,
not even the audit event.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from django.db import transaction

from agents import services as agent_services
from agents.models import Agent
from agents.scoping import subagent_refusal
from evaluations.models import Dataset
from evaluations.services import datasets as dataset_services
from fruxon import egress
from fruxon.errors import Conflict, Forbidden
from monitoring import budgets
from monitoring.models import Budget
from orgs.actor import Actor
from orgs.models import Integration, Organization
from orgs.services import audit
from orgs.services import integrations as integration_services

from .. import services as deployments
from .document import ValidDocument
from .plan import Plan, build_plan


@dataclass
class ImportResult:
    plan: Plan
    dry_run: bool
    revisions: list[dict] = field(default_factory=list)  # {"agent", "sourceId", "id", "contentHash"}
    deployments: list[dict] = field(default_factory=list)  # {"agent", "revisionId", "deploymentId"}

    def to_dict(self) -> dict:
        return {"dryRun": self.dry_run, "applied": not self.dry_run and self.plan.changes > 0,
                "plan": self.plan.to_dict(), "revisions": self.revisions, "deployments": self.deployments}


class _Applier:
    def __init__(self, *, actor: Actor, organization: Organization, plan: Plan, deploy_force: bool, reason: str):
        self.actor, self.org, self.plan = actor, organization, plan
        self.force, self.reason = deploy_force, reason
        self.agents = {a.slug: a for a in Agent.objects.filter(organization=organization)}
        self.result = ImportResult(plan=plan, dry_run=False)

    def run(self) -> None:
        self.integrations()
        self.datasets()
        self.create_agents()
        self.revisions()
        self.budgets()
        self.deploys()
        self.settings()

    def integrations(self) -> None:
        for item in self.plan.new_integrations:
            fields = {"name": item.get("name", ""), "kind": item["kind"], "config": item["config"],
                      "side_effects": item.get("sideEffects", False), "status": item["status"]}
            secret = item.get("credentialsSecret", "")
            # Both paths below: an imported base URL passes the egress check the API applies (400 egress_denied).
            egress.check_url((item["config"] or {}).get("baseUrl"), f"integrations.{item['slug']}.config.baseUrl")
            if item["status"] == "connected":
                integration_services.create_integration(actor=self.actor, organization=self.org, slug=item["slug"],
                                                        credentials_secret=secret, **fields)
                continue
            # The orgs service refuses a credentialsSecret that does not exist yet. An imported
            # integration keeps the NAME, disconnected, until an owner puts that secret.
            Integration.objects.create(organization=self.org, slug=item["slug"], credentials_secret=secret, **fields)
            audit.record(organization=self.org, actor=self.actor, action="integration.created",
                         target_type="integration", target_id=item["slug"],
                         data={"imported": True, "credentialsSecret": secret, "status": item["status"],
                               "configKeys": sorted(item["config"])})

    def datasets(self) -> None:
        for change in self.plan.dataset_changes:
            item, dataset = change.doc, change.dataset
            if dataset is None:
                dataset = dataset_services.create_dataset(
                    actor=self.actor, organization=self.org, slug=item["slug"], name=item.get("name", ""),
                    description=item.get("description", ""), metrics=item["metrics"],
                    pass_threshold=item.get("passThreshold", 1.0))
            elif change.changes:
                dataset = dataset_services.update_dataset(actor=self.actor, dataset=dataset, changes=change.changes)
            if change.new_cases:
                dataset_services.add_cases_bulk(actor=self.actor, dataset=dataset, cases=[
                    {"input": c["input"], "expected": c.get("expected"), "critical": c.get("critical", False),
                     "tags": c.get("tags", [])} for c in change.new_cases])

    def create_agents(self) -> None:
        for item in self.plan.new_agents:
            self.agents[item["slug"]] = agent_services.create_agent(
                actor=self.actor, organization=self.org, slug=item["slug"], name=item["name"],
                description=item.get("description", ""))
        for slug, changes in self.plan.agent_changes.items():
            self.agents[slug] = agent_services.update_agent(actor=self.actor, agent=self.agents[slug], changes=changes)

    def revisions(self) -> None:
        self.target_ids: dict[tuple[str, str], str] = {}  # (agent, source id) -> target id
        by_hash: dict[tuple[str, str], str] = {}
        for step in self.plan.revision_steps:
            key = (step.agent, step.doc["contentHash"])
            target_id = step.target_id or by_hash.get(key)
            if not target_id:
                parent = self.target_ids.get((step.agent, step.doc.get("parentId") or ""))
                revision = agent_services.create_revision(
                    actor=self.actor, agent=self.agents[step.agent], spec=step.doc["spec"],
                    message=step.doc.get("message", ""), parent_id=parent,
                    origin={"org": self.plan.source_org, "revisionId": step.doc["id"]})
                target_id = revision.id
                self.result.revisions.append({"agent": step.agent, "sourceId": step.doc["id"], "id": target_id,
                                              "contentHash": revision.content_hash})
            by_hash[key] = target_id
            self.target_ids[(step.agent, step.doc["id"])] = target_id

    def budgets(self) -> None:
        for slug, wanted in self.plan.budget_puts:
            agent = self.agents[slug]
            current = Budget.objects.filter(agent=agent).first()
            budgets.put_budget(actor=self.actor, agent=agent, period=wanted["period"],
                               amount_usd=Decimal(wanted["amountUsd"]), enforce=wanted["enforce"],
                               alert_thresholds=wanted["alertThresholds"],
                               alert_webhook=current.alert_webhook if current else "",  # the target's own
                               alert_emails=wanted["alertEmails"])

    def deploys(self) -> None:
        for item in self.plan.deploys:
            if item["action"] != "deploy":
                continue
            agent = self.agents[item["agent"]]
            revision_id = self.target_ids[(item["agent"], item["sourceRevisionId"])]
            reason = self.reason or f"Imported from {self.plan.source_org} ({item['sourceRevisionId']})"
            try:
                deployment = deployments.deploy(actor=self.actor, agent=agent, revision_id=revision_id, reason=reason,
                                                force=self.force, kind="import")
            except Conflict as exc:
                if exc.code != "not_ready":
                    raise
                raise Conflict(
                    f"Import refused, nothing was written: agent '{agent.slug}' is not ready to deploy "
                    f"{item['contentHash'][:12]} in '{self.org.slug}'. " + exc.message,
                    code="not_ready",
                    details={"agent": agent.slug, "sourceRevisionId": item["sourceRevisionId"],
                             "contentHash": item["contentHash"], "checks": exc.details.get("checks", []),
                             "plan": self.plan.to_dict()},
                ) from None
            self.result.deployments.append({"agent": agent.slug, "revisionId": revision_id,
                                            "deploymentId": deployment.pk, "forced": deployment.forced})

    def settings(self) -> None:
        slugs = {s for changes in self.plan.settings.values() if (s := changes.get("gating_dataset"))}
        datasets = {d.slug: d for d in Dataset.objects.filter(organization=self.org, slug__in=slugs)}
        for slug, changes in self.plan.settings.items():
            if "gating_dataset" in changes:
                changes = {**changes, "gating_dataset": datasets.get(changes["gating_dataset"])}
            self.agents[slug] = agent_services.update_agent(actor=self.actor, agent=self.agents[slug], changes=changes)


def _refuse_missing(plan: Plan) -> None:
    if plan.missing_secrets or plan.missing_integrations:
        parts = []
        if plan.missing_secrets:
            parts.append("secrets " + ", ".join(plan.missing_secrets))
        if plan.missing_integrations:
            parts.append("integrations " + ", ".join(plan.missing_integrations))
        raise Conflict(f"'{plan.target_org}' lacks what the revision references: {'; '.join(parts)}. "
                       "Create them there first; nothing was written.", code="not_ready",
                       details={"targetOrg": plan.target_org, "missingSecrets": plan.missing_secrets,
                                "missingIntegrations": plan.missing_integrations, "plan": plan.to_dict()})


def _refuse_agents_outside_key(actor: Actor, document: ValidDocument) -> None:
    """403 when an API key limited to some agents imports a document that names another agent.

    A document's agents are created or changed by the import (revisions, budget, gate,
    deploy): the key's agent list applies to each as it does on ``/agents/{agent}`` routes.
    """
    key = actor.api_key
    if key is None or not key.agents:
        return
    outside = sorted({item["slug"] for item in document.agents if not key.allows_agent(item["slug"])})
    if outside:
        raise Forbidden(f"This API key is limited to other agents than {', '.join(repr(s) for s in outside)}; "
                        "nothing was imported.", details={"agents": outside})


def import_document(*, actor: Actor, organization: Organization, document: ValidDocument, dry_run: bool = False,
                    deploy: bool = False, refuse_missing: bool = False, force: bool = False,
                    reason: str = "") -> ImportResult:
    """Plan, and unless ``dry_run`` apply, the import of ``document`` into ``organization``.

    403 (dry run included, nothing written) when ``actor`` is an API key limited to some
    agents and the document names another, or when a revision to create names a sub-agent
    the actor may not execute.

    ``refuse_missing`` turns missing secrets or integrations into a 409 ``not_ready`` with
    the plan (promotion uses it). ``force``/``reason`` go to each deploy (the caller has
    checked the actor may force).
    """
    _refuse_agents_outside_key(actor, document)
    if dry_run:
        plan = build_plan(organization, document, deploy=deploy)
        # What applying would refuse, a dry run refuses too: the revisions it would create are
        # checked for sub-agents the actor may not execute (``create_revision`` checks the rest).
        for step in plan.revision_steps:
            refusal = None if step.target_id else subagent_refusal(actor=actor, organization=organization,
                                                                   spec=step.doc["spec"])
            if refusal is not None:
                raise refusal
        return ImportResult(plan=plan, dry_run=True)
    with transaction.atomic():
        Organization.objects.select_for_update().filter(pk=organization.pk).first()
        plan = build_plan(organization, document, deploy=deploy)
        if refuse_missing:
            _refuse_missing(plan)
        applier = _Applier(actor=actor, organization=organization, plan=plan, deploy_force=force, reason=reason)
        if plan.changes:
            applier.run()
            summary = plan.to_dict()
            audit.record(organization=organization, actor=actor, action="org.imported", target_type="organization",
                         target_id=organization.slug, data={
                             "sourceOrg": plan.source_org,
                             "counts": {kind: {k: len(v) for k, v in summary[kind].items()}
                                        for kind in ("agents", "revisions", "datasets", "budgets", "integrations")},
                             "cases": summary["cases"], "missingSecrets": plan.missing_secrets,
                             "deployed": applier.result.deployments})
        return applier.result
