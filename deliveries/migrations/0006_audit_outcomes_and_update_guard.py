"""The requirements' audit outcomes, deliveries that follow their guest, and a guarded table.

* Outcomes are those of docs/invariants.md (D3): `ambiguous` becomes `no_match` with the reason
  `ambiguous_guests` or `ambiguous_users`, and the reason of `skipped` (a flag off) becomes
  `flag_off`. The link rule writes them from now on (frozen copy 0006_link_rule_outcomes.sql);
  the rows already written are renamed in the same transaction, the append-only trigger
  ignored for that one statement (pgtrigger's ignore setting, transaction-local: no lock beyond
  the rows'). The reverse renames them back.
* The guest trigger also moves the deliveries of a guest moved to another user, or unlinked, by
  any path (it was `guest_relink_user`'s job alone).
* A guard after every UPDATE of deliveries refuses a changed guest or message, and a user other
  than the active, linked guest's.
* The audit table refuses TRUNCATE too.
"""

import pgtrigger.compiler
import pgtrigger.migrations
from django.conf import settings
from django.db import migrations, models

from evoflow.sqlfiles import migration_sql

# The append-only trigger of migration 0001, ignored (pgtrigger's own mechanism) while the rows
# written before this migration get the new names.
IGNORE_APPEND_ONLY = (
    "SELECT set_config('pgtrigger.ignore', '{pgtrigger_link_audit_append_only_750c5}', true);"
)
RESTORE_APPEND_ONLY = "SELECT set_config('pgtrigger.ignore', '', true);"

RENAME_OUTCOMES = """
UPDATE deliveries_userlinkaudit
SET outcome = CASE outcome WHEN 'ambiguous' THEN 'no_match' ELSE outcome END,
    details = details || jsonb_build_object('reason', CASE details->>'reason'
        WHEN 'several_guests_with_phone' THEN 'ambiguous_guests'
        WHEN 'several_users_with_phone' THEN 'ambiguous_users'
        WHEN 'linking_disabled' THEN 'flag_off'
        ELSE details->>'reason' END)
WHERE outcome = 'ambiguous'
   OR details->>'reason' IN ('several_guests_with_phone', 'several_users_with_phone',
                             'linking_disabled');
UPDATE deliveries_featureflag
SET description = replace(description, 'give ''ambiguous'' and no link',
                          'give ''no_match'' (reason ambiguous_guests or ambiguous_users)')
WHERE name = 'LINK_USER_BY_PHONE_FALLBACK_TO_USERS';
"""

RESTORE_OUTCOMES = """
UPDATE deliveries_userlinkaudit
SET outcome = CASE WHEN details->>'reason' IN ('ambiguous_guests', 'ambiguous_users')
                   THEN 'ambiguous' ELSE outcome END,
    details = details || jsonb_build_object('reason', CASE details->>'reason'
        WHEN 'ambiguous_guests' THEN 'several_guests_with_phone'
        WHEN 'ambiguous_users' THEN 'several_users_with_phone'
        WHEN 'flag_off' THEN 'linking_disabled'
        ELSE details->>'reason' END)
WHERE details->>'reason' IN ('ambiguous_guests', 'ambiguous_users', 'flag_off');
UPDATE deliveries_featureflag
SET description = replace(description,
                          'give ''no_match'' (reason ambiguous_guests or ambiguous_users)',
                          'give ''ambiguous'' and no link')
WHERE name = 'LINK_USER_BY_PHONE_FALLBACK_TO_USERS';
"""


class Migration(migrations.Migration):
    dependencies = [
        ("deliveries", "0005_hosts_group_and_link_permission"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        pgtrigger.migrations.RemoveTrigger(
            model_name="eventguest",
            name="guest_link_backfill",
        ),
        migrations.RemoveConstraint(
            model_name="userlinkaudit",
            name="link_audit_outcome_valid",
        ),
        migrations.AlterField(
            model_name="userlinkaudit",
            name="outcome",
            field=models.CharField(
                choices=[
                    ("linked", "Linked"),
                    ("no_match", "No Match"),
                    ("skipped", "Skipped"),
                    ("already_linked", "Already Linked"),
                ],
                max_length=16,
            ),
        ),
        migrations.RunSQL(
            migration_sql(__file__, "0006_link_rule_outcomes.sql"),
            migration_sql(__file__, "0004_link_apply_manual.sql"),
        ),
        migrations.RunSQL(
            [IGNORE_APPEND_ONLY, RENAME_OUTCOMES, RESTORE_APPEND_ONLY],
            [IGNORE_APPEND_ONLY, RESTORE_OUTCOMES, RESTORE_APPEND_ONLY],
        ),
        pgtrigger.migrations.AddTrigger(
            model_name="eventguest",
            trigger=pgtrigger.compiler.Trigger(
                name="guest_link_backfill",
                sql=pgtrigger.compiler.UpsertTriggerSql(
                    declare="DECLARE moved record;",
                    func="\n    PERFORM pg_advisory_xact_lock(hashtextextended('deliveries.event:' || events.event_id::text, 0))\n    FROM (\n        SELECT DISTINCT new_rows.event_id\n        FROM new_rows JOIN old_rows ON old_rows.id = new_rows.id\n        WHERE new_rows.user_id IS DISTINCT FROM old_rows.user_id\n           OR (new_rows.user_id IS NOT NULL AND new_rows.removed_at IS NULL\n               AND old_rows.removed_at IS NOT NULL)\n        ORDER BY new_rows.event_id\n    ) AS events;\n    PERFORM deliveries_link_apply(\n        ARRAY(\n            SELECT delivery.id\n            FROM new_rows\n            JOIN old_rows ON old_rows.id = new_rows.id\n            JOIN deliveries_messagedelivery AS delivery\n              ON delivery.guest_id = new_rows.id AND delivery.user_id IS NULL\n            WHERE new_rows.user_id IS NOT NULL AND new_rows.removed_at IS NULL\n              AND (old_rows.user_id IS NULL\n                   OR (old_rows.user_id = new_rows.user_id AND old_rows.removed_at IS NOT NULL))\n            ORDER BY delivery.id\n        ),\n        'guest_backfill',\n        true\n    );\n    FOR moved IN\n        SELECT new_rows.id AS guest_id, new_rows.user_id, old_rows.user_id AS previous_user_id\n        FROM new_rows JOIN old_rows ON old_rows.id = new_rows.id\n        WHERE old_rows.user_id IS NOT NULL\n          AND new_rows.user_id IS DISTINCT FROM old_rows.user_id\n        ORDER BY new_rows.id\n    LOOP\n        PERFORM deliveries_link_apply(\n            ARRAY(\n                SELECT delivery.id\n                FROM deliveries_messagedelivery AS delivery\n                WHERE delivery.guest_id = moved.guest_id\n                  AND (delivery.user_id = moved.previous_user_id\n                       OR (delivery.user_id IS NULL AND moved.user_id IS NOT NULL))\n                ORDER BY delivery.id\n            ),\n            'manual',\n            true,\n            moved.previous_user_id\n        );\n    END LOOP;\n    RETURN NULL;\n",
                    hash="467c2df84ba45b10c93013fd54ebb3fc2ff57171",
                    level="STATEMENT",
                    operation="UPDATE",
                    pgid="pgtrigger_guest_link_backfill_6feb7",
                    referencing="REFERENCING OLD TABLE AS old_rows  NEW TABLE AS new_rows ",
                    table="deliveries_eventguest",
                    when="AFTER",
                ),
            ),
        ),
        pgtrigger.migrations.AddTrigger(
            model_name="messagedelivery",
            trigger=pgtrigger.compiler.Trigger(
                name="delivery_update_guard",
                sql=pgtrigger.compiler.UpsertTriggerSql(
                    func="\n    -- EXCEPT rather than a join of the two transition tables: they have no index, and a\n    -- nested loop over them would grow with the square of the rows a statement updates.\n    IF EXISTS (\n        SELECT id, guest_id, message_id FROM new_rows\n        EXCEPT\n        SELECT id, guest_id, message_id FROM old_rows\n    ) THEN\n        RAISE EXCEPTION 'a delivery''s guest and message never change'\n            USING ERRCODE = 'check_violation',\n                  HINT = 'Send the message to the other guest instead.';\n    END IF;\n    IF EXISTS (\n        SELECT 1\n        FROM (\n            SELECT id, guest_id, user_id FROM new_rows\n            EXCEPT\n            SELECT id, guest_id, user_id FROM old_rows\n        ) AS changed\n        JOIN deliveries_eventguest AS guest ON guest.id = changed.guest_id\n        WHERE guest.user_id IS NOT NULL AND guest.removed_at IS NULL\n          AND changed.user_id IS DISTINCT FROM guest.user_id\n    ) THEN\n        RAISE EXCEPTION 'a delivery of an active, linked guest carries that guest''s user'\n            USING ERRCODE = 'check_violation',\n                  HINT = 'Link, relink or unlink the guest: its deliveries follow it.';\n    END IF;\n    RETURN NULL;\n",
                    hash="a1135fb076f7da19a1577d2adcf5cdfa85e02087",
                    level="STATEMENT",
                    operation="UPDATE",
                    pgid="pgtrigger_delivery_update_guard_f9657",
                    referencing="REFERENCING OLD TABLE AS old_rows  NEW TABLE AS new_rows ",
                    table="deliveries_messagedelivery",
                    when="AFTER",
                ),
            ),
        ),
        pgtrigger.migrations.AddTrigger(
            model_name="userlinkaudit",
            trigger=pgtrigger.compiler.Trigger(
                name="link_audit_no_truncate",
                sql=pgtrigger.compiler.UpsertTriggerSql(
                    func="RAISE EXCEPTION 'pgtrigger: Cannot truncate % table', TG_TABLE_NAME;",
                    hash="1758ae024b832446cf0f54c570be860306b229ff",
                    level="STATEMENT",
                    operation="TRUNCATE",
                    pgid="pgtrigger_link_audit_no_truncate_77179",
                    table="deliveries_userlinkaudit",
                    when="BEFORE",
                ),
            ),
        ),
        migrations.AddConstraint(
            model_name="userlinkaudit",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    ("outcome__in", ["linked", "no_match", "skipped", "already_linked"])
                ),
                name="link_audit_outcome_valid",
            ),
        ),
    ]
