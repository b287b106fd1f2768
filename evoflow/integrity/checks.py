"""The project's own integrity checks."""

from evoflow.integrity.registry import IntegrityCheck, register
from evoflow.integrity.required_sql import required_triggers_sql

register(
    IntegrityCheck(
        id="tasks.failed_recently",
        description=(
            "Background tasks that failed in the last 24 hours, out of all tasks finished then. "
            "Any failure is a warning; more than 10% failing is an error."
        ),
        sql="""
            SELECT count(*) FILTER (WHERE NOT success),
                   count(*),
                   coalesce(
                       (array_agg(id ORDER BY stopped DESC) FILTER (WHERE NOT success))
                       [1:%(sample_limit)s],
                       '{}'
                   )
            FROM django_q_task
            WHERE stopped >= now() - interval '24 hours'
        """,
        warning_count=1,
        error_ratio=0.10,
        sample_admin_url_name="admin:django_q_failure_change",
    )
)

register(
    IntegrityCheck(
        id="core.required_triggers",
        description=(
            "Triggers and SQL functions the invariants rest on (D1, D3, J3, C4, the conversation "
            "counters, every pgtrigger trigger): each must exist, be enabled, and have the body "
            "the code declares (its versioned SQL file). Any problem is an error; samples name "
            "each trigger or function and what is wrong."
        ),
        sql=required_triggers_sql,
        warning_count=1,
        error_count=1,
    )
)
