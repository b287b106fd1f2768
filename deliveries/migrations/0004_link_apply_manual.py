"""Manual relinks audited by `deliveries_link_apply` too: every audit row has one writer.

`deliveries_link_apply` gains `p_previous_user_id` (default NULL) and the method `manual`: the
given deliveries move to their guest's current user whatever the flags, each audited with the
user it was moved from. The three-argument version is dropped first, so callers that pass
three arguments (the triggers, the backfills) reach the new one through the default.
"""

from django.db import migrations

from evoflow.sqlfiles import migration_sql

DROP_THREE_ARGUMENTS = "DROP FUNCTION IF EXISTS deliveries_link_apply(bigint[], text, boolean);"
DROP_FOUR_ARGUMENTS = (
    "DROP FUNCTION IF EXISTS deliveries_link_apply(bigint[], text, boolean, bigint);"
)


class Migration(migrations.Migration):
    dependencies = [("deliveries", "0003_feature_flags")]

    operations = [
        migrations.RunSQL(
            [DROP_THREE_ARGUMENTS, migration_sql(__file__, "0004_link_apply_manual.sql")],
            [DROP_FOUR_ARGUMENTS, migration_sql(__file__, "0002_link_functions.sql")],
        )
    ]
