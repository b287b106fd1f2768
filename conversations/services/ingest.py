"""Applying a batch of messages and interaction events to conversations, set-based.

This is the one write path for message data, shared by the webhook processor and the Graph sync:
whoever calls it passes plain `IncomingMessage` / `IncomingEvent` / `IncomingMark` values and a
`source`. Whatever the batch size it is ONE SQL statement of data-modifying CTEs:

1. one upsert of every conversation the batch touches, on the single conflict target
   (page, psid) (F14), in sorted key order so concurrent batches lock rows in the same order and
   cannot deadlock; the ids come back from the upsert itself (F15), and whether a row is new
   from `xmax = 0`, never from comparing timestamps (F5);
2. one `INSERT ... ON CONFLICT DO NOTHING RETURNING` of the messages (C2) chained to the insert
   of their message_received / message_sent events (F16, C3): an event exists exactly for each
   message row that is really new; the message table's statement trigger then adds exactly the
   inserted rows to `message_count` (F19) and moves `last_message*` forward only (C4, F1);
3. when present: delivery/read watermarks (carried by the conversation upsert, so they only move
   forward; messages at or before them are marked, those of this batch as they are inserted),
   then the other events (reactions, postbacks, marks), linked to their message when stored.

One statement is atomic (C5: messages and events commit together, or nothing does: F3, F4).
Outside a transaction it commits on its own in one round trip (the webhook's fast path);
inside the caller's transaction (a retry, the sync) it is part of it. An optional trailing CTE
(the webhook receipt) commits or fails with the batch.
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
conv AS (
    INSERT INTO conversations_conversation AS c (
        page_id, psid, participant_name, thread_id, delivered_watermark, read_watermark)
    SELECT u.page_id, u.psid, u.participant_name, u.thread_id, u.delivered, u.read
    FROM jsonb_to_recordset(%s::jsonb)
        AS u(page_id bigint, psid text, participant_name text, thread_id text,
             delivered timestamptz, read timestamptz)
    ORDER BY u.page_id, u.psid
    ON CONFLICT (page_id, psid) DO UPDATE SET
        participant_name = CASE WHEN EXCLUDED.participant_name <> ''
            THEN EXCLUDED.participant_name ELSE c.participant_name END,
        thread_id = CASE WHEN EXCLUDED.thread_id <> ''
            THEN EXCLUDED.thread_id ELSE c.thread_id END,
        delivered_watermark = GREATEST(c.delivered_watermark, EXCLUDED.delivered_watermark),
        read_watermark = GREATEST(c.read_watermark, EXCLUDED.read_watermark)
    RETURNING c.id, c.page_id, c.psid, c.delivered_watermark, c.read_watermark,
        (c.xmax = 0) AS inserted
)"""

_MESSAGES_INSERT = """
msg AS (
    INSERT INTO conversations_message (
        page_id, conversation_id, mid, direction, is_echo, app_id, text, attachments,
        reply_to_mid, sent_at, source, delivered_at, read_at)
    SELECT i.page_id, conv.id, i.mid, i.direction, i.is_echo, i.app_id, i.text, i.attachments,
        i.reply_to_mid, i.sent_at, %s,
        CASE WHEN i.direction = 'outbound' AND conv.delivered_watermark >= i.sent_at
            THEN conv.delivered_watermark END,
        CASE WHEN i.direction = 'outbound' AND conv.read_watermark >= i.sent_at
            THEN conv.read_watermark END
    FROM jsonb_to_recordset(%s::jsonb)
        AS i(page_id bigint, psid text, mid text, direction text, is_echo boolean, app_id text,
             text text, attachments jsonb, reply_to_mid text, sent_at timestamptz)
    JOIN conv ON conv.page_id = i.page_id AND conv.psid = i.psid
    ORDER BY i.page_id, i.mid
    ON CONFLICT (page_id, mid) DO NOTHING
    RETURNING id, page_id, conversation_id, mid, direction, sent_at
), msg_events AS (
    INSERT INTO conversations_interactionevent (
        page_id, conversation_id, message_id, kind, occurred_at, dedupe_key, source, metadata)
    SELECT page_id, conversation_id, id,
        CASE direction WHEN 'inbound' THEN 'message_received' ELSE 'message_sent' END,
        sent_at,
        CASE direction WHEN 'inbound' THEN 'message_received:' ELSE 'message_sent:' END || mid,
        %s, jsonb_build_object('mid', mid)
    FROM msg
    ON CONFLICT DO NOTHING
    RETURNING 1
)"""

# Messages stored before this statement and covered by a watermark of this batch (messages
# inserted by the statement itself got their marks from the conversation's new watermarks).
_MARKS_APPLY = """
marked AS (
    UPDATE conversations_message AS m SET
        delivered_at = CASE WHEN m.delivered_at IS NULL AND m.sent_at <= conv.delivered_watermark
            THEN conv.delivered_watermark ELSE m.delivered_at END,
        read_at = CASE WHEN m.read_at IS NULL AND m.sent_at <= conv.read_watermark
            THEN conv.read_watermark ELSE m.read_at END
    FROM conv
    JOIN unnest(%s::bigint[], %s::text[]) AS k(page_id, psid)
        ON k.page_id = conv.page_id AND k.psid = conv.psid
    WHERE m.conversation_id = conv.id
      AND m.direction = 'outbound'
      AND ((m.delivered_at IS NULL AND m.sent_at <= conv.delivered_watermark)
           OR (m.read_at IS NULL AND m.sent_at <= conv.read_watermark))
    RETURNING m.id
)"""

_EVENTS_INSERT = """
other_events AS (
    INSERT INTO conversations_interactionevent (
        page_id, conversation_id, message_id, kind, occurred_at, dedupe_key, source, metadata)
    SELECT u.page_id, conv.id, {message_id}, u.kind, u.occurred_at, u.dedupe_key, %s,
        u.metadata
    FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::timestamptz[], %s::text[],
                %s::jsonb[], %s::text[])
        AS u(page_id, psid, kind, occurred_at, dedupe_key, metadata, mid)
    JOIN conv ON conv.page_id = u.page_id AND conv.psid = u.psid
    {new_message_join}
    LEFT JOIN conversations_message AS stored ON stored.page_id = u.page_id AND stored.mid = u.mid
    ORDER BY u.page_id, u.dedupe_key
    ON CONFLICT DO NOTHING
    RETURNING 1
)"""


@dataclass(frozen=True)
class TrailingStatement:
    """One more data-modifying CTE run in the same statement (e.g. the webhook receipt), so
    that it commits or fails together with the batch. Its SQL must `RETURNING` one value."""

    sql: str
    params: list[Any]


def batch_apply(
    *,
    conversations: Sequence[ConversationKey] = (),
    messages: Sequence[IncomingMessage] = (),
    events: Sequence[IncomingEvent] = (),
    marks: Sequence[IncomingMark] = (),
    source: str = Source.WEBHOOK,
    trailing: TrailingStatement | None = None,
) -> tuple[ApplyResult, Any]:
    """Apply one batch in ONE SQL statement; see the module docstring.

    A single statement is atomic on its own, so outside a transaction it costs one round trip
    and commits by itself; inside the caller's transaction it is part of it. Returns the
    result and the trailing statement's returned value (None without one).
    """
    keys = _conversation_keys(conversations, messages, events, marks)
    result = ApplyResult()
    if not keys and trailing is None:
        return result, None
    delivered, read = _watermarks(marks)
    parts = [_CONVERSATIONS_UPSERT]
    # Rows travel as one JSON document per part: one C-speed json.dumps instead of escaping
    # every array element in Python (the dominant client cost of a 100-event batch).
    params: list[Any] = [
        json.dumps(
            [
                {
                    "page_id": key.page_pk,
                    "psid": key.psid,
                    "participant_name": key.participant_name,
                    "thread_id": key.thread_id,
                    "delivered": _iso(delivered.get((key.page_pk, key.psid))),
                    "read": _iso(read.get((key.page_pk, key.psid))),
                }
                for key in keys
            ]
        )
    ]
    selects = [
        "(SELECT count(*) FROM conv WHERE inserted)",
        "(SELECT count(*) FROM conv)",
    ]
    unique_messages = _unique_by_mid(messages)
    if unique_messages:
        parts.append(_MESSAGES_INSERT)
        params += [source, _message_rows(unique_messages), source]
        selects += ["(SELECT count(*) FROM msg_events)", "array(SELECT mid FROM msg)"]
    if marks:
        marked_keys = sorted({(mark.page_pk, mark.psid) for mark in marks})
        parts.append(_MARKS_APPLY)
        params += [[key[0] for key in marked_keys], [key[1] for key in marked_keys]]
        selects.append("(SELECT count(*) FROM marked)")
    if events:
        if unique_messages:
            message_id = "COALESCE(fresh.id, stored.id)"
            new_message_join = (
                "LEFT JOIN msg AS fresh ON fresh.page_id = u.page_id AND fresh.mid = u.mid"
            )
        else:
            message_id, new_message_join = "stored.id", ""
        parts.append(
            _EVENTS_INSERT.format(message_id=message_id, new_message_join=new_message_join)
        )
        params += [
            source,
            [event.page_pk for event in events],
            [event.psid for event in events],
            [event.kind for event in events],
            [event.occurred_at for event in events],
            [event.dedupe_key for event in events],
            [json.dumps(event.metadata) for event in events],
            [event.mid for event in events],
        ]
        selects.append("(SELECT count(*) FROM other_events)")
    if trailing is not None:
        parts.append(f"\ntail_statement(value) AS ({trailing.sql})")
        params += trailing.params
        selects.append("(SELECT value FROM tail_statement)")
    statement = "WITH " + ",".join(parts) + "\nSELECT " + ", ".join(selects)
    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        row = list(cursor.fetchone() or ())
    result.conversations_created = int(row.pop(0))
    result.conversations_touched = int(row.pop(0))
    if unique_messages:
        result.message_events_inserted = int(row.pop(0))
        result.inserted_mids = list(row.pop(0))
        result.messages_inserted = len(result.inserted_mids)
    if marks:
        result.messages_marked = int(row.pop(0))
    if events:
        result.events_inserted = int(row.pop(0))
    return result, row.pop(0) if trailing is not None else None


def _watermarks(
    marks: Sequence[IncomingMark],
) -> tuple[dict[tuple[int, str], datetime], dict[tuple[int, str], datetime]]:
    """The newest delivered and read watermark per conversation (read implies delivered)."""
    delivered: dict[tuple[int, str], datetime] = {}
    read: dict[tuple[int, str], datetime] = {}
    for mark in marks:
        key = (mark.page_pk, mark.psid)
        delivered[key] = max(delivered.get(key, mark.watermark), mark.watermark)
        if mark.kind == EventKind.READ:
            read[key] = max(read.get(key, mark.watermark), mark.watermark)
    return delivered, read


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


def _message_rows(messages: Sequence[IncomingMessage]) -> str:
    return json.dumps(
        [
            {
                "page_id": message.page_pk,
                "psid": message.psid,
                "mid": message.mid,
                "direction": message.direction,
                "is_echo": message.is_echo,
                "app_id": message.app_id,
                "text": message.text,
                "attachments": message.attachments,
                "reply_to_mid": message.reply_to_mid,
                "sent_at": message.sent_at.isoformat(),
            }
            for message in messages
        ]
    )


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


__all__ = [
    "ApplyResult",
    "ConversationKey",
    "Direction",
    "EventKind",
    "IncomingEvent",
    "IncomingMark",
    "IncomingMessage",
    "TrailingStatement",
    "batch_apply",
]
