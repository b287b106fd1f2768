"""A BRIN index on created_at for the integrity checks' "written since the previous run"."""

import django.contrib.postgres.indexes
from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations


class Migration(migrations.Migration):
    # Built CONCURRENTLY (outside a transaction): writes go on while a large table is read.
    atomic = False

    dependencies = [
        ("conversations", "0008_drop_event_kind_occurred"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="message",
            index=django.contrib.postgres.indexes.BrinIndex(
                fields=["created_at"], name="message_created_brin", pages_per_range=32
            ),
        ),
    ]
