"""Reading one page of conversations into a batch: participants (F7), every message (F8) or
only the new ones (F2), ready to be written."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import DatabaseError, connection
from django.utils import timezone

from conversations import metrics
from conversations.graph_client import (
    ConversationPage,
    GraphClient,
    GraphConversation,
    GraphError,
    GraphMessage,
    MessagePage,
)
from conversations.models import (
    Direction,
    FacebookPage,
)
from conversations.services.ingest import (
    ConversationKey,
    IncomingMessage,
    PreparedRows,
    batch_prepare,
)

logger = logging.getLogger(__name__)

PSID_MAX_LENGTH = 64
MESSAGES_PER_CALL = 100
CONVERSATIONS_PER_BATCH = 100


@dataclass
class Batch:
    """What one page of conversations turned into, ready to be written."""

    keys: list[ConversationKey] = field(default_factory=list)
    messages: list[IncomingMessage] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    newest_update: datetime | None = None
    reached_watermark: bool = False


class BatchPlanning:
    """The reading half of a run (mixed into the engine, which provides these attributes):
    a page of conversations and the messages each needs, as a `Batch`."""

    page: FacebookPage
    client: GraphClient
    batch_full: bool
    batch_chain: int | None
    batch_limit: int
    threshold: datetime | None

    def _maybe_beat(self) -> None:
        """The engine's heartbeat, between calls."""

    def _planned(self, listing: ConversationPage) -> tuple[Batch, PreparedRows]:
        batch = self._plan(listing)
        return batch, batch_prepare(conversations=batch.keys, messages=batch.messages)

    def _ahead(
        self, folder: str, after: str
    ) -> tuple[ConversationPage, tuple[Batch, PreparedRows] | Exception]:
        """The next batch, read and made ready in the prefetching thread. A failure to plan it
        (its older messages, say) travels with the listing, so that the walk still knows where
        to go on if the batch keeps failing."""
        listing = self._listing(folder, after)
        try:
            return listing, self._planned(listing)
        except (GraphError, DatabaseError) as error:
            return listing, error

    def _listing(
        self, folder: str, after: str | None, limit: int | None = None
    ) -> ConversationPage:
        # Taken before the call: every text of the answer is at least as new as this (C9).
        started = timezone.now()
        listing: ConversationPage = self.client_call(
            "conversations",
            lambda: self.client.conversations(
                folder=folder,
                after=after,
                limit=limit or self.batch_limit,
                message_limit=MESSAGES_PER_CALL,
            ),
        )
        listing._fetched_at = started
        return listing

    def client_call(self, edge: str, call: Callable[[], Any]) -> Any:
        before_waits = self.client.throttled_waits
        try:
            result = call()
        except GraphError as error:
            metrics.GRAPH_CALLS.labels(edge, error.code).inc()
            raise
        finally:
            metrics.GRAPH_THROTTLED_WAITS.inc(self.client.throttled_waits - before_waits)
        metrics.GRAPH_CALLS.labels(edge, "ok").inc()
        self._maybe_beat()
        return result

    def _plan(self, listing: ConversationPage) -> Batch:
        batch = Batch()
        fetched_at = listing._fetched_at
        threads: list[tuple[GraphConversation, str]] = []
        threshold = None if self.batch_full else self.threshold
        for conversation in listing.data:
            if threshold is not None and conversation.updated_time < threshold:
                batch.reached_watermark = True
                break
            if batch.newest_update is None or conversation.updated_time > batch.newest_update:
                batch.newest_update = conversation.updated_time
            participant = self._participant(conversation)
            if isinstance(participant, str):
                batch.skipped.append({"thread_id": conversation.id, "reason": participant})
                continue
            psid, name = participant
            batch.keys.append(
                ConversationKey(
                    page_pk=self.page.pk,
                    psid=psid,
                    participant_name=name[:255],
                    thread_id=conversation.id[:128],
                    full_sync_seen=self.batch_chain,
                )
            )
            threads.append((conversation, psid))
        stored: set[str] = set()
        counts: dict[str, int] = {}
        if not self.batch_full:  # which of the newest messages are stored already: two queries
            stored = self._stored_mids(
                [
                    message.id
                    for conversation, _ in threads
                    if conversation.messages is not None
                    for message in conversation.messages.data
                ]
            )
            counts = self._stored_counts([psid for _, psid in threads])
        for conversation, psid in threads:
            batch.messages.extend(
                self._incoming(psid, message, fetched_at)
                for message in self._messages_of(conversation, stored, counts.get(psid, 0))
            )
            if stored and conversation.messages is not None:
                # The newest messages that are stored already come with the listing anyway:
                # written too, so that a text edited since is brought up to date (C9). Older
                # edits are the full sync's.
                batch.messages.extend(
                    self._incoming(psid, message, fetched_at)
                    for message in conversation.messages.data
                    if message.id in stored
                )
        return batch

    def _messages_of(
        self, conversation: GraphConversation, stored: set[str], stored_count: int = 0
    ) -> list[GraphMessage]:
        """Every message (full), or the messages not stored yet (incremental: newest first,
        the walk over the messages edge stops at the first mid already stored, unless the
        stored messages and the new ones still fall short of the conversation's
        `message_count`: then the stored history has a gap (the webhook stored a conversation's
        newest messages before any sync read its history, or a webhook was lost) and the walk
        goes on past stored mids). `stored` holds the stored mids among the nested first
        page's; `stored_count` is how many messages of the conversation are stored."""
        page = conversation.messages
        if page is None:
            return []
        expected = conversation.message_count
        messages: list[GraphMessage] = []
        first = True
        while True:
            if self.batch_full:
                messages.extend(page.data)
            else:
                if not first:
                    stored = self._stored_mids([message.id for message in page.data])
                first = False
                for message in page.data:
                    if message.id not in stored:
                        messages.append(message)
                    elif expected is None or stored_count + len(messages) >= expected:
                        return messages
            next_after = page.next_after
            if next_after is None:
                return messages
            page = self._older_messages(conversation.id, next_after)

    def _older_messages(self, thread_id: str, after: str) -> MessagePage:
        page: MessagePage = self.client_call(
            "messages",
            lambda: self.client.messages(thread_id=thread_id, after=after, limit=MESSAGES_PER_CALL),
        )
        return page

    def _stored_mids(self, mids: Sequence[str]) -> set[str]:
        if not mids:
            return set()
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT mid FROM conversations_message WHERE page_id = %s AND mid = ANY(%s)",
                [self.page.pk, list(mids)],
            )
            return {row[0] for row in cursor.fetchall()}

    def _stored_counts(self, psids: Sequence[str]) -> dict[str, int]:
        if not psids:
            return {}
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT psid, message_count FROM conversations_conversation"
                " WHERE page_id = %s AND psid = ANY(%s)",
                [self.page.pk, list(psids)],
            )
            return dict(cursor.fetchall())

    def _participant(self, conversation: GraphConversation) -> tuple[str, str] | str:
        """The person of a thread (F7): (psid, name), or why the thread is skipped."""
        others = [p for p in conversation.participants.data if p.id != self.page.page_id]
        if not others:
            return "no participant besides the page"
        if len(others) > 1:
            return "more than one participant besides the page"
        person = others[0]
        if not person.id:
            return "participant without an id (deleted account)"
        if not person.id.isdigit() or len(person.id) > PSID_MAX_LENGTH:
            return "participant id is not a page-scoped id"
        return person.id, person.name

    def _incoming(
        self, psid: str, message: GraphMessage, fetched_at: datetime | None
    ) -> IncomingMessage:
        outbound = message.sender.id == self.page.page_id
        return IncomingMessage(
            page_pk=self.page.pk,
            psid=psid,
            mid=message.id,
            direction=Direction.OUTBOUND if outbound else Direction.INBOUND,
            sent_at=message.created_time,
            text=message.message,
            attachments=message.attachments.data if message.attachments else [],
            is_echo=outbound,
            reply_to_mid=message.reply_to.mid if message.reply_to else "",
            text_as_of=fetched_at,
        )
