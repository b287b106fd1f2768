"""Integrity checks of the conversations app (`manage.py integrity`).

What each reads and what it costs (docs/operations.md, "What a run costs"): the duplicate
checks are answered by their unique constraints; the counters, last-message and event checks
read, between full sweeps, only the conversations and messages changed since the previous run
(`changed_sql`) and the rows that failed then.
"""

from __future__ import annotations

from django.conf import settings

from conversations.services.repairs import (
    LAST_MESSAGE_BEHIND_SELECT,
    conversation_message_counts_repair,
    last_message_behind_repair,
    message_events_repair,
    sync_runs_stale_repair,
    sync_runs_stale_select,
)
from evoflow.integrity import IntegrityCheck, register
from evoflow.integrity.sql import population_sql, unique_constraint_holds_sql

CONVERSATIONS = population_sql("conversations_conversation")
MESSAGES = population_sql("conversations_message")

# The conversations changed since the previous run: updated (the counters' trigger stamps
# `updated_at`), or given a message since (a message written around the trigger stamps only its
# own `created_at`), and those that failed last time.
_CHANGED_CONVERSATIONS = """
    changed AS (
        SELECT id FROM conversations_conversation WHERE updated_at >= %(since)s
        UNION SELECT conversation_id FROM conversations_message WHERE created_at >= %(since)s
        UNION SELECT unnest(%(recheck)s::text[])::bigint)
"""


def _proved_by_unique(*, table: str, name: str, definition: str, group_by: str) -> str:
    # While the constraint holds, duplicates cannot exist and nothing is scanned (PostgreSQL
    # evaluates the scan's subplans only on the branch that needs them); without it, the scan
    # says what is there.
    holds = unique_constraint_holds_sql(table=table, name=name, definition=definition)
    return f"""
        WITH proof AS (SELECT {holds} AS held),
        duplicates AS (
            SELECT min(id) AS id FROM {table} GROUP BY {group_by} HAVING count(*) > 1)
        SELECT CASE WHEN (SELECT held FROM proof) THEN 0
                    ELSE (SELECT count(*) FROM duplicates) END,
               {population_sql(table)},
               CASE WHEN (SELECT held FROM proof) THEN '{{}}'::text[]
                    ELSE ARRAY(SELECT id::text FROM duplicates ORDER BY duplicates.id
                               LIMIT %(sample_limit)s) END
    """


register(
    IntegrityCheck(
        id="conversations.duplicate_conversations",
        description=(
            "More than one conversation for one (page, PSID) (C1). Proved by the unique"
            " constraint conversation_one_per_page_psid (present, valid, on exactly those"
            " columns), which no write path can get around: nothing is scanned while it holds;"
            " without it, the table is scanned for duplicates."
        ),
        sql=_proved_by_unique(
            table="conversations_conversation",
            name="conversation_one_per_page_psid",
            definition="UNIQUE (page_id, psid)",
            group_by="page_id, psid",
        ),
        error_count=1,
        sample_admin_url_name="admin:conversations_conversation_change",
    )
)

register(
    IntegrityCheck(
        id="conversations.duplicate_messages",
        description=(
            "More than one message for one (page, mid) (C2). Proved by the unique constraint"
            " message_one_per_page_mid (present, valid, on exactly those columns), which no"
            " write path can get around: nothing is scanned while it holds; without it, the"
            " table is scanned for duplicates."
        ),
        sql=_proved_by_unique(
            table="conversations_message",
            name="message_one_per_page_mid",
            definition="UNIQUE (page_id, mid)",
            group_by="page_id, mid",
        ),
        error_count=1,
        sample_admin_url_name="admin:conversations_message_change",
    )
)

register(
    IntegrityCheck(
        id="conversations.message_count_mismatch",
        description=(
            "Conversations whose message_count differs from their stored messages (C4)."
            " Between full sweeps: the conversations updated or given a message since the"
            " previous run, and those failing then."
        ),
        sql=f"""
            WITH actual AS (
                SELECT conversation_id, count(*) AS n FROM conversations_message
                GROUP BY conversation_id),
            bad AS (
                SELECT c.id FROM conversations_conversation AS c
                LEFT JOIN actual AS a ON a.conversation_id = c.id
                WHERE c.message_count <> COALESCE(a.n, 0))
            SELECT (SELECT count(*) FROM bad),
                   {CONVERSATIONS},
                   ARRAY(SELECT id::text FROM bad ORDER BY bad.id LIMIT %(sample_limit)s)
        """,
        changed_sql=f"""
            WITH {_CHANGED_CONVERSATIONS},
            bad AS (
                SELECT c.id FROM conversations_conversation AS c
                JOIN changed ON changed.id = c.id
                WHERE c.message_count <> (
                    SELECT count(*) FROM conversations_message AS m
                    WHERE m.conversation_id = c.id))
            SELECT (SELECT count(*) FROM bad),
                   {CONVERSATIONS},
                   ARRAY(SELECT id::text FROM bad ORDER BY bad.id LIMIT %(sample_limit)s)
        """,
        error_count=1,
        repair=conversation_message_counts_repair,
        repair_description="set message_count to the number of stored messages",
        sample_admin_url_name="admin:conversations_conversation_change",
    )
)

register(
    IntegrityCheck(
        id="conversations.messages_without_event",
        description=(
            "Messages without their message_received / message_sent interaction event (C5, F16)."
            " Between full sweeps: the messages stored since the previous run and those failing"
            " then (an event deleted from an older message waits for the next full sweep)."
        ),
        sql=f"""
            WITH missing AS (
                SELECT msg.id FROM conversations_message AS msg
                WHERE NOT EXISTS (
                    SELECT 1 FROM conversations_interactionevent AS e
                    WHERE e.message_id = msg.id
                      AND e.kind IN ('message_received', 'message_sent')))
            SELECT (SELECT count(*) FROM missing),
                   {MESSAGES},
                   ARRAY(SELECT id::text FROM missing ORDER BY missing.id LIMIT %(sample_limit)s)
        """,
        changed_sql=f"""
            WITH changed AS (
                SELECT id FROM conversations_message WHERE created_at >= %(since)s
                UNION SELECT unnest(%(recheck)s::text[])::bigint),
            missing AS (
                SELECT msg.id FROM conversations_message AS msg
                JOIN changed ON changed.id = msg.id
                WHERE NOT EXISTS (
                    SELECT 1 FROM conversations_interactionevent AS e
                    WHERE e.message_id = msg.id
                      AND e.kind IN ('message_received', 'message_sent')))
            SELECT (SELECT count(*) FROM missing),
                   {MESSAGES},
                   ARRAY(SELECT id::text FROM missing ORDER BY missing.id LIMIT %(sample_limit)s)
        """,
        error_count=1,
        repair=message_events_repair,
        repair_description="record the missing event of each message",
        sample_admin_url_name="admin:conversations_message_change",
    )
)

register(
    IntegrityCheck(
        id="conversations.receipts_failed_over_an_hour",
        description=(
            "Webhook receipts still failed more than an hour after arrival: retries are not"
            " succeeding (C7). Retry them from the admin once the cause is fixed."
        ),
        sql="""
            WITH stuck AS (
                SELECT id FROM conversations_webhookreceipt
                WHERE status = 'failed' AND received_at < now() - interval '1 hour')
            SELECT (SELECT count(*) FROM stuck),
                   (SELECT count(*) FROM conversations_webhookreceipt),
                   ARRAY(SELECT id::text FROM stuck ORDER BY stuck.id LIMIT %(sample_limit)s)
        """,
        warning_count=1,
        error_count=100,
        sample_admin_url_name="admin:conversations_webhookreceipt_change",
    )
)

register(
    IntegrityCheck(
        id="conversations.receipts_quarantined",
        description=(
            "Webhook receipts with entries or events that fit no schema, kept aside (C7): the"
            " rest of each payload was applied. Once the code reads them, apply them with"
            " `manage.py webhook_reprocess --status quarantined` or the receipts' admin action."
        ),
        sql="""
            WITH aside AS (
                SELECT id FROM conversations_webhookreceipt WHERE status = 'quarantined')
            SELECT (SELECT count(*) FROM aside),
                   (SELECT count(*) FROM conversations_webhookreceipt),
                   ARRAY(SELECT id::text FROM aside ORDER BY aside.id LIMIT %(sample_limit)s)
        """,
        warning_count=1,
        sample_admin_url_name="admin:conversations_webhookreceipt_change",
    )
)


# -- Graph sync (C4, C6) -------------------------------------------------------------------------

register(
    IntegrityCheck(
        id="conversations.sync_runs_live_per_page",
        description=(
            "Pages with more than one queued or running sync run (C6). Always 0 while the"
            " partial unique index syncrun_one_live_per_page exists: the check proves it."
        ),
        sql="""
            WITH crowded AS (
                SELECT page_id FROM conversations_syncrun
                WHERE status IN ('queued', 'running')
                GROUP BY page_id HAVING count(*) > 1)
            SELECT (SELECT count(*) FROM crowded),
                   (SELECT count(*) FROM conversations_facebookpage),
                   ARRAY(SELECT page_id::text FROM crowded ORDER BY crowded.page_id
                         LIMIT %(sample_limit)s)
        """,
        error_count=1,
        sample_admin_url_name="admin:conversations_facebookpage_change",
    )
)


def _sync_runs_stale_sql() -> str:
    # The lease's length comes from the settings at run time, as sync_request reads it.
    return f"""
        WITH stale AS ({sync_runs_stale_select()})
        SELECT (SELECT count(*) FROM stale),
               (SELECT count(*) FROM conversations_syncrun
                WHERE status IN ('queued', 'running')),
               ARRAY(SELECT id::text FROM stale ORDER BY stale.id LIMIT %(sample_limit)s)
    """


register(
    IntegrityCheck(
        id="conversations.sync_runs_stale",
        description=(
            "Sync runs still queued or running whose heartbeat (or creation, before the first"
            " one) is older than SYNC_LEASE_SECONDS: the worker died or hung (C6). The next"
            " request of the page expires them too; the repair does it now."
        ),
        sql=_sync_runs_stale_sql,
        warning_count=1,
        repair=sync_runs_stale_repair,
        repair_description="mark them failed with error_code lease_expired (the next run resumes)",
        sample_admin_url_name="admin:conversations_syncrun_change",
    )
)


def _sync_failing_sql() -> str:
    # The limits come from the settings at run time. Per page, the newest successful run is
    # found walking the (page, created_at) index backwards, and only the runs after it are
    # counted: the cost follows the failing streaks, not the history.
    warning_runs = int(settings.SYNC_FAILING_WARNING_RUNS)
    error_runs = int(settings.SYNC_FAILING_ERROR_RUNS)
    warning_hours = float(settings.SYNC_FAILING_WARNING_HOURS)
    error_hours = float(settings.SYNC_FAILING_ERROR_HOURS)
    return f"""
        WITH pages AS (
            SELECT p.id, p.created_at,
                   success.created_at AS success_created, success.finished_at AS success_finished
            FROM conversations_facebookpage AS p
            LEFT JOIN LATERAL (
                SELECT r.created_at, r.finished_at FROM conversations_syncrun AS r
                WHERE r.page_id = p.id AND r.status = 'succeeded'
                ORDER BY r.created_at DESC LIMIT 1) AS success ON true
            WHERE NOT p.is_reauthorization_required AND p.access_token_encrypted <> ''
              AND p.removed_at IS NULL),
        streaks AS (
            SELECT pages.id,
                   COALESCE(success_finished, pages.created_at) AS healthy_since,
                   (SELECT count(*) FROM conversations_syncrun AS r
                    WHERE r.page_id = pages.id AND r.status IN ('partial', 'failed')
                      AND r.created_at > COALESCE(success_created, '-infinity'))
                   AS unsuccessful
            FROM pages),
        failing AS (
            SELECT id,
                   (unsuccessful >= {error_runs}
                    OR healthy_since < now() - make_interval(secs => {error_hours} * 3600))
                   AS severe
            FROM streaks
            WHERE unsuccessful >= {warning_runs}
               OR healthy_since < now() - make_interval(secs => {warning_hours} * 3600))
        SELECT (SELECT count(*) FROM failing),
               (SELECT count(*) FROM pages),
               ARRAY(SELECT id::text FROM failing ORDER BY severe DESC, id
                     LIMIT %(sample_limit)s),
               (SELECT count(*) FROM failing WHERE severe)
    """


register(
    IntegrityCheck(
        id="conversations.sync_failing",
        description=(
            "Pages in use (with a token, not removed, not flagged for re-authorisation) whose"
            " Graph syncs keep"
            " ending partial or failed: SYNC_FAILING_WARNING_RUNS such runs since the last"
            " success, or no success for SYNC_FAILING_WARNING_HOURS (counted from the page's"
            " creation when it never synced); an error past SYNC_FAILING_ERROR_RUNS or"
            " SYNC_FAILING_ERROR_HOURS. Cancelled runs neither count nor end a streak. See"
            " each run's error and failed batches."
        ),
        sql=_sync_failing_sql,
        warning_count=1,
        sample_admin_url_name="admin:conversations_facebookpage_change",
    )
)

register(
    IntegrityCheck(
        id="conversations.pages_reauthorization_required",
        description=(
            "Pages flagged as needing re-authorisation (Graph error 190, or no token): their"
            " syncs are refused until an operator sets a new access token in the admin."
        ),
        sql="""
            WITH flagged AS (
                SELECT id FROM conversations_facebookpage
                WHERE is_reauthorization_required)
            SELECT (SELECT count(*) FROM flagged),
                   (SELECT count(*) FROM conversations_facebookpage),
                   ARRAY(SELECT id::text FROM flagged ORDER BY flagged.id LIMIT %(sample_limit)s)
        """,
        warning_count=1,
        sample_admin_url_name="admin:conversations_facebookpage_change",
    )
)

register(
    IntegrityCheck(
        id="conversations.last_message_behind",
        description=(
            "Conversations whose last_message_at is older than (or missing beside) their"
            " newest stored message's sent_at (C4). Between full sweeps: the conversations"
            " updated or given a message since the previous run, and those failing then."
        ),
        sql=f"""
            WITH behind AS ({LAST_MESSAGE_BEHIND_SELECT})
            SELECT (SELECT count(*) FROM behind),
                   {CONVERSATIONS},
                   ARRAY(SELECT id::text FROM behind ORDER BY behind.id LIMIT %(sample_limit)s)
        """,
        changed_sql=f"""
            WITH {_CHANGED_CONVERSATIONS},
            behind AS (
                SELECT c.id FROM conversations_conversation AS c
                JOIN changed ON changed.id = c.id
                CROSS JOIN LATERAL (
                    SELECT max(m.sent_at) AS newest FROM conversations_message AS m
                    WHERE m.conversation_id = c.id) AS n
                WHERE n.newest IS NOT NULL
                  AND (c.last_message_at IS NULL OR c.last_message_at < n.newest))
            SELECT (SELECT count(*) FROM behind),
                   {CONVERSATIONS},
                   ARRAY(SELECT id::text FROM behind ORDER BY behind.id LIMIT %(sample_limit)s)
        """,
        error_count=1,
        repair=last_message_behind_repair,
        repair_description=(
            "move last_message_* forward to the newest stored message (never backwards)"
        ),
        sample_admin_url_name="admin:conversations_conversation_change",
    )
)
