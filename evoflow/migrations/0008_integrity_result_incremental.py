"""Integrity results remember how they were evaluated: a full sweep or the rows changed since."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("evoflow", "0007_integrity_result_latest_index"),
    ]

    operations = [
        migrations.AddField(
            model_name="integritycheckresult",
            name="since",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="integritycheckresult",
            name="swept_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="integritycheckresult",
            name="tracked_ids",
            field=models.JSONField(
                blank=True, db_default=models.Value([], models.JSONField()), default=list
            ),
        ),
    ]
