from decimal import Decimal

from django.db import migrations

from monitoring.builtin_prices import BUILTIN_PRICES


def seed(apps, schema_editor):
    ModelPrice = apps.get_model("monitoring", "ModelPrice")
    for provider, model, inp, cached, out, reasoning in BUILTIN_PRICES:
        ModelPrice.objects.update_or_create(
            organization=None, agent=None, provider=provider, model=model,
            defaults={
                "input_per_million": Decimal(inp),
                "cached_input_per_million": Decimal(cached) if cached else None,
                "output_per_million": Decimal(out),
                "reasoning_per_million": Decimal(reasoning) if reasoning else None,
            },
        )


def unseed(apps, schema_editor):
    apps.get_model("monitoring", "ModelPrice").objects.filter(organization=None, agent=None).delete()


class Migration(migrations.Migration):
    dependencies = [("monitoring", "0001_initial")]
    operations = [migrations.RunPython(seed, unseed)]
