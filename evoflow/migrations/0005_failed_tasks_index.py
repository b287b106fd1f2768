"""An index for the failed tasks of django-q2's task table.

django-q2 keeps a bounded number of successful tasks but every failure, so the failures grow
without bound. The dashboard's "failed in 24 hours", the failures list (newest first, filtered
by `stopped_since`) and the `tasks.failed_recently` check read them by time.
"""

from django.db import migrations


class Migration(migrations.Migration):
    # CREATE INDEX CONCURRENTLY cannot run inside a transaction.
    atomic = False

    dependencies = [
        ("evoflow", "0004_integrity_run_queued_and_requested_by"),
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
    ]

    operations = [
        migrations.RunSQL(
            sql=(
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS evoflow_task_failed_stopped_idx"
                " ON django_q_task (stopped DESC) WHERE NOT success"
            ),
            reverse_sql="DROP INDEX CONCURRENTLY IF EXISTS evoflow_task_failed_stopped_idx",
        )
    ]
