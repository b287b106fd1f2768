"""Integrity checks of the conversations app (`manage.py integrity`)."""

from __future__ import annotations

from conversations.services.repairs import (
    conversation_message_counts_repair,
    message_events_repair,
)
from evoflow.integrity import IntegrityCheck, register

register(
    IntegrityCheck(
        id="conversations.duplicate_conversations",
        description=(
            "More than one conversation for one (page, PSID) (C1). Always 0 while the unique"
            " constraint exists: the check proves it."
        ),
        sql="""
            WITH duplicates AS (
                SELECT min(id) AS id FROM conversations_conversation
                GROUP BY page_id, psid HAVING count(*) > 1)
            SELECT (SELECT count(*) FROM duplicates),
                   (SELECT count(*) FROM conversations_conversation),
                   ARRAY(SELECT id::text FROM duplicates ORDER BY id LIMIT %(sample_limit)s)
        """,
        error_count=1,
        sample_admin_url_name="admin:conversations_conversation_change",
    )
)

register(
    IntegrityCheck(
        id="conversations.duplicate_messages",
        description=(
            "More than one message for one (page, mid) (C2). Always 0 while the unique"
            " constraint exists: the check proves it."
        ),
        sql="""
            WITH duplicates AS (
                SELECT min(id) AS id FROM conversations_message
                GROUP BY page_id, mid HAVING count(*) > 1)
            SELECT (SELECT count(*) FROM duplicates),
                   (SELECT count(*) FROM conversations_message),
                   ARRAY(SELECT id::text FROM duplicates ORDER BY id LIMIT %(sample_limit)s)
        """,
        error_count=1,
        sample_admin_url_name="admin:conversations_message_change",
    )
)

register(
    IntegrityCheck(
        id="conversations.message_count_mismatch",
        description="Conversations whose message_count differs from their stored messages (C4).",
        sql="""
            WITH actual AS (
                SELECT conversation_id, count(*) AS n FROM conversations_message
                GROUP BY conversation_id),
            bad AS (
                SELECT c.id FROM conversations_conversation AS c
                LEFT JOIN actual AS a ON a.conversation_id = c.id
                WHERE c.message_count <> COALESCE(a.n, 0))
            SELECT (SELECT count(*) FROM bad),
                   (SELECT count(*) FROM conversations_conversation),
                   ARRAY(SELECT id::text FROM bad ORDER BY id LIMIT %(sample_limit)s)
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
        ),
        sql="""
            WITH missing AS (
                SELECT msg.id FROM conversations_message AS msg
                WHERE NOT EXISTS (
                    SELECT 1 FROM conversations_interactionevent AS e
                    WHERE e.message_id = msg.id
                      AND e.kind IN ('message_received', 'message_sent')))
            SELECT (SELECT count(*) FROM missing),
                   (SELECT count(*) FROM conversations_message),
                   ARRAY(SELECT id::text FROM missing ORDER BY id LIMIT %(sample_limit)s)
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
                   ARRAY(SELECT id::text FROM stuck ORDER BY id LIMIT %(sample_limit)s)
        """,
        warning_count=1,
        error_count=100,
        sample_admin_url_name="admin:conversations_webhookreceipt_change",
    )
)
