"""The pre-deploy checklist of the seed product, checked by the machine.

``check(agent, revision)`` returns the items in a fixed order, each
``{"check", "status": "pass|warn|fail", "detail", "data"}``. ``evaluation``
(once the agent has a gating dataset), ``integrations``, ``secrets`` and
``subAgents`` block a deploy when they fail; ``budget`` and the rest only warn.
``diff`` warns when the candidate's ``contentHash`` equals the deployed
revision's (no changes to ship).
Every lookup is scoped to the agent's organization: a secret or integration of
another org never satisfies a check.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from agents.diff import diff_specs
from agents.models import Agent, Revision, RevisionReference
from agents.engine import destinations
from orgs.models import Integration, Secret
from orgs.services import secrets as secret_services

BLOCKING = ("evaluation", "integrations", "secrets", "subAgents")
USABLE_INTEGRATION = ("connected", "authorized")


@dataclass
class Item:
    check: str
    status: str
    detail: str
    data: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _refs(revision: Revision, kind: str) -> list[RevisionReference]:
    return [r for r in revision.references.all() if r.kind == kind]


def _evaluation(agent: Agent, revision: Revision) -> Item:
    from evaluations.gate import evaluation_item

    return evaluation_item(agent, revision)


def _diff(agent: Agent, revision: Revision) -> Item:
    if agent.deployed_revision_id is None:
        return Item("diff", "pass", "First deploy: nothing is deployed to compare with.")
    if agent.deployed_revision_id == revision.id:
        return Item("diff", "pass", "This revision is already deployed.", {"againstRevisionId": revision.id})
    deployed = Revision.objects.only("id", "spec", "content_hash").get(pk=agent.deployed_revision_id)
    if deployed.content_hash == revision.content_hash:
        return Item("diff", "warn", f"No changes against the deployed revision {deployed.id}: the same contentHash, "
                    "so deploying it changes nothing.", {"againstRevisionId": deployed.id,
                                                          "contentHash": revision.content_hash})
    summary = diff_specs(deployed.spec, revision.spec)["summary"]
    parts = []
    for key in ("steps", "tools", "subAgents", "secrets", "integrations"):
        for change in ("added", "removed", "changed"):
            if summary[key].get(change):
                parts.append(f"{key} {change}: {', '.join(summary[key][change])}")
    if summary["modelsChanged"]:
        parts.append("models changed in: " + ", ".join(m["step"] for m in summary["modelsChanged"]))
    detail = f"{summary['changeCount']} change(s) against {deployed.id}" + (": " + "; ".join(parts) if parts else "")
    return Item("diff", "pass", detail, {"againstRevisionId": deployed.id, "summary": summary})


def _integrations(agent: Agent, revision: Revision) -> Item:
    wanted = sorted({r.name for r in _refs(revision, "integration")})
    if not wanted:
        return Item("integrations", "pass", "The revision uses no integrations.")
    found = dict(Integration.objects.filter(organization_id=agent.organization_id, slug__in=wanted).values_list("slug", "status"))
    missing = [slug for slug in wanted if slug not in found]
    unusable = {slug: status for slug, status in found.items() if status not in USABLE_INTEGRATION}
    if missing or unusable:
        problems = [f"{s} does not exist in this organization" for s in missing]
        problems += [f"{s} is {status}" for s, status in sorted(unusable.items())]
        return Item("integrations", "fail", "; ".join(problems), {"missing": missing, "unusable": unusable})
    return Item("integrations", "pass", f"All connected or authorized: {', '.join(wanted)}.", {"integrations": wanted})


def _integration_uses(agent: Agent, revision: Revision) -> list[dict]:
    """The credentials secrets of the integrations the revision's tools call, and where they go."""
    slugs = sorted({r.name for r in _refs(revision, "integration")})
    rows = Integration.objects.filter(organization_id=agent.organization_id, slug__in=slugs).exclude(credentials_secret="")
    uses = []
    for slug, name, config in rows.values_list("slug", "credentials_secret", "config"):
        host = destinations.url_host((config or {}).get("baseUrl") if isinstance(config, dict) else None)
        uses.append({"secret": name, "path": f"integration {slug}", "host": str(host) if host else None,
                     "allowed": host is not None})  # an integration's own host is allowed for its credentials
    return uses


def _secrets(agent: Agent, revision: Revision) -> Item:
    """Every secret the revision uses exists, allows the agent, and goes only to hosts it allows.

    ``data.destinations`` lists each use: the secret, its position (a JSON path, or
    ``integration <slug>`` for an integration's credentials), the host it goes to and
    whether that host is allowed.
    """
    wanted = sorted({r.name for r in _refs(revision, "secret")})
    integration_uses = _integration_uses(agent, revision)
    if not wanted and not integration_uses:
        return Item("secrets", "pass", "The revision references no secrets.", {"destinations": []})
    rows = {s.name: s for s in Secret.objects.filter(organization_id=agent.organization_id, name__in=wanted)}
    missing = [n for n in wanted if n not in rows or rows[n].current_version == 0]
    refused = [n for n in wanted if n in rows and not rows[n].allows_agent(agent.slug)]
    uses = destinations.secret_destinations(revision.spec)
    allowed = secret_services.allowed_hosts_by_name(organization_id=agent.organization_id, names=wanted)
    outside = destinations.disallowed_uses(uses, allowed)
    shown = [{**use.to_dict(), "allowed": use not in outside and use.secret in allowed} for use in uses]
    misused = destinations.secret_misuses(revision.spec)
    data = {"destinations": shown + integration_uses}
    problems = [f"{n} does not exist in this organization" for n in missing]
    problems += [f"{n} does not allow agent '{agent.slug}'" for n in refused]
    problems += [f"{u.secret} at {u.path} would go to {u.host or 'a host not fixed in the spec'}, which it does not "
                 f"allow (allowed: {', '.join(allowed[u.secret]) or 'none'})" for u in outside]
    problems += [f"{name} at {path} is not a credential position: a secret is never sent there"
                 for name, path in misused]
    if problems:
        data.update(missing=missing, notAllowed=refused, hostNotAllowed=[u.to_dict() for u in outside],
                    notCredentialPosition=[{"secret": n, "path": p} for n, p in misused])
        return Item("secrets", "fail", "; ".join(problems), data)
    where = "; ".join(f"{u['secret']} -> {u['host']} ({u['path']})" for u in data["destinations"])
    return Item("secrets", "pass", f"All exist, allow this agent and go only to allowed hosts: {where}.",
                {"secrets": wanted, **data})


def _sub_agents(agent: Agent, revision: Revision) -> Item:
    refs = _refs(revision, "agent")
    if not refs:
        return Item("subAgents", "pass", "The revision calls no sub-agents.")
    agents = {a.slug: a for a in Agent.objects.filter(organization_id=agent.organization_id, slug__in={r.name for r in refs})}
    problems, ok = [], []
    for ref in sorted(refs, key=lambda r: (r.name, r.pinned_revision)):
        sub = agents.get(ref.name)
        if sub is None:
            problems.append(f"{ref.name} does not exist in this organization")
        elif ref.pinned_revision:
            if Revision.objects.filter(agent=sub, pk=ref.pinned_revision).exists():
                ok.append(f"{ref.name} pinned to {ref.pinned_revision}")
            else:
                problems.append(f"{ref.name} is pinned to {ref.pinned_revision}, which is not one of its revisions")
        elif sub.deployed_revision_id:
            ok.append(f"{ref.name} deployed ({sub.deployed_revision_id})")
        else:
            problems.append(f"{ref.name} is neither pinned nor deployed")
    if problems:
        return Item("subAgents", "fail", "; ".join(problems), {"problems": problems})
    return Item("subAgents", "pass", "; ".join(ok))


def _budget(agent: Agent, revision: Revision) -> Item:
    from monitoring.models import Budget

    budget = Budget.objects.filter(agent=agent).first()
    if budget is None:
        return Item("budget", "warn", "No budget: set a cap so a runaway loop stops at a known amount.")
    if not budget.enforce:
        return Item("budget", "warn", f"Alerts only (${budget.amount_usd}/{budget.period}); no hard cap.",
                     {"amountUsd": str(budget.amount_usd), "period": budget.period, "enforce": False})
    return Item("budget", "pass", f"Hard cap ${budget.amount_usd}/{budget.period}.",
                 {"amountUsd": str(budget.amount_usd), "period": budget.period, "enforce": True})


def _rollback_target(agent: Agent, revision: Revision) -> Item:
    if agent.deployed_revision_id is None:
        return Item("rollbackTarget", "warn", "First deploy: there is no revision to roll back to.")
    if agent.deployed_revision_id == revision.id:
        from .services import default_rollback_target

        target = default_rollback_target(agent)
        return Item("rollbackTarget", "pass" if target else "warn",
                    f"A rollback would return to {target}." if target else "Nothing earlier to roll back to.",
                    {"revisionId": target})
    return Item("rollbackTarget", "pass", f"A rollback would return to {agent.deployed_revision_id}.",
                {"revisionId": agent.deployed_revision_id})


CHECKS = (_evaluation, _diff, _integrations, _secrets, _sub_agents, _budget, _rollback_target)


def check(agent: Agent, revision: Revision) -> list[Item]:
    revision = Revision.objects.prefetch_related("references").get(pk=revision.pk)
    return [run(agent, revision) for run in CHECKS]


def blocking_failures(items: list[Item]) -> list[Item]:
    return [item for item in items if item.check in BLOCKING and item.status == "fail"]


def is_ready(items: list[Item]) -> bool:
    return not blocking_failures(items)
