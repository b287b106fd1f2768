"""Each check's integrity results newest first, ties by id.

The dashboard reads the latest result of every registered check with one probe of this index
per check; the trend reads each check's time range from it. It replaces the (check_id,
-created_at) index, built first so neither read goes without an index meanwhile.
"""

from django.contrib.postgres.operations import AddIndexConcurrently, RemoveIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    # CREATE INDEX CONCURRENTLY cannot run inside a transaction.
    atomic = False

    dependencies = [
        ("evoflow", "0006_integrity_run_heartbeat"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="integritycheckresult",
            index=models.Index(
                fields=["check_id", "-created_at", "-id"], name="integrity_result_latest_idx"
            ),
        ),
        RemoveIndexConcurrently(
            model_name="integritycheckresult",
            name="integrity_result_trend_idx",
        ),
    ]
