"""The batch statement sets the transaction's commit mode itself: the sync's batches commit
asynchronously (no SET LOCAL round trip of their own), the webhook's durably, and a caller
cannot ask for both."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.db import connection, transaction

from conversations.models import Direction, Message, Source
from conversations.services.ingest import (
    ConversationKey,
    IncomingMessage,
    batch_apply,
    batch_prepare,
)

T0 = datetime(2025, 3, 1, tzinfo=UTC)


def _rows(page_pk: int, mid: str):
    return batch_prepare(
        conversations=[ConversationKey(page_pk, "61000001", "Ana", "t_1")],
        messages=[
            IncomingMessage(
                page_pk=page_pk,
                psid="61000001",
                mid=mid,
                direction=Direction.INBOUND,
                sent_at=T0,
                text="hello",
                text_as_of=T0,
            )
        ],
    )


def _commit_mode() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        row = cursor.fetchone()
    assert row is not None
    return str(row[0])


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("flags", "expected"),
    [({"asynchronous_commit": True}, "off"), ({"durable_commit": True}, "on")],
)
def test_the_batch_statement_sets_the_transactions_commit_mode(page, flags, expected):
    with connection.cursor() as cursor:  # the session's own value, whatever the server's
        cursor.execute(
            "SELECT set_config('synchronous_commit', %s, false)",
            ["on" if expected == "off" else "off"],
        )
    session_mode = _commit_mode()
    try:
        with transaction.atomic():
            result, _ = batch_apply(prepared=_rows(page.pk, "m_mode"), source=Source.SYNC, **flags)
            # Set for this transaction only (SET LOCAL semantics: nothing survives the commit).
            assert _commit_mode() == expected
        assert result.messages_inserted == 1
        assert Message.objects.filter(page=page, mid="m_mode").count() == 1
        assert _commit_mode() == session_mode
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET synchronous_commit")


@pytest.mark.django_db
def test_a_commit_cannot_be_both_durable_and_asynchronous(page):
    with pytest.raises(ValueError, match="durable or asynchronous"):
        batch_apply(
            prepared=_rows(page.pk, "m_both"),
            source=Source.SYNC,
            durable_commit=True,
            asynchronous_commit=True,
        )
    assert not Message.objects.filter(page=page, mid="m_both").exists()
