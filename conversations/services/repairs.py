"""Repairs the integrity checks offer (`manage.py integrity --fix`); dry-run counts only."""

from __future__ import annotations

from django.db import connection, transaction

from conversations.services.sync import stale_run_condition, sync_runs_expire_stale

_MISMATCHED = """
    SELECT c.id, COALESCE(a.n, 0) AS actual
    FROM conversations_conversation AS c
    LEFT JOIN (SELECT conversation_id, count(*) AS n FROM conversations_message
               GROUP BY conversation_id) AS a ON a.conversation_id = c.id
    WHERE c.message_count <> COALESCE(a.n, 0)
"""

_MESSAGES_WITHOUT_EVENT = """
    SELECT msg.id FROM conversations_message AS msg
    WHERE NOT EXISTS (
        SELECT 1 FROM conversations_interactionevent AS e
        WHERE e.message_id = msg.id AND e.kind IN ('message_received', 'message_sent'))
"""


@transaction.atomic(durable=True)
def conversation_message_counts_repair(*, dry_run: bool = True) -> int:
    """Set `message_count` to the stored messages where they differ (C4)."""
    with connection.cursor() as cursor:
        if dry_run:
            cursor.execute(f"SELECT count(*) FROM ({_MISMATCHED}) AS bad")
            row = cursor.fetchone()
            return int(row[0]) if row else 0
        # Lock the candidates first, in (page_id, psid) order as every writer does, then
        # recount in a second statement: its snapshot, taken with the locks held, sees every
        # message a concurrent writer committed before releasing them.
        cursor.execute(
            "SELECT c.id FROM conversations_conversation AS c"
            f" WHERE c.id IN (SELECT id FROM ({_MISMATCHED}) AS bad)"
            " ORDER BY c.page_id, c.psid FOR UPDATE OF c"
        )
        locked = [row[0] for row in cursor.fetchall()]
        if not locked:
            return 0
        cursor.execute(
            "UPDATE conversations_conversation AS c SET message_count = COALESCE(a.n, 0)"
            " FROM unnest(%s::bigint[]) AS k(id)"
            " LEFT JOIN (SELECT conversation_id, count(*) AS n FROM conversations_message"
            " WHERE conversation_id = ANY(%s) GROUP BY conversation_id) AS a"
            " ON a.conversation_id = k.id"
            " WHERE c.id = k.id AND c.message_count <> COALESCE(a.n, 0)",
            [locked, locked],
        )
        return cursor.rowcount


@transaction.atomic(durable=True)
def message_events_repair(*, dry_run: bool = True) -> int:
    """Record the missing message_received / message_sent event of messages without one."""
    with connection.cursor() as cursor:
        if dry_run:
            cursor.execute(f"SELECT count(*) FROM ({_MESSAGES_WITHOUT_EVENT}) AS missing")
            row = cursor.fetchone()
            return int(row[0]) if row else 0
        cursor.execute(
            "INSERT INTO conversations_interactionevent (page_id, conversation_id, message_id,"
            " kind, occurred_at, dedupe_key, source, metadata)"
            " SELECT msg.page_id, msg.conversation_id, msg.id,"
            " CASE msg.direction WHEN 'inbound' THEN 'message_received' ELSE 'message_sent' END,"
            " msg.sent_at,"
            " CASE msg.direction WHEN 'inbound' THEN 'message_received:' ELSE 'message_sent:' END"
            " || msg.mid, msg.source, jsonb_build_object('mid', msg.mid, 'repaired', true)"
            f" FROM conversations_message AS msg WHERE msg.id IN ({_MESSAGES_WITHOUT_EVENT})"
            " ON CONFLICT DO NOTHING"
        )
        return cursor.rowcount


# Live runs past their lease: the same rule (and the same update) as `sync_request`'s expiry.
def sync_runs_stale_select() -> str:
    return f"SELECT id FROM conversations_syncrun WHERE {stale_run_condition()}"


# Conversations whose last message is behind the newest stored one (C4): the message trigger
# keeps them level, so only writes behind it (a disabled trigger, a restore) leave any.
LAST_MESSAGE_BEHIND_SELECT = """
    SELECT c.id FROM conversations_conversation AS c
    JOIN (SELECT conversation_id, max(sent_at) AS newest FROM conversations_message
          GROUP BY conversation_id) AS n ON n.conversation_id = c.id
    WHERE c.last_message_at IS NULL OR c.last_message_at < n.newest
"""


@transaction.atomic(durable=True)
def sync_runs_stale_repair(*, dry_run: bool = True) -> int:
    """Fail the live runs whose lease expired (error_code `lease_expired`), as the next
    `sync_request` of their page would; the next run of the page resumes from the cursor."""
    if dry_run:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT count(*) FROM ({sync_runs_stale_select()}) AS stale")
            row = cursor.fetchone()
        return int(row[0]) if row else 0
    return len(sync_runs_expire_stale())


@transaction.atomic(durable=True)
def last_message_behind_repair(*, dry_run: bool = True) -> int:
    """Move `last_message_*` forward to each conversation's newest stored message (C4); the
    database refuses any move backwards, and this never attempts one."""
    with connection.cursor() as cursor:
        if dry_run:
            cursor.execute(f"SELECT count(*) FROM ({LAST_MESSAGE_BEHIND_SELECT}) AS behind")
            row = cursor.fetchone()
            return int(row[0]) if row else 0
        # Lock in (page_id, psid) order as every writer does; the update's own snapshot, taken
        # with the locks held, sees every message committed before they were granted.
        cursor.execute(
            "SELECT c.id FROM conversations_conversation AS c"
            f" WHERE c.id IN (SELECT id FROM ({LAST_MESSAGE_BEHIND_SELECT}) AS behind)"
            " ORDER BY c.page_id, c.psid FOR UPDATE OF c"
        )
        locked = [row[0] for row in cursor.fetchall()]
        if not locked:
            return 0
        cursor.execute(
            """
            UPDATE conversations_conversation AS c SET
                last_message_at = newest.sent_at,
                last_message_mid = newest.mid,
                last_message_text = newest.text,
                updated_at = now()
            FROM (
                SELECT DISTINCT ON (conversation_id) conversation_id, sent_at, mid, text
                FROM conversations_message WHERE conversation_id = ANY(%s)
                ORDER BY conversation_id, sent_at DESC, mid DESC
            ) AS newest
            WHERE c.id = newest.conversation_id
              AND (c.last_message_at IS NULL
                   OR (newest.sent_at, newest.mid) > (c.last_message_at, c.last_message_mid))
            """,
            [locked],
        )
        return cursor.rowcount
