"""Re-encrypt every stored secret value with the newest FRUXON_ENCRYPTION_KEY.

Rotation procedure: put the new key first in FRUXON_ENCRYPTION_KEY (old keys
after it), deploy, run this command, then drop the old keys.
"""
from django.core.management.base import BaseCommand
from django.db import transaction

from orgs import crypto
from orgs.models import SecretVersion


class Command(BaseCommand):
    help = "Re-encrypt all secret versions with the newest key in FRUXON_ENCRYPTION_KEY."

    def add_arguments(self, parser):
        parser.add_argument("--batch-size", type=int, default=500)

    def handle(self, *args, batch_size: int, **options):
        total = 0
        last_pk = 0
        while True:
            with transaction.atomic():
                batch = list(SecretVersion.objects.select_for_update().filter(pk__gt=last_pk).order_by("pk")[:batch_size])
                if not batch:
                    break
                for version in batch:
                    version.ciphertext = crypto.rotate(version.ciphertext)
                SecretVersion.objects.bulk_update(batch, ["ciphertext"])
                total += len(batch)
                last_pk = batch[-1].pk
        self.stdout.write(f"Re-encrypted {total} secret versions with the newest key.")
