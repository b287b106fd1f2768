"""A BRIN index on created_at for the integrity checks' "written since the previous run"."""

import django.contrib.postgres.indexes
from django.conf import settings
from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations


class Migration(migrations.Migration):
    # Built CONCURRENTLY (outside a transaction): writes go on while a large table is read.
    atomic = False

    dependencies = [
        ("deliveries", "0006_audit_outcomes_and_update_guard"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="messagedelivery",
            index=django.contrib.postgres.indexes.BrinIndex(
                fields=["created_at"], name="delivery_created_brin", pages_per_range=32
            ),
        ),
    ]
