"""C4 and C8 on every write path: `message_count` follows the stored messages whichever way they
are written (the ORM, `bulk_create`, raw SQL, the webhook, the sync), and a soft-deleted
conversation comes back to life when a newer message arrives."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection

from conversations.models import Conversation, Direction, Message, Source
from conversations.simulator.graph import GraphSimulator
from conversations.simulator.payloads import message_event, webhook_document
from tests.conversations.conftest import PAGE_ID
from tests.conversations.factories import ConversationFactory, MessageFactory
from tests.conversations.sync_helpers import (
    assert_equal_to_truth,
    sim_page,
    simulator_serving,
    sync_now,
)

T0 = datetime(2025, 3, 1, tzinfo=UTC)


def _stored_counts(page_pk: int) -> dict[int, tuple[int, int]]:
    """(message_count, stored messages) of every conversation of the page."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.id, c.message_count, count(m.id) FROM conversations_conversation AS c"
            " LEFT JOIN conversations_message AS m ON m.conversation_id = c.id"
            " WHERE c.page_id = %s GROUP BY c.id",
            [page_pk],
        )
        return {row[0]: (row[1], row[2]) for row in cursor.fetchall()}


def _assert_counts_exact(page_pk: int) -> None:
    counts = _stored_counts(page_pk)
    assert counts
    assert {pk: pair for pk, pair in counts.items() if pair[0] != pair[1]} == {}


@pytest.mark.django_db
def test_message_count_follows_orm_bulk_and_raw_sql_inserts(page):
    # Given a conversation with two messages written by plain ORM saves
    conversation = ConversationFactory(page=page)
    MessageFactory.create_batch(2, conversation=conversation)

    # When three more come through bulk_create (no save(), no signal)
    Message.objects.bulk_create(
        [
            Message(
                page=page,
                conversation=conversation,
                mid=f"m_bulk{n}",
                direction=Direction.INBOUND,
                sent_at=T0 + timedelta(days=1, minutes=n),
                source=Source.SYNC,
            )
            for n in range(3)
        ]
    )
    # ...and two through one raw multi-row INSERT, one of whose rows is already stored
    # (ON CONFLICT DO NOTHING: only the row really inserted may count)
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO conversations_message"
            " (page_id, conversation_id, mid, direction, sent_at, source)"
            " VALUES (%s, %s, 'm_raw0', 'inbound', %s, 'sync'),"
            "        (%s, %s, 'm_bulk0', 'inbound', %s, 'sync')"
            " ON CONFLICT (page_id, mid) DO NOTHING",
            [page.pk, conversation.pk, T0 + timedelta(days=2)] * 2,
        )
        assert cursor.rowcount == 1

    # Then the count is exactly the stored messages, and the newest one is the last message
    conversation.refresh_from_db()
    stored = Message.objects.filter(conversation=conversation).count()
    assert conversation.message_count == 6 == stored
    assert (conversation.last_message_mid, conversation.last_message_at) == (
        "m_raw0",
        T0 + timedelta(days=2),
    )


@pytest.mark.django_db
def test_message_count_follows_the_webhook_path_and_a_redelivery_adds_nothing(page, post_webhook):
    events = [
        message_event(
            page_id=PAGE_ID,
            psid="7000000001",
            mid=f"m_hook{n}",
            timestamp_ms=int(T0.timestamp() * 1000) + n,
            text=f"hello {n}",
        )
        for n in range(4)
    ]
    document = webhook_document(PAGE_ID, events)

    assert post_webhook(document).status_code == 200
    assert post_webhook(document).status_code == 200  # Meta delivers again

    conversation = Conversation.objects.get(page=page, psid="7000000001")
    assert conversation.message_count == 4
    _assert_counts_exact(page.pk)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_message_count_follows_the_sync_path_with_overlapping_runs(settings):
    settings.GRAPH_PAGE_CALLS_PER_SECOND = 1000
    settings.GRAPH_APP_CALLS_PER_SECOND = 1000
    # Given a simulated page synced in full
    sim = GraphSimulator(conversations=40, messages=400, seed=41)
    with simulator_serving(sim, settings):
        page = sim_page(sim)
        assert sync_now(page, "full").status == "succeeded"
        _assert_counts_exact(page.pk)

        # When new messages arrive on Facebook and an incremental run (which re-reads the
        # overlap) and then a second full run read them, each mid being sent again
        threads = [sim.generated_conversation(index).key for index in (0, 17, 39)]
        for thread in threads:
            for _ in range(2):
                sim.page().message_add(thread_id=thread, text="new on Facebook")
        incremental = sync_now(page, "incremental")
        again = sync_now(page, "full")

    # Then each new message was counted once, and every count equals the stored messages
    assert incremental.status == again.status == "succeeded"
    assert incremental.messages_inserted == 6
    assert again.messages_inserted == 0
    _assert_counts_exact(page.pk)
    assert_equal_to_truth(page, sim)


@pytest.mark.django_db
def test_a_newer_message_revives_a_soft_deleted_conversation_and_an_older_one_does_not(
    page, post_webhook
):
    # Given a conversation marked deleted on Facebook a day after its last message
    conversation = ConversationFactory(page=page, psid="7000000002")
    MessageFactory(conversation=conversation, mid="m_before", sent_at=T0)
    deleted_at = T0 + timedelta(days=1)
    Conversation.objects.filter(pk=conversation.pk).update(deleted_at=deleted_at)

    # When history older than the deletion arrives (a late sync page)
    MessageFactory(conversation=conversation, mid="m_history", sent_at=T0 - timedelta(hours=1))

    # Then it stays deleted
    conversation.refresh_from_db()
    assert conversation.deleted_at == deleted_at
    assert conversation.message_count == 2

    # When the person writes again, after the deletion, through the webhook
    newer = T0 + timedelta(days=2)
    document = webhook_document(
        PAGE_ID,
        [
            message_event(
                page_id=PAGE_ID,
                psid="7000000002",
                mid="m_after",
                timestamp_ms=int(newer.timestamp() * 1000),
                text="I am back",
            )
        ],
    )
    assert post_webhook(document).status_code == 200

    # Then the same row is live again, with the new message as its last one
    conversation.refresh_from_db()
    assert conversation.deleted_at is None
    assert Conversation.objects.filter(page=page, psid="7000000002").count() == 1
    assert (conversation.message_count, conversation.last_message_mid) == (3, "m_after")
    assert conversation.last_message_text == "I am back"
