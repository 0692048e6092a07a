"""Import a ``fruxon.export/v1`` document into an organization, as the system actor.

    python manage.py import_org SLUG file.json [--dry-run] [--deploy]
    python manage.py import_org SLUG - < staging.json

Prints the result (the plan, and what was created and deployed) as JSON. The
same checks and the same single transaction as ``POST /v1/{tenant}/import``:
an invalid document or a refused deploy exits non-zero and writes nothing.
"""
import json
import sys

from django.core.management.base import BaseCommand, CommandError

from deployments import transfer
from fruxon.errors import FruxonError
from orgs.actor import SYSTEM
from orgs.models import Organization


class Command(BaseCommand):
    help = "Import an export document into an organization (--dry-run shows the plan and writes nothing)."

    def add_arguments(self, parser):
        parser.add_argument("slug", help="the target organization")
        parser.add_argument("file", help="the document's path, or - for standard input")
        parser.add_argument("--dry-run", action="store_true", help="print the plan; write nothing")
        parser.add_argument("--deploy", action="store_true", help="deploy each agent's deployed revision")

    def handle(self, *args, slug: str, file: str, dry_run: bool, deploy: bool, **options):
        organization = Organization.objects.filter(slug=slug).first()
        if organization is None:
            raise CommandError(f"Organization '{slug}' not found.")
        try:
            if file == "-":
                text = sys.stdin.read()
            else:
                with open(file, encoding="utf-8") as handle:
                    text = handle.read()
        except OSError as exc:
            raise CommandError(f"Cannot read {file}: {exc}") from None
        try:
            document = transfer.validate_document(transfer.parse_json(text))
            result = transfer.import_document(actor=SYSTEM, organization=organization, document=document,
                                              dry_run=dry_run, deploy=deploy)
        except FruxonError as exc:
            problems = exc.details.get("problems") or []
            lines = [f"{exc.code}: {exc.message}"] + [f"  {p['path']}: {p['message']}" for p in problems[10:]]
            raise CommandError("\n".join(lines)) from None
        self.stdout.write(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
