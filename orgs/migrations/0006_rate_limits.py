from django.db import migrations, models


class Migration(migrations.Migration):
    """Rate limits per org and per API key (issue 14 item 1); null = unlimited."""

    dependencies = [
        ("orgs", "0005_webhook_secret_rotation"),
    ]

    operations = [
        migrations.AddField(model_name="organization", name="requests_per_minute",
                            field=models.PositiveIntegerField(blank=True, null=True)),
        migrations.AddField(model_name="organization", name="executions_per_minute",
                            field=models.PositiveIntegerField(blank=True, null=True)),
        migrations.AddField(model_name="organization", name="tokens_per_minute",
                            field=models.PositiveBigIntegerField(blank=True, null=True)),
        migrations.AddField(model_name="apikey", name="requests_per_minute",
                            field=models.PositiveIntegerField(blank=True, null=True)),
        migrations.AddField(model_name="apikey", name="executions_per_minute",
                            field=models.PositiveIntegerField(blank=True, null=True)),
        migrations.AddField(model_name="apikey", name="tokens_per_minute",
                            field=models.PositiveBigIntegerField(blank=True, null=True)),
    ]
