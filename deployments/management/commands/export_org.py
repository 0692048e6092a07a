"""Write an organization's ``fruxon.export/v1`` document to stdout.

    python manage.py export_org SLUG [--agents a,b] [--history] > staging.json

The same document as ``GET /v1/{tenant}/export``: never a secret value.
"""
import json

from django.core.management.base import BaseCommand, CommandError

from deployments import transfer
from fruxon.errors import FruxonError
from orgs.models import Organization


class Command(BaseCommand):
    help = "Export an organization's agents, revisions, datasets, budgets and integrations as JSON (no secret values)."

    def add_arguments(self, parser):
        parser.add_argument("slug", help="the organization to export")
        parser.add_argument("--agents", help="comma-separated agent slugs (default: all)")
        parser.add_argument("--history", action="store_true", help="every revision, not only the deployed one")

    def handle(self, *args, slug: str, agents: str | None, history: bool, **options):
        organization = Organization.objects.filter(slug=slug).first()
        if organization is None:
            raise CommandError(f"Organization '{slug}' not found.")
        chosen = None if agents is None else [s.strip() for s in agents.split(",") if s.strip()]
        try:
            document = transfer.export_organization(organization=organization, agents=chosen, history=history)
        except FruxonError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(json.dumps(document, indent=2, ensure_ascii=False, sort_keys=False))
