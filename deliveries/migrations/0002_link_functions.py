"""The linking rule (D1, D2) and its audit (D3), as SQL functions the triggers call.

* `deliveries_link_resolve(ids)`: for each delivery, the user it should carry and why. This
  is the rule, written once; it reads and never writes. It reads the feature flags from their
  table in the same statement (no cache, so a flip is seen by the very next delivery);
* `deliveries_link_apply(ids, method, audit_all)`: one `UPDATE ... FROM` applying the links,
  one `INSERT ... SELECT` writing the audit rows (all attempts, or only the links when
  `audit_all` is false), in the caller's transaction. `method` NULL means "as created": the
  audit method is then `guest` or `phone_fallback`, whichever rule decided. The audit details
  carry the actor and request id that services set for the transaction
  (`set_config('deliveries.actor_id', ..., true)`).
"""

from django.db import migrations

from evoflow.sqlfiles import migration_sql

# The SQL as it was when this migration was written (the live rule is deliveries/sql/).
FUNCTIONS_SQL = migration_sql(__file__, "0002_link_functions.sql")

DROP_SQL = """
DROP FUNCTION IF EXISTS deliveries_link_apply(bigint[], text, boolean);
DROP FUNCTION IF EXISTS deliveries_link_resolve(bigint[]);
"""


class Migration(migrations.Migration):
    dependencies = [("deliveries", "0001_initial")]

    operations = [migrations.RunSQL(FUNCTIONS_SQL, DROP_SQL)]
