"""A BRIN index on created_at for the integrity checks' "written since the previous run"."""

import django.contrib.postgres.indexes
from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations


class Migration(migrations.Migration):
    # Built CONCURRENTLY (outside a transaction): writes go on while a large table is read.
    atomic = False

    dependencies = [
        ("journeys", "0004_contact_cascade_in_database"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="journeysession",
            index=django.contrib.postgres.indexes.BrinIndex(
                fields=["created_at"], name="journeys_session_created_brin", pages_per_range=32
            ),
        ),
    ]
