"""Applying a batch of messages and interaction events to conversations, set-based.

This is the one write path for message data, shared by the webhook processor and the Graph sync:
whoever calls it passes plain `IncomingMessage` / `IncomingEvent` / `IncomingMark` values and a
`source`. Whatever the batch size it costs a handful of statements:

1. one upsert of every conversation the batch touches, on the single conflict target
   (page, psid) (F14), in sorted key order so concurrent batches lock rows in the same order and
   cannot deadlock; the ids come back from the upsert itself (F15), and whether a row is new
   from `xmax = 0`, never from comparing timestamps (F5);
2. one `INSERT ... ON CONFLICT DO NOTHING RETURNING` of the messages (C2) chained to the insert
   of their message_received / message_sent events (F16, C3): an event exists exactly for each
   message row that is really new; the message table's statement trigger then adds exactly the
   inserted rows to `message_count` (F19) and moves `last_message*` forward only (C4, F1);
3. when present: delivery/read watermarks (conversation watermarks move forward only, messages
   at or before them are marked), then the other events (reactions, postbacks, marks).

It must run inside the caller's transaction (C5: messages and events commit together); it never
opens its own, so a failure anywhere rolls the whole batch back (F3, F4: nothing is swallowed).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import connection

from conversations.models import Direction, EventKind, Source


@dataclass(frozen=True)
class ConversationKey:
    page_pk: int
    psid: str
    participant_name: str = ""
    thread_id: str = ""


@dataclass(frozen=True)
class IncomingMessage:
    page_pk: int
    psid: str
    mid: str
    direction: str  # Direction
    sent_at: datetime
    text: str = ""
    attachments: list[dict[str, Any]] = field(default_factory=list)
    is_echo: bool = False
    app_id: str = ""
    reply_to_mid: str = ""


@dataclass(frozen=True)
class IncomingEvent:
    """An interaction event that is not a message's own received/sent event."""

    page_pk: int
    psid: str
    kind: str  # EventKind
    occurred_at: datetime
    dedupe_key: str
    metadata: dict[str, Any] = field(default_factory=dict)
    mid: str = ""  # the message it is about, when it names one


@dataclass(frozen=True)
class IncomingMark:
    """A delivery or read watermark: outbound messages sent at or before it are marked."""

    page_pk: int
    psid: str
    kind: str  # EventKind.DELIVERED or EventKind.READ
    watermark: datetime


@dataclass
class ApplyResult:
    conversations_created: int = 0
    conversations_touched: int = 0
    messages_inserted: int = 0
    message_events_inserted: int = 0
    events_inserted: int = 0
    messages_marked: int = 0
    inserted_mids: list[str] = field(default_factory=list)


_CONVERSATIONS_UPSERT = """
INSERT INTO conversations_conversation AS c (page_id, psid, participant_name, thread_id)
SELECT u.page_id, u.psid, u.participant_name, u.thread_id
FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[])
    AS u(page_id, psid, participant_name, thread_id)
ORDER BY u.page_id, u.psid
ON CONFLICT (page_id, psid) DO UPDATE SET
    participant_name = CASE WHEN EXCLUDED.participant_name <> ''
        THEN EXCLUDED.participant_name ELSE c.participant_name END,
    thread_id = CASE WHEN EXCLUDED.thread_id <> '' THEN EXCLUDED.thread_id ELSE c.thread_id END
RETURNING c.id, (c.xmax = 0) AS inserted
"""

_MESSAGES_INSERT = """
WITH incoming AS (
    SELECT * FROM unnest(
        %(page)s::bigint[], %(psid)s::text[], %(mid)s::text[], %(direction)s::text[],
        %(is_echo)s::boolean[], %(app_id)s::text[], %(text)s::text[], %(attachments)s::jsonb[],
        %(reply_to)s::text[], %(sent_at)s::timestamptz[]
    ) AS u(page_id, psid, mid, direction, is_echo, app_id, text, attachments, reply_to_mid,
           sent_at)
), inserted AS (
    INSERT INTO conversations_message (
        page_id, conversation_id, mid, direction, is_echo, app_id, text, attachments,
        reply_to_mid, sent_at, source, delivered_at, read_at)
    SELECT i.page_id, c.id, i.mid, i.direction, i.is_echo, i.app_id, i.text, i.attachments,
        i.reply_to_mid, i.sent_at, %(source)s,
        CASE WHEN i.direction = 'outbound' AND c.delivered_watermark >= i.sent_at
            THEN c.delivered_watermark END,
        CASE WHEN i.direction = 'outbound' AND c.read_watermark >= i.sent_at
            THEN c.read_watermark END
    FROM incoming AS i
    JOIN conversations_conversation AS c ON c.page_id = i.page_id AND c.psid = i.psid
    ORDER BY i.page_id, i.mid
    ON CONFLICT (page_id, mid) DO NOTHING
    RETURNING id, page_id, conversation_id, mid, direction, sent_at
), events AS (
    INSERT INTO conversations_interactionevent (
        page_id, conversation_id, message_id, kind, occurred_at, dedupe_key, source, metadata)
    SELECT page_id, conversation_id, id,
        CASE direction WHEN 'inbound' THEN 'message_received' ELSE 'message_sent' END,
        sent_at,
        CASE direction WHEN 'inbound' THEN 'message_received:' ELSE 'message_sent:' END || mid,
        %(source)s, jsonb_build_object('mid', mid)
    FROM inserted
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM events), array(SELECT mid FROM inserted)
"""

_MARKS_APPLY = """
WITH marks AS (
    SELECT c.id AS conversation_id,
        max(m.watermark) FILTER (WHERE m.kind = 'delivered') AS delivered,
        -- everything read was delivered too
        max(m.watermark) AS delivered_or_read,
        max(m.watermark) FILTER (WHERE m.kind = 'read') AS read
    FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::timestamptz[])
        AS m(page_id, psid, kind, watermark)
    JOIN conversations_conversation AS c ON c.page_id = m.page_id AND c.psid = m.psid
    GROUP BY c.id
), watermarks AS (
    UPDATE conversations_conversation AS c SET
        delivered_watermark = GREATEST(c.delivered_watermark, marks.delivered_or_read),
        read_watermark = GREATEST(c.read_watermark, marks.read)
    FROM marks
    WHERE c.id = marks.conversation_id
      AND (c.delivered_watermark IS NULL OR c.delivered_watermark < marks.delivered_or_read
           OR (marks.read IS NOT NULL
               AND (c.read_watermark IS NULL OR c.read_watermark < marks.read)))
    RETURNING c.id
), marked AS (
    UPDATE conversations_message AS msg SET
        delivered_at = CASE WHEN msg.delivered_at IS NULL
            AND msg.sent_at <= marks.delivered_or_read
            THEN marks.delivered_or_read ELSE msg.delivered_at END,
        read_at = CASE WHEN msg.read_at IS NULL AND msg.sent_at <= marks.read
            THEN marks.read ELSE msg.read_at END
    FROM marks
    WHERE msg.conversation_id = marks.conversation_id
      AND msg.direction = 'outbound'
      AND ((msg.delivered_at IS NULL AND msg.sent_at <= marks.delivered_or_read)
           OR (msg.read_at IS NULL AND msg.sent_at <= marks.read))
    RETURNING msg.id
)
SELECT (SELECT count(*) FROM marked), (SELECT count(*) FROM watermarks)
"""

_EVENTS_INSERT = """
INSERT INTO conversations_interactionevent (
    page_id, conversation_id, message_id, kind, occurred_at, dedupe_key, source, metadata)
SELECT u.page_id, c.id, msg.id, u.kind, u.occurred_at, u.dedupe_key, %s, u.metadata
FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::timestamptz[], %s::text[], %s::jsonb[],
            %s::text[])
    AS u(page_id, psid, kind, occurred_at, dedupe_key, metadata, mid)
JOIN conversations_conversation AS c ON c.page_id = u.page_id AND c.psid = u.psid
LEFT JOIN conversations_message AS msg ON msg.page_id = u.page_id AND msg.mid = u.mid
ORDER BY u.page_id, u.dedupe_key
ON CONFLICT DO NOTHING
"""


def batch_apply(
    *,
    conversations: Sequence[ConversationKey] = (),
    messages: Sequence[IncomingMessage] = (),
    events: Sequence[IncomingEvent] = (),
    marks: Sequence[IncomingMark] = (),
    source: str = Source.WEBHOOK,
) -> ApplyResult:
    """Apply one batch inside the caller's transaction; see the module docstring."""
    if not connection.in_atomic_block:
        raise RuntimeError("batch_apply must run inside transaction.atomic (C5)")
    result = ApplyResult()
    keys = _conversation_keys(conversations, messages, events, marks)
    if not keys:
        return result
    with connection.cursor() as cursor:
        cursor.execute(
            _CONVERSATIONS_UPSERT,
            [
                [key.page_pk for key in keys],
                [key.psid for key in keys],
                [key.participant_name for key in keys],
                [key.thread_id for key in keys],
            ],
        )
        rows = cursor.fetchall()
        result.conversations_touched = len(rows)
        result.conversations_created = sum(1 for _, inserted in rows if inserted)

        unique_messages = _unique_by_mid(messages)
        if unique_messages:
            cursor.execute(_MESSAGES_INSERT, _message_columns(unique_messages, source))
            row = cursor.fetchone()
            assert row is not None
            result.message_events_inserted = int(row[0])
            result.inserted_mids = list(row[1])
            result.messages_inserted = len(result.inserted_mids)

        if marks:
            cursor.execute(
                _MARKS_APPLY,
                [
                    [mark.page_pk for mark in marks],
                    [mark.psid for mark in marks],
                    [mark.kind for mark in marks],
                    [mark.watermark for mark in marks],
                ],
            )
            row = cursor.fetchone()
            assert row is not None
            result.messages_marked = int(row[0])

        if events:
            cursor.execute(
                _EVENTS_INSERT,
                [
                    source,
                    [event.page_pk for event in events],
                    [event.psid for event in events],
                    [event.kind for event in events],
                    [event.occurred_at for event in events],
                    [event.dedupe_key for event in events],
                    [json.dumps(event.metadata) for event in events],
                    [event.mid for event in events],
                ],
            )
            result.events_inserted = cursor.rowcount
    return result


def _conversation_keys(
    conversations: Sequence[ConversationKey],
    messages: Sequence[IncomingMessage],
    events: Sequence[IncomingEvent],
    marks: Sequence[IncomingMark],
) -> list[ConversationKey]:
    by_key: dict[tuple[int, str], ConversationKey] = {}
    items: list[IncomingMessage | IncomingEvent | IncomingMark] = [*messages, *events, *marks]
    for item in items:
        by_key.setdefault((item.page_pk, item.psid), ConversationKey(item.page_pk, item.psid))
    for key in conversations:  # explicit keys carry names and thread ids: they win
        by_key[(key.page_pk, key.psid)] = key
    # Sorted: every batch locks conversation rows in the same order (no deadlocks).
    return [by_key[key] for key in sorted(by_key)]


def _unique_by_mid(messages: Sequence[IncomingMessage]) -> list[IncomingMessage]:
    seen: dict[tuple[int, str], IncomingMessage] = {}
    for message in messages:
        seen.setdefault((message.page_pk, message.mid), message)
    return list(seen.values())


def _message_columns(messages: Sequence[IncomingMessage], source: str) -> dict[str, Any]:
    return {
        "page": [message.page_pk for message in messages],
        "psid": [message.psid for message in messages],
        "mid": [message.mid for message in messages],
        "direction": [message.direction for message in messages],
        "is_echo": [message.is_echo for message in messages],
        "app_id": [message.app_id for message in messages],
        "text": [message.text for message in messages],
        "attachments": [json.dumps(message.attachments) for message in messages],
        "reply_to": [message.reply_to_mid for message in messages],
        "sent_at": [message.sent_at for message in messages],
        "source": source,
    }


__all__ = [
    "ApplyResult",
    "ConversationKey",
    "Direction",
    "EventKind",
    "IncomingEvent",
    "IncomingMark",
    "IncomingMessage",
    "batch_apply",
]
