"""The edits and reactions of a batch (C9): their records and their part of the ingest
service's second statement.

`conversations.services.ingest` calls `edit_and_reaction_parts` while it builds the statement
that runs with the conversation locks held: the CTEs below join its `conv` CTE (the batch's
conversations), so an edit or a reaction only touches a message of its own conversation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class IncomingEdit:
    """A `message_edit`: the message's text after its `num_edit`-th edit."""

    page_pk: int
    psid: str
    mid: str
    text: str
    num_edit: int
    occurred_at: datetime


@dataclass(frozen=True)
class IncomingReaction:
    """A `message_reactions` event: `react` puts the named reaction on, `unreact` takes it
    off."""

    page_pk: int
    psid: str
    mid: str
    action: str  # "react" or "unreact"
    reaction: str
    emoji: str
    occurred_at: datetime

    @property
    def name(self) -> str:
        return self.reaction or self.emoji


# Edits (C9): every edit is logged (a re-delivery adds nothing), even for a message not stored
# yet (a trigger applies it when the message arrives); the newest edit of each stored message of
# the batch's conversations moves its text forward: only a higher num_edit, and the text only
# when the edit is newer than the stored text (the sync may have read a later one already).
_EDITS_APPLY = """
edit_log AS (
    INSERT INTO conversations_messageedit (page_id, mid, num_edit, text, occurred_at, source)
    SELECT u.page_id, u.mid, u.num_edit, u.text, u.occurred_at, %s
    FROM unnest(%s::bigint[], %s::text[], %s::int[], %s::text[], %s::timestamptz[])
        AS u(page_id, mid, num_edit, text, occurred_at)
    ORDER BY u.page_id, u.mid, u.num_edit
    ON CONFLICT DO NOTHING
    RETURNING 1
), edit_apply AS (
    UPDATE conversations_message AS m SET
        text = CASE WHEN m.text_as_of IS NULL OR e.occurred_at > m.text_as_of
            THEN e.text ELSE m.text END,
        text_as_of = CASE WHEN m.text_as_of IS NULL OR e.occurred_at > m.text_as_of
            THEN e.occurred_at ELSE m.text_as_of END,
        edit_count = e.num_edit
    FROM (
        SELECT DISTINCT ON (u.page_id, u.mid) u.page_id, u.psid, u.mid, u.text, u.num_edit,
            u.occurred_at
        FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[], %s::int[],
                    %s::timestamptz[]) AS u(page_id, psid, mid, text, num_edit, occurred_at)
        ORDER BY u.page_id, u.mid, u.num_edit DESC
    ) AS e
    JOIN conv ON conv.page_id = e.page_id AND conv.psid = e.psid
    WHERE m.page_id = e.page_id AND m.mid = e.mid AND m.conversation_id = conv.id
      AND e.num_edit > m.edit_count
    RETURNING m.id
)"""

# Reactions (C9): the state of each (message, person, reaction name) follows the newest event
# about it; an older one arriving late changes nothing. An unreact that names no reaction (Meta's
# example names it; a withdrawal without one has been seen) takes off every reaction of that
# person on that message older than it.
_REACTIONS_CLEAR = """
reaction_clear AS (
    UPDATE conversations_messagereaction AS r SET
        active = false, as_of = u.as_of, updated_at = now()
    FROM (
        SELECT u.page_id, u.mid, u.psid, max(u.as_of) AS as_of
        FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::timestamptz[])
            AS u(page_id, mid, psid, as_of)
        GROUP BY u.page_id, u.mid, u.psid
    ) AS u
    WHERE r.page_id = u.page_id AND r.mid = u.mid AND r.psid = u.psid AND r.as_of < u.as_of
    RETURNING 1
)"""
_REACTIONS_APPLY = """
reaction_apply AS (
    INSERT INTO conversations_messagereaction AS r (
        page_id, mid, psid, reaction, emoji, active, as_of)
    SELECT DISTINCT ON (u.page_id, u.mid, u.psid, u.reaction)
        u.page_id, u.mid, u.psid, u.reaction, u.emoji, u.active, u.as_of
    FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[], %s::text[], %s::boolean[],
                %s::timestamptz[]) AS u(page_id, mid, psid, reaction, emoji, active, as_of)
    ORDER BY u.page_id, u.mid, u.psid, u.reaction, u.as_of DESC, u.active
    ON CONFLICT (page_id, mid, psid, reaction) DO UPDATE SET
        active = EXCLUDED.active, emoji = EXCLUDED.emoji, as_of = EXCLUDED.as_of,
        updated_at = now()
    WHERE EXCLUDED.as_of > r.as_of
    RETURNING 1
)"""


@dataclass
class StatementParts:
    """CTEs to add to the statement, their parameters, the values to select, and for each of
    those the `ApplyResult` counter it adds to."""

    parts: list[str] = field(default_factory=list)
    params: list[Any] = field(default_factory=list)
    selects: list[str] = field(default_factory=list)
    counters: list[str] = field(default_factory=list)


def edit_and_reaction_parts(
    edits: Sequence[IncomingEdit], reactions: Sequence[IncomingReaction], source: str
) -> StatementParts:
    """The CTEs that log and apply `edits` and apply `reactions` (none for none)."""
    statement = StatementParts()
    parts, params = statement.parts, statement.params
    if edits:
        parts.append(_EDITS_APPLY)
        params += [
            source,
            [edit.page_pk for edit in edits],
            [edit.mid for edit in edits],
            [edit.num_edit for edit in edits],
            [edit.text for edit in edits],
            [edit.occurred_at for edit in edits],
            [edit.page_pk for edit in edits],
            [edit.psid for edit in edits],
            [edit.mid for edit in edits],
            [edit.text for edit in edits],
            [edit.num_edit for edit in edits],
            [edit.occurred_at for edit in edits],
        ]
        statement.selects += [
            "(SELECT count(*) FROM edit_log)",
            "(SELECT count(*) FROM edit_apply)",
        ]
        statement.counters += ["edits_recorded", "messages_edited"]
    named = [item for item in reactions if item.name]
    clears = [item for item in reactions if not item.name and item.action == "unreact"]
    if named:
        parts.append(_REACTIONS_APPLY)
        params += [
            [item.page_pk for item in named],
            [item.mid for item in named],
            [item.psid for item in named],
            [item.name for item in named],
            [item.emoji for item in named],
            [item.action == "react" for item in named],
            [item.occurred_at for item in named],
        ]
        statement.selects.append("(SELECT count(*) FROM reaction_apply)")
        statement.counters.append("reactions_changed")
    if clears:
        parts.append(_REACTIONS_CLEAR)
        params += [
            [item.page_pk for item in clears],
            [item.mid for item in clears],
            [item.psid for item in clears],
            [item.occurred_at for item in clears],
        ]
        statement.selects.append("(SELECT count(*) FROM reaction_clear)")
        statement.counters.append("reactions_changed")
    return statement
