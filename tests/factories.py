"""factory_boy factories and small builders for tenant data."""
from __future__ import annotations

import factory
from django.contrib.auth import get_user_model

from orgs.actor import Actor
from orgs.models import Membership, Organization
from orgs.services import api_keys, integrations, secrets

PASSWORD = "correct-horse-battery"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.com")
    password = factory.PostGenerationMethodCall("set_password", PASSWORD)

    @factory.post_generation
    def _save(obj, create, extracted, **kwargs):
        if create:
            obj.save()


class OrganizationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Organization

    slug = factory.Sequence(lambda n: f"org-{n}")
    name = factory.LazyAttribute(lambda o: o.slug.title())


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    organization = factory.SubFactory(OrganizationFactory)
    user = factory.SubFactory(UserFactory)
    role = "viewer"


def member(org: Organization, role: str, username: str | None = None):
    user = UserFactory(**({"username": username} if username else {}))
    MembershipFactory(organization=org, user=user, role=role)
    return user


def api_key(org: Organization, *, scopes=None, preset=None, agents=None, name="test key", expires_at=None):
    """A key with the given scopes; returns (ApiKey, plaintext)."""
    minted = api_keys.create_key(actor=Actor(system=True), organization=org, name=name,
                                 scopes=scopes, preset=preset, agents=agents, expires_at=expires_at)
    return minted.key, minted.plaintext


def secret(org: Organization, name: str, value: str, allowed_agents=("*",), allowed_hosts=()):
    return secrets.put_secret(actor=Actor(system=True), organization=org, name=name, value=value,
                              allowed_agents=list(allowed_agents), allowed_hosts=list(allowed_hosts))[0]


def integration(org: Organization, slug: str, **fields):
    fields.setdefault("config", {"baseUrl": "http://127.0.0.1:9/api", "headers": {}})
    return integrations.create_integration(actor=Actor(system=True), organization=org, slug=slug, **fields)
