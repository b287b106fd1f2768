"""Messages and events name their conversation's page: one composite key holds it."""

from __future__ import annotations

import pgtrigger
import pytest
from django.db import IntegrityError, connection, transaction

from tests.conversations.factories import ConversationFactory, FacebookPageFactory, MessageFactory


@pytest.mark.parametrize("table", ["message", "interactionevent"])
def test_a_row_naming_another_page_than_its_conversations_is_refused(db, table):
    message = MessageFactory()
    other_page = FacebookPageFactory(page_id="999000111")
    statement = {
        "message": (
            "INSERT INTO conversations_message (page_id, conversation_id, mid, direction,"
            " sent_at, source) VALUES (%s, %s, 'm_elsewhere', 'inbound', now(), 'sync')"
        ),
        "interactionevent": (
            "INSERT INTO conversations_interactionevent (page_id, conversation_id, kind,"
            " occurred_at, dedupe_key, source) VALUES (%s, %s, 'reaction', now(), 'k', 'sync')"
        ),
    }[table]
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        with pytest.raises(IntegrityError), transaction.atomic():
            cursor.execute(statement, [other_page.pk, message.conversation_id])


def test_a_conversation_with_messages_cannot_be_deleted_behind_django(db):
    conversation = ConversationFactory()
    MessageFactory(conversation=conversation, page=conversation.page)
    delete = "DELETE FROM conversations_conversation WHERE id = %s"
    # The delete guard (C8) refuses first; with it lifted, as only the purge does, the
    # composite key still refuses to orphan the messages.
    from conversations.services.purge import PURGE_LIFTS

    with connection.cursor() as cursor, pgtrigger.ignore(*PURGE_LIFTS):
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        with pytest.raises(IntegrityError), transaction.atomic():
            cursor.execute(delete, [conversation.pk])
