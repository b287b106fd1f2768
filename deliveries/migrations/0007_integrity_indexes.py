"""Indexes for the integrity checks: a BRIN index on the deliveries' created_at ("written since
the previous run") and partial indexes holding exactly the guests and users whose phone is not
normalised (the predicate of `deliveries.phone_not_normalised`, frozen here as it is today;
tests/deliveries/test_backfill_and_integrity.py checks the check still reads them)."""

import django.contrib.postgres.indexes
from django.conf import settings
from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations

# deliveries/integrity.py `_PHONE_IS_STALE`, as of this migration.
PHONE_IS_STALE = """
    (phone <> '' AND phone_e164 IS NULL)
    OR (phone = '' AND phone_e164 IS NOT NULL)
    OR (phone_e164 IS NOT NULL AND right(
            phone_e164, length(ltrim(regexp_replace(phone, '[^0-9]', '', 'g'), '0'))
        ) <> ltrim(regexp_replace(phone, '[^0-9]', '', 'g'), '0'))
"""


def _stale_phone_index(table: str, name: str) -> migrations.RunSQL:
    return migrations.RunSQL(
        f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {table} (id) WHERE {PHONE_IS_STALE}",
        f"DROP INDEX CONCURRENTLY IF EXISTS {name}",
    )


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
        _stale_phone_index("deliveries_eventguest", "guest_phone_stale_idx"),
        _stale_phone_index("evoflow_user", "user_phone_stale_idx"),
    ]
