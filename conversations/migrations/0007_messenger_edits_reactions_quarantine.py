# Edits, reactions and quarantined webhook events (issue 14).

import django.db.models.deletion
import django.db.models.functions.datetime
import pgtrigger.compiler
import pgtrigger.migrations
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("conversations", "0006_protect_deletes_soft_page_removal_purge_audit"),
    ]

    operations = [
        migrations.CreateModel(
            name="MessageEdit",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("mid", models.CharField(max_length=255)),
                ("num_edit", models.IntegerField(blank=True, null=True)),
                ("text", models.TextField(blank=True, default="")),
                ("occurred_at", models.DateTimeField()),
                (
                    "source",
                    models.CharField(
                        choices=[("webhook", "Webhook"), ("sync", "Sync")], max_length=8
                    ),
                ),
                (
                    "created_at",
                    models.DateTimeField(
                        db_default=django.db.models.functions.datetime.Now(), editable=False
                    ),
                ),
            ],
        ),
        migrations.CreateModel(
            name="MessageReaction",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("mid", models.CharField(max_length=255)),
                ("psid", models.CharField(max_length=64, verbose_name="participant PSID")),
                ("reaction", models.CharField(max_length=32)),
                ("emoji", models.CharField(blank=True, db_default="", default="", max_length=32)),
                ("active", models.BooleanField()),
                ("as_of", models.DateTimeField()),
                (
                    "updated_at",
                    models.DateTimeField(db_default=django.db.models.functions.datetime.Now()),
                ),
            ],
        ),
        migrations.AddField(
            model_name="message",
            name="edit_count",
            field=models.IntegerField(db_default=0, default=0),
        ),
        migrations.AddField(
            model_name="message",
            name="text_as_of",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="webhookreceipt",
            name="quarantined_events",
            field=models.JSONField(
                blank=True, db_default=models.Value([], models.JSONField()), default=list
            ),
        ),
        migrations.AlterField(
            model_name="webhookreceipt",
            name="status",
            field=models.CharField(
                choices=[
                    ("received", "Received"),
                    ("processed", "Processed"),
                    ("failed", "Failed (will be retried)"),
                    ("quarantined", "Processed, with events quarantined"),
                    ("rejected", "Rejected (not a page payload)"),
                ],
                default="received",
                max_length=12,
            ),
        ),
        pgtrigger.migrations.AddTrigger(
            model_name="message",
            trigger=pgtrigger.compiler.Trigger(
                name="message_pending_edits_on_insert",
                sql=pgtrigger.compiler.UpsertTriggerSql(
                    func="\n    UPDATE conversations_message AS m SET\n        text = CASE WHEN m.text_as_of IS NULL OR e.occurred_at > m.text_as_of\n            THEN e.text ELSE m.text END,\n        text_as_of = CASE WHEN m.text_as_of IS NULL OR e.occurred_at > m.text_as_of\n            THEN e.occurred_at ELSE m.text_as_of END,\n        edit_count = e.num_edit\n    FROM (\n        SELECT DISTINCT ON (e.page_id, e.mid) e.page_id, e.mid, e.text, e.num_edit, e.occurred_at\n        FROM new_messages AS n\n        JOIN conversations_messageedit AS e ON e.page_id = n.page_id AND e.mid = n.mid\n        WHERE e.num_edit > 0\n        ORDER BY e.page_id, e.mid, e.num_edit DESC\n    ) AS e\n    WHERE m.page_id = e.page_id AND m.mid = e.mid AND e.num_edit > m.edit_count;\n    RETURN NULL;\n",
                    hash="6b908498534e6046068327b9264073bc3aab500f",
                    level="STATEMENT",
                    operation="INSERT",
                    pgid="pgtrigger_message_pending_edits_on_insert_abe46",
                    referencing="REFERENCING NEW TABLE AS new_messages ",
                    table="conversations_message",
                    when="AFTER",
                ),
            ),
        ),
        pgtrigger.migrations.AddTrigger(
            model_name="message",
            trigger=pgtrigger.compiler.Trigger(
                name="message_text_change",
                sql=pgtrigger.compiler.UpsertTriggerSql(
                    func="\n    INSERT INTO conversations_messageedit (page_id, mid, num_edit, text, occurred_at, source)\n    SELECT o.page_id, o.mid, 0, o.text, COALESCE(o.text_as_of, o.sent_at), o.source\n    FROM old_messages AS o\n    JOIN new_messages AS n ON n.id = o.id\n    WHERE o.edit_count = 0 AND n.text IS DISTINCT FROM o.text\n    ON CONFLICT DO NOTHING;\n    UPDATE conversations_conversation AS c SET\n        version = c.version + 1,\n        last_message_text = COALESCE(changed.last_text, c.last_message_text),\n        updated_at = now()\n    FROM (\n        SELECT n.conversation_id,\n            max(n.text) FILTER (WHERE n.mid = conv.last_message_mid) AS last_text\n        FROM new_messages AS n\n        JOIN old_messages AS o ON o.id = n.id\n        JOIN conversations_conversation AS conv ON conv.id = n.conversation_id\n        WHERE n.text IS DISTINCT FROM o.text OR n.edit_count <> o.edit_count\n        GROUP BY n.conversation_id\n    ) AS changed\n    WHERE c.id = changed.conversation_id;\n    RETURN NULL;\n",
                    hash="3adca4ecb016809e4c78a16f6c77765ec6c7a25c",
                    level="STATEMENT",
                    operation="UPDATE",
                    pgid="pgtrigger_message_text_change_6aaeb",
                    referencing="REFERENCING OLD TABLE AS old_messages  NEW TABLE AS new_messages ",
                    table="conversations_message",
                    when="AFTER",
                ),
            ),
        ),
        migrations.AddField(
            model_name="messageedit",
            name="page",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="+",
                to="conversations.facebookpage",
            ),
        ),
        migrations.AddField(
            model_name="messagereaction",
            name="page",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="+",
                to="conversations.facebookpage",
            ),
        ),
        migrations.AddConstraint(
            model_name="messageedit",
            constraint=models.UniqueConstraint(
                fields=("page", "mid", "num_edit"), name="messageedit_one_per_num_edit"
            ),
        ),
        pgtrigger.migrations.AddTrigger(
            model_name="messageedit",
            trigger=pgtrigger.compiler.Trigger(
                name="messageedit_append_only",
                sql=pgtrigger.compiler.UpsertTriggerSql(
                    func="RAISE EXCEPTION 'pgtrigger: Cannot update rows from % table', TG_TABLE_NAME;",
                    hash="55d8709565a122eb000b4414e03a3a70f66b5671",
                    operation="UPDATE",
                    pgid="pgtrigger_messageedit_append_only_fccdd",
                    table="conversations_messageedit",
                    when="BEFORE",
                ),
            ),
        ),
        migrations.AddConstraint(
            model_name="messagereaction",
            constraint=models.UniqueConstraint(
                fields=("page", "mid", "psid", "reaction"), name="messagereaction_one_per_key"
            ),
        ),
    ]
