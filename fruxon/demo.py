"""Seed data for ``manage.py demo``: idempotent, so running the demo twice is safe.

Credentials are fixed and printed: this is a local demo, never a deployment.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from django.contrib.auth import get_user_model
from django.db import transaction

from orgs.actor import Actor
from orgs.credentials import hash_credential
from orgs.models import ApiKey, Membership, Organization
from orgs.roles import PRESETS
from orgs.services import integrations, secrets

DEMO_ORG = "demo"
PROD_ORG = "prod"  # promotion target of the README walk-through
DEMO_KEY = "fx_live_demo_0000000000000000000000000000000000"
USERS = {"owner": "owner-pass-123", "editor": "editor-pass-123", "viewer": "viewer-pass-123"}
# The demo's example integration (shop-api) points at the demo server itself, a loopback address
# the egress policy refuses unless allowed; the demo allows exactly that address and port. (Its
# agents use the fruxon-local provider: nothing else is called over HTTP.)
EGRESS_ALLOW = "127.0.0.1:8000"


@dataclass
class Seeded:
    org: Organization
    users: dict[str, str] = field(default_factory=dict)
    api_key: str = DEMO_KEY


def _user(username: str, password: str):
    User = get_user_model()
    user, created = User.objects.get_or_create(username=username, defaults={"email": f"{username}@demo.fruxon.local"})
    if created or not user.check_password(password):
        user.set_password(password)
    user.is_staff = True  # the demo's people all use the admin
    user.save()
    return user


def allow_demo_egress() -> None:
    """Add :data:`EGRESS_ALLOW` to this process's ``FRUXON_EGRESS_ALLOW`` (demo only)."""
    from django.conf import settings

    from fruxon import egress

    current = settings.FRUXON_EGRESS_ALLOW or ""
    if EGRESS_ALLOW not in [entry.strip() for entry in current.split(",")]:
        settings.FRUXON_EGRESS_ALLOW = ",".join(filter(None, [current, EGRESS_ALLOW]))
    egress.configure_from_settings()


@transaction.atomic
def seed() -> Seeded:
    org, _ = Organization.objects.get_or_create(slug=DEMO_ORG, defaults={"name": "Demo", "retention_days": 30})
    system = Actor(system=True)
    for role, password in USERS.items():
        user = _user(role, password)
        Membership.objects.update_or_create(organization=org, user=user, defaults={"role": role})
    if not ApiKey.objects.filter(key_hash=hash_credential(DEMO_KEY)).exists():
        ApiKey.objects.create(organization=org, name="demo key", prefix=DEMO_KEY[:12],
                              key_hash=hash_credential(DEMO_KEY), scopes=sorted(PRESETS["admin"]))
    if not org.secret_set.filter(name="SHOP_TOKEN").exists():
        secrets.put_secret(actor=system, organization=org, name="SHOP_TOKEN", value="demo-shop-token",
                           description="Token for the demo shop API", allowed_agents=["*"])
    if not org.integration_set.filter(slug="shop-api").exists():
        integrations.create_integration(actor=system, organization=org, slug="shop-api", name="Shop API",
                                        config={"baseUrl": "http://127.0.0.1:8000/demo-shop", "headers": {}},
                                        credentials_secret="SHOP_TOKEN", side_effects=False, status="connected")
    _seed_agent(org, system)
    _seed_dataset(org, system)
    _seed_prod(system)
    return Seeded(org=org, users=dict(USERS))


def _seed_prod(system: Actor) -> None:
    """A second org, ``prod``, for the README's promotion walk-through.

    The demo owner is its owner too (promotion needs an owner of both orgs) and it
    holds what the demo's revisions may reference (SHOP_TOKEN, shop-api), with its
    own values: promotion carries revisions, never secrets.
    """
    prod, _ = Organization.objects.get_or_create(slug=PROD_ORG, defaults={"name": "Production", "retention_days": 30})
    Membership.objects.update_or_create(organization=prod, user=get_user_model().objects.get(username="owner"),
                                        defaults={"role": "owner"})
    if not prod.secret_set.filter(name="SHOP_TOKEN").exists():
        secrets.put_secret(actor=system, organization=prod, name="SHOP_TOKEN", value="demo-prod-shop-token",
                           description="Token for the production shop API", allowed_agents=["*"])
    if not prod.integration_set.filter(slug="shop-api").exists():
        integrations.create_integration(actor=system, organization=prod, slug="shop-api", name="Shop API",
                                        config={"baseUrl": "http://127.0.0.1:8000/demo-shop", "headers": {}},
                                        credentials_secret="SHOP_TOKEN", side_effects=False, status="connected")


SUPPORT_V1 = {
    "inputs": {"customer": {"type": "string", "required": True}, "question": {"type": "string", "required": True}},
    "steps": [{
        "name": "answer",
        # The reply comes in 8 pieces, 25 ms apart, as a model's would: streamed (``"stream": true``) as they come.
        "model": {"provider": "fruxon-local", "name": "support-local", "maxTokens": 256, "latencyMs": 20,
                  "chunks": 8, "chunkDelayMs": 25,
                  "script": [{"reply": "Hi {{input.customer}}, thanks for asking about: {{input.question}}. "
                                       "Your order ships within 2 days."}]},
        "systemPrompt": "You are a friendly support agent for {{input.customer}}.",
        "prompt": "{{input.question}}",
    }],
    "output": "{{steps.answer.output}}",
    "timeoutSeconds": 30,
}

SUPPORT_V2 = {
    "inputs": SUPPORT_V1["inputs"],
    "steps": [
        {"name": "draft",
         "model": {"provider": "fruxon-local", "name": "support-local", "maxTokens": 512, "latencyMs": 20,
                   "script": [{"reply": "Dear {{input.customer}}: regarding '{{input.question}}', your order "
                                        "ships within 2 days and you will get a tracking link by email."}]},
         "systemPrompt": "You are a precise support agent for {{input.customer}}. Cite the shipping policy.",
         "prompt": "{{input.question}}"},
        {"name": "polish",
         "model": {"provider": "fruxon-local", "name": "support-local", "maxTokens": 256,
                   "script": [{"reply": "{{steps.draft.output}} (v2)"}]},
         "prompt": "Make this shorter and warmer: {{steps.draft.output}}"},
    ],
    "output": "{{steps.polish.output}}",
    "timeoutSeconds": 30,
}


def _seed_agent(org: Organization, system: Actor) -> None:
    """The 'support' agent: v1 deployed, v2 (a two-step rewrite) waiting as a candidate."""
    from agents.models import Agent
    from agents.services import create_agent, create_revision
    from deployments.services import deploy

    if Agent.objects.filter(organization=org, slug="support").exists():
        return
    agent = create_agent(actor=system, organization=org, slug="support", name="Support assistant",
                         description="Answers customer questions about orders.")
    v1 = create_revision(actor=system, agent=agent, spec=SUPPORT_V1, message="First version")
    create_revision(actor=system, agent=agent, spec=SUPPORT_V2, message="Two-step draft and polish")
    # Through the deploy service, so the history has it and a rollback can return to it.
    deploy(actor=system, agent=agent, revision_id=v1.id, reason="demo launch")


GOLDEN_CASES = [
    {"input": {"customer": "Ada", "question": "Where is my order?"}, "expected": "2 days", "critical": True,
     "tags": ["shipping"]},
    {"input": {"customer": "Grace", "question": "When will my parcel arrive?"}, "expected": "2 days", "critical": False,
     "tags": ["shipping"]},
    {"input": {"customer": "Linus", "question": "How fast do you ship?"}, "expected": "2 days", "critical": False,
     "tags": ["shipping"]},
]


def _seed_dataset(org: Organization, system: Actor) -> None:
    """The golden dataset the README's walk-through gates deploys with (not set as the gate by default)."""
    from evaluations.models import Dataset
    from evaluations.services.datasets import add_cases_bulk, create_dataset

    if Dataset.objects.filter(organization=org, slug="support-golden").exists():
        return
    dataset = create_dataset(actor=system, organization=org, slug="support-golden", name="Support golden set",
                             description="Shipping questions every revision must answer with the 2-day promise.",
                             metrics=[{"type": "contains", "field": "output"}], pass_threshold=1.0)
    add_cases_bulk(actor=system, dataset=dataset, cases=GOLDEN_CASES)
