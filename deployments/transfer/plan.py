"""The import plan: what importing a document into an organization would change.

``build_plan(organization, document, deploy=...)`` reads the target and never
writes. Objects are matched by natural keys only, never by the document's
ids: agents, datasets and integrations by slug, revisions by (agent slug,
``contentHash``), budgets by agent slug, cases by their content. The rules:

* agents: created when missing; updated when ``name``, ``description``,
  ``gatingDataset`` or ``gateTolerance`` differ (an absent optional key leaves
  the target's value alone);
* revisions: created unless the agent already has one with the same
  ``contentHash`` (then unchanged; revisions are immutable, never updated);
* datasets: created when missing; updated when a field differs or the document
  has cases the target lacks (those are added; target cases are never removed);
* budgets: created or updated from the agent's ``budget`` (null or absent: the
  target's budget is left alone);
* integrations: created when missing (without credentials: the
  ``credentialsSecret`` name is kept, and the status is ``disconnected`` when
  that secret is missing in the target); an existing one that differs is
  ``kept`` as the target has it (its config is that environment's);
* secrets are never created: ``missingSecrets`` names those referenced (specs,
  integrations, judge models, the document's list) that the target lacks;
  ``missingIntegrations`` the integrations revisions call that are neither in
  the target nor in the document;
* with ``deploy``, each agent's ``deployedRevisionId`` is deployed unless the
  target agent already runs that content hash; sub-agents deploy first.

Nothing is ever deleted. A ``gatingDataset`` found neither in the document
nor in the target is a 400 ``invalid_export``.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from decimal import Decimal

from agents import engine
from agents.models import Agent, Revision
from evaluations.models import Case, Dataset
from fruxon.errors import InvalidRequest
from monitoring.models import Budget
from orgs.models import Integration, Organization, Secret

from .document import FORMAT, ValidDocument, judge_secrets


@dataclass
class Tally:
    """Natural keys per outcome for one kind of object."""

    created: list = field(default_factory=list)
    updated: list = field(default_factory=list)
    unchanged: list = field(default_factory=list)
    kept: list | None = None  # integrations only: exists in the target with other settings, left alone

    def to_dict(self) -> dict:
        out = {"created": self.created, "updated": self.updated, "unchanged": self.unchanged}
        return out if self.kept is None else out | {"kept": self.kept}


@dataclass
class DatasetChange:
    doc: dict
    dataset: Dataset | None  # None: to create
    changes: dict  # model field -> new value (existing datasets)
    new_cases: list[dict]


@dataclass
class RevisionStep:
    agent: str
    doc: dict
    target_id: str | None  # the matching target revision; None: to create


@dataclass
class Plan:
    """Public summary (``to_dict``) plus the ordered work ``apply`` carries out."""

    source_org: str
    target_org: str
    deploy: bool
    agents: Tally = field(default_factory=Tally)
    revisions: Tally = field(default_factory=Tally)
    datasets: Tally = field(default_factory=Tally)
    budgets: Tally = field(default_factory=Tally)
    integrations: Tally = field(default_factory=lambda: Tally(kept=[]))
    cases: Counter = field(default_factory=Counter)
    missing_secrets: list[str] = field(default_factory=list)
    missing_integrations: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # the work, in order
    new_integrations: list[dict] = field(default_factory=list)
    dataset_changes: list[DatasetChange] = field(default_factory=list)
    new_agents: list[dict] = field(default_factory=list)
    agent_changes: dict[str, dict] = field(default_factory=dict)  # slug -> {"name", "description"}
    revision_steps: list[RevisionStep] = field(default_factory=list)
    budget_puts: list[tuple[str, dict]] = field(default_factory=list)
    deploys: list[dict] = field(default_factory=list)  # {"agent", "sourceRevisionId", "contentHash", "action"}
    settings: dict[str, dict] = field(default_factory=dict)  # slug -> {"gating_dataset": slug|None, "gate_tolerance"}

    @property
    def changes(self) -> int:
        """How many objects applying would create or change (0: a no-op)."""
        tallies = (self.agents, self.revisions, self.datasets, self.budgets, self.integrations)
        return (sum(len(t.created) + len(t.updated) for t in tallies)
                + sum(1 for d in self.deploys if d["action"] == "deploy"))

    def to_dict(self) -> dict:
        return {
            "format": FORMAT, "sourceOrg": self.source_org, "targetOrg": self.target_org,
            "agents": self.agents.to_dict(), "revisions": self.revisions.to_dict(),
            "datasets": self.datasets.to_dict(),
            "cases": {"created": self.cases["created"], "unchanged": self.cases["unchanged"]},
            "budgets": self.budgets.to_dict(), "integrations": self.integrations.to_dict(),
            "missingSecrets": self.missing_secrets, "missingIntegrations": self.missing_integrations,
            "deploys": self.deploys if self.deploy else [], "warnings": self.warnings, "changes": self.changes,
        }


def case_key(case: dict) -> str:
    """Cases have no natural key but their content: equal content, same case."""
    return engine.canonical_json({"input": case["input"], "expected": case.get("expected"),
                                  "critical": case.get("critical", False), "tags": case.get("tags", [])})


# --- one section per kind --------------------------------------------------------------------------
def _integrations(plan: Plan, org: Organization, doc: ValidDocument, secrets: set[str]) -> None:
    existing = {i.slug: i for i in Integration.objects.filter(organization=org)}
    for item in doc.integrations:
        slug, secret = item["slug"], item.get("credentialsSecret", "")
        current = existing.get(slug)
        if current is None:
            status = "disconnected" if secret and secret not in secrets else "connected"
            plan.new_integrations.append({**item, "status": status})
            plan.integrations.created.append(slug)
            continue
        same = (current.kind == item["kind"] and current.config == item["config"]
                and current.credentials_secret == secret and current.side_effects == item.get("sideEffects", False)
                and current.name == item.get("name", current.name))
        (plan.integrations.unchanged if same else plan.integrations.kept).append(slug)


def _datasets(plan: Plan, org: Organization, doc: ValidDocument) -> None:
    existing = {d.slug: d for d in Dataset.objects.filter(organization=org, slug__in=[d["slug"] for d in doc.datasets])}
    have: dict[int, Counter] = defaultdict(Counter)
    for case in Case.objects.filter(dataset__in=existing.values()).only("dataset_id", "input", "expected", "critical", "tags"):
        have[case.dataset_id][case_key({"input": case.input, "expected": case.expected, "critical": case.critical,
                                        "tags": case.tags})] += 1
    for item in doc.datasets:
        current = existing.get(item["slug"])
        if current is None:
            plan.dataset_changes.append(DatasetChange(item, None, {}, list(item["cases"])))
            plan.datasets.created.append(item["slug"])
            plan.cases["created"] += len(item["cases"])
            continue
        wanted = {"name": item.get("name"), "description": item.get("description"), "metrics": item["metrics"],
                  "pass_threshold": item.get("passThreshold")}
        changes = {k: v for k, v in wanted.items() if v is not None and getattr(current, k) != v}
        remaining, new_cases = Counter(have[current.pk]), []
        for case in item["cases"]:
            key = case_key(case)
            if remaining[key] > 0:
                remaining[key] -= 1
                plan.cases["unchanged"] += 1
            else:
                new_cases.append(case)
                plan.cases["created"] += 1
        if changes or new_cases:
            plan.dataset_changes.append(DatasetChange(item, current, changes, new_cases))
            plan.datasets.updated.append(item["slug"])
        else:
            plan.datasets.unchanged.append(item["slug"])


def _settings(item: dict, current: Agent | None, index: int, datasets: set[str]) -> dict:
    """Gate changes for one agent: ``{"gating_dataset": slug|None, "gate_tolerance": x}`` (differences only)."""
    changes = {}
    if "gatingDataset" in item:
        slug = item["gatingDataset"]
        if slug is not None and slug not in datasets:
            raise InvalidRequest(
                f"Agent '{item['slug']}' is gated by dataset '{slug}', which is neither in the document nor in the target.",
                code="invalid_export", details={"problems": [{"path": f"$.agents[{index}].gatingDataset",
                                                              "message": f"unknown dataset {slug!r}"}]})
        if (current.gating_dataset.slug if current and current.gating_dataset else None) != slug:
            changes["gating_dataset"] = slug
    if "gateTolerance" in item and (current.gate_tolerance if current else 0.0) != item["gateTolerance"]:
        changes["gate_tolerance"] = item["gateTolerance"]
    return changes


def _budget_differs(budget: Budget, wanted: dict) -> bool:
    # (the webhook is not compared: documents never carry it, the target keeps its own)
    return (budget.period, budget.amount_usd, budget.enforce, sorted(budget.alert_thresholds),
            list(budget.alert_emails)) != (wanted["period"], Decimal(wanted["amountUsd"]), wanted["enforce"],
                                           wanted["alertThresholds"], wanted["alertEmails"])


def _agents(plan: Plan, org: Organization, doc: ValidDocument) -> None:
    slugs = [a["slug"] for a in doc.agents]
    existing = {a.slug: a for a in Agent.objects.filter(organization=org, slug__in=slugs)
                .select_related("gating_dataset", "budget", "deployed_revision")}
    hashes: dict[str, dict[str, str]] = defaultdict(dict)  # agent slug -> content hash -> target revision id
    for rev in (Revision.objects.filter(agent__in=existing.values()).order_by("-created_at", "-id")
                .values_list("agent__slug", "content_hash", "id")):
        hashes[rev[0]][rev[1]] = rev[2]  # oldest wins: iterated newest first
    datasets = {d["slug"] for d in doc.datasets} | set(
        Dataset.objects.filter(organization=org).values_list("slug", flat=True))
    for index, item in enumerate(doc.agents):
        slug, current = item["slug"], existing.get(item["slug"])
        settings = _settings(item, current, index, datasets)
        if settings:
            plan.settings[slug] = settings
        if current is None:
            plan.new_agents.append(item)
            plan.agents.created.append(slug)
        else:
            changes = {k: item[k] for k in ("name", "description") if k in item and getattr(current, k) != item[k]}
            if changes:
                plan.agent_changes[slug] = changes
            (plan.agents.updated if changes or settings else plan.agents.unchanged).append(slug)
        for revision in item["revisions"]:
            entry = {"agent": slug, "sourceId": revision["id"], "contentHash": revision["contentHash"]}
            target_id = hashes[slug].get(revision["contentHash"])
            plan.revision_steps.append(RevisionStep(slug, revision, target_id))
            if target_id is None:
                hashes[slug][revision["contentHash"]] = ""  # a second copy in the document is the same revision
                plan.revisions.created.append(entry)
            else:
                plan.revisions.unchanged.append(entry | ({"id": target_id} if target_id else {}))
        _agent_budget(plan, item, current)
        _agent_deploy(plan, item, current)


def _agent_budget(plan: Plan, item: dict, current: Agent | None) -> None:
    wanted = item.get("budget")
    if wanted is None:
        return
    budget = getattr(current, "budget", None) if current else None
    if budget is None:
        plan.budgets.created.append(item["slug"])
    elif _budget_differs(budget, wanted):
        plan.budgets.updated.append(item["slug"])
    else:
        plan.budgets.unchanged.append(item["slug"])
        return
    plan.budget_puts.append((item["slug"], wanted))


def _agent_deploy(plan: Plan, item: dict, current: Agent | None) -> None:
    source_id = item.get("deployedRevisionId")
    if not plan.deploy or source_id is None:
        return
    content_hash = next(r["contentHash"] for r in item["revisions"] if r["id"] == source_id)
    running = current.deployed_revision.content_hash if current and current.deployed_revision_id else None
    plan.deploys.append({"agent": item["slug"], "sourceRevisionId": source_id, "contentHash": content_hash,
                         "action": "unchanged" if running == content_hash else "deploy"})


def _deploy_order(plan: Plan, doc: ValidDocument) -> None:
    """Sub-agents first: a parent's readiness needs its unpinned sub-agents deployed."""
    specs = {a["slug"]: next(r["spec"] for r in a["revisions"] if r["id"] == a["deployedRevisionId"])
             for a in doc.agents if a.get("deployedRevisionId")}
    ordered, seen = [], set()

    def visit(slug: str) -> None:
        if slug in seen or slug not in specs:
            return
        seen.add(slug)
        for ref in sorted(engine.referenced_subagents(specs[slug]), key=str):
            if ref.revision_id is None:
                visit(ref.agent)
        ordered.append(slug)

    for deploy in plan.deploys:
        visit(deploy["agent"])
    plan.deploys.sort(key=lambda d: ordered.index(d["agent"]))


def _references(plan: Plan, org: Organization, doc: ValidDocument, secrets: set[str]) -> None:
    needed = {s["name"] for s in doc.secrets} | {i["credentialsSecret"] for i in doc.integrations if i.get("credentialsSecret")}
    called: set[str] = set()
    agents_here = {a["slug"] for a in doc.agents} | set(Agent.objects.filter(organization=org).values_list("slug", flat=True))
    for agent in doc.agents:
        for revision in agent["revisions"]:
            needed |= engine.referenced_secrets(revision["spec"])
            called |= engine.referenced_integrations(revision["spec"])
            for ref in sorted(engine.referenced_subagents(revision["spec"]), key=str):
                if ref.revision_id:
                    plan.warnings.append(
                        f"{agent['slug']} revision {revision['id']} pins sub-agent {ref.agent} to {ref.revision_id}, "
                        "a revision id of the source organization: it does not resolve in the target")
                elif ref.agent not in agents_here:
                    plan.warnings.append(f"{agent['slug']} calls sub-agent {ref.agent}, which is in neither the "
                                         "document nor the target")
    for dataset in doc.datasets:
        needed |= judge_secrets(dataset["metrics"])
    plan.missing_secrets = sorted(needed - secrets)
    present = {i["slug"] for i in doc.integrations} | set(
        Integration.objects.filter(organization=org, slug__in=called).values_list("slug", flat=True))
    plan.missing_integrations = sorted(called - present)
    plan.warnings = sorted(set(plan.warnings))


def build_plan(organization: Organization, document: ValidDocument, *, deploy: bool = False) -> Plan:
    """What importing ``document`` into ``organization`` would do (see the module docstring). Reads only."""
    plan = Plan(source_org=document.source_org, target_org=organization.slug, deploy=deploy)
    # A secret without a value (version 0) is as good as missing, as readiness says.
    secrets = set(Secret.objects.filter(organization=organization, current_version__gt=0).values_list("name", flat=True))
    _integrations(plan, organization, document, secrets)
    _datasets(plan, organization, document)
    _agents(plan, organization, document)
    _deploy_order(plan, document)
    _references(plan, organization, document, secrets)
    _secret_destinations(plan, organization)
    return plan


def _secret_destinations(plan: Plan, org: Organization) -> None:
    """Warn about each revision to create that would send a target secret to a host it does not allow
    (applying is then refused with 400 ``secret_destination``). The integrations the import creates count."""
    from agents.engine import destinations
    from orgs.services import secrets as secret_services

    uses = {(step.agent, step.doc["id"]): destinations.secret_destinations(step.doc["spec"])
            for step in plan.revision_steps if not step.target_id}
    names = {use.secret for found in uses.values() for use in found}
    if not names:
        return
    allowed = {name: set(hosts) for name, hosts in
               secret_services.allowed_hosts_by_name(organization_id=org.pk, names=names).items()}
    for item in plan.new_integrations:
        host = destinations.url_host((item.get("config") or {}).get("baseUrl"))
        if host is not None and item.get("credentialsSecret") in allowed:
            allowed[item["credentialsSecret"]].add(str(host))
    for (agent, revision_id), found in sorted(uses.items()):
        for use in destinations.disallowed_uses(found, allowed):
            plan.warnings.append(
                f"{agent} revision {revision_id} would send secret {use.secret} ({use.path}) to "
                f"{use.host or 'a host not fixed in the spec'}, which the target's secret does not allow: "
                "the import would be refused (secret_destination)")
    plan.warnings = sorted(set(plan.warnings))
