from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("monitoring", "0005_budgetperiod_budgetreservation_and_more"),
    ]

    operations = [
        migrations.AddField(
            model_name="budgetperiod",
            name="deleted_units",
            field=models.BigIntegerField(default=0),
        ),
    ]
