"""Edits and reactions (C9): forward only, in any order, from the webhook, the sync or both."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import DatabaseError, connection, transaction

from conversations.models import (
    Conversation,
    Direction,
    Message,
    MessageEdit,
    MessageReaction,
    ReceiptStatus,
    Source,
    WebhookReceipt,
)
from conversations.services import IncomingMessage, batch_apply
from conversations.simulator.payloads import (
    edit_event,
    message_event,
    named_reaction_event,
    reaction_event,
    webhook_document,
)
from tests.conversations.conftest import PAGE_ID

T0 = 1_741_000_000_000
PSID = "7001002003"


def at(milliseconds: int) -> datetime:
    return datetime.fromtimestamp(milliseconds / 1000, tz=UTC)


def post(post_webhook, *events: dict) -> None:
    response = post_webhook(webhook_document(PAGE_ID, list(events)))
    assert response.status_code == 200, response.content
    assert response.json()["status"] == ReceiptStatus.PROCESSED


def message(mid: str, ms: int, text: str) -> dict:
    return message_event(page_id=PAGE_ID, psid=PSID, mid=mid, timestamp_ms=ms, text=text)


def edit(mid: str, ms: int, text: str, num_edit: int) -> dict:
    return edit_event(
        page_id=PAGE_ID, psid=PSID, mid=mid, timestamp_ms=ms, text=text, num_edit=num_edit
    )


def history(mid: str) -> list[tuple[int | None, str, str]]:
    return list(
        MessageEdit.objects.filter(mid=mid)
        .order_by("num_edit")
        .values_list("num_edit", "text", "source")
    )


# -- edits through the webhook ------------------------------------------------------------------


def test_edits_move_the_text_forward_only_whatever_order_and_duplicates(post_webhook, page):
    # Given a message, the last of its conversation
    post(post_webhook, message("m_1", T0, "first"))
    version = Conversation.objects.get().version

    # When edit 2 arrives, then edit 1 late, then edit 2 again
    post(post_webhook, edit("m_1", T0 + 2_000, "second edit", 2))
    post(post_webhook, edit("m_1", T0 + 1_000, "first edit", 1))
    post(post_webhook, edit("m_1", T0 + 2_000, "second edit", 2))

    # Then the text is edit 2's, every version is kept once, the preview follows
    stored = Message.objects.get()
    assert (stored.text, stored.edit_count, stored.text_as_of) == ("second edit", 2, at(T0 + 2000))
    assert history("m_1") == [
        (0, "first", "webhook"),
        (1, "first edit", "webhook"),
        (2, "second edit", "webhook"),
    ]
    conversation = Conversation.objects.get()
    assert conversation.last_message_text == "second edit"
    assert conversation.version == version + 1  # the late and the duplicate edit changed nothing
    assert (conversation.message_count, conversation.last_message_mid) == (1, "m_1")
    assert conversation.last_message_at == at(T0)


def test_an_edit_of_an_older_message_bumps_the_version_but_keeps_the_preview(post_webhook, page):
    post(post_webhook, message("m_old", T0, "old"), message("m_new", T0 + 1_000, "new"))
    before = Conversation.objects.get()

    post(post_webhook, edit("m_old", T0 + 5_000, "old, edited", 1))

    after = Conversation.objects.get()
    assert Message.objects.get(mid="m_old").text == "old, edited"
    assert after.version == before.version + 1
    assert (after.last_message_mid, after.last_message_text) == ("m_new", "new")
    assert (after.message_count, after.last_message_at) == (2, before.last_message_at)


def test_an_edit_arriving_before_its_message_is_applied_when_the_message_arrives(
    post_webhook, page
):
    # Given edits 1 and 2 of a message evoflow has not received yet
    post(post_webhook, edit("m_early", T0 + 2_000, "edited twice", 2))
    post(post_webhook, edit("m_early", T0 + 1_000, "edited once", 1))
    assert not Message.objects.exists()

    # When the message arrives (and again)
    post(post_webhook, message("m_early", T0, "original"))
    post(post_webhook, message("m_early", T0, "original"))

    # Then it holds the newest edit, counted once as a message
    stored = Message.objects.get()
    assert (stored.text, stored.edit_count) == ("edited twice", 2)
    conversation = Conversation.objects.get()
    assert (conversation.message_count, conversation.last_message_text) == (1, "edited twice")
    assert history("m_early") == [
        (0, "original", "webhook"),
        (1, "edited once", "webhook"),
        (2, "edited twice", "webhook"),
    ]


def test_a_message_and_its_edit_in_one_payload_converge(post_webhook, page):
    post(post_webhook, edit("m_1", T0 + 1_000, "edited", 1), message("m_1", T0, "original"))

    assert Message.objects.get().text == "edited"
    assert Conversation.objects.get().last_message_text == "edited"


def test_the_edit_history_is_append_only(post_webhook, page):
    post(post_webhook, message("m_1", T0, "first"), edit("m_1", T0 + 1, "second", 1))

    with pytest.raises(DatabaseError, match="Cannot update rows"), transaction.atomic():
        MessageEdit.objects.filter(mid="m_1").update(text="rewritten")
    assert [text for _, text, _ in history("m_1")] == ["first", "second"]


def test_an_edit_by_another_person_does_not_touch_the_message(post_webhook, page):
    post(post_webhook, message("m_1", T0, "mine"))

    post(
        post_webhook,
        edit_event(
            page_id=PAGE_ID, psid="7009", mid="m_1", timestamp_ms=T0 + 1, text="theirs", num_edit=1
        ),
    )

    assert Message.objects.get().text == "mine"


# -- edits through the sync writer ---------------------------------------------------------------


def _sync_message(page, text: str, read_at: datetime) -> IncomingMessage:
    return IncomingMessage(
        page.pk, PSID, "m_1", Direction.INBOUND, at(T0), text=text, text_as_of=read_at
    )


def test_the_sync_replaces_a_changed_text_without_a_new_message(post_webhook, page):
    post(post_webhook, message("m_1", T0, "first"))
    before = Conversation.objects.get()

    result, _ = batch_apply(
        messages=[_sync_message(page, "edited on Facebook", at(T0 + 10_000))], source=Source.SYNC
    )

    assert (result.messages_inserted, result.messages_edited) == (0, 1)
    stored = Message.objects.get()
    assert (stored.text, stored.edit_count, stored.source) == ("edited on Facebook", 1, "webhook")
    after = Conversation.objects.get()
    assert (after.message_count, after.last_message_at) == (1, before.last_message_at)
    assert after.last_message_text == "edited on Facebook"
    assert after.version > before.version
    assert history("m_1") == [(0, "first", "webhook"), (None, "edited on Facebook", "sync")]

    # The same text read again changes nothing
    again, _ = batch_apply(
        messages=[_sync_message(page, "edited on Facebook", at(T0 + 20_000))], source=Source.SYNC
    )
    assert again.messages_edited == 0
    assert Message.objects.get().edit_count == 1


def test_a_sync_read_before_a_webhook_edit_does_not_take_the_text_back(post_webhook, page):
    # Given an edit the webhook delivered at T0 + 5 s
    post(post_webhook, message("m_1", T0, "first"), edit("m_1", T0 + 5_000, "edited", 1))

    # When a sync batch read at T0 + 4 s (before the edit) is written after it
    result, _ = batch_apply(messages=[_sync_message(page, "first", at(T0 + 4_000))], source="sync")

    # Then the edit stands
    assert result.messages_edited == 0
    assert Message.objects.get().text == "edited"


def test_a_late_webhook_edit_older_than_the_text_the_sync_read_only_counts(post_webhook, page):
    # Given the sync read edit 2's text at T0 + 10 s, not knowing its number
    post(post_webhook, message("m_1", T0, "first"))
    batch_apply(messages=[_sync_message(page, "second", at(T0 + 10_000))], source="sync")

    # When edits 1 and 2 arrive late through the webhook
    post(post_webhook, edit("m_1", T0 + 1_000, "first edit", 1))
    post(post_webhook, edit("m_1", T0 + 2_000, "second", 2))

    # Then the text stays the newest and the count is Meta's
    stored = Message.objects.get()
    assert (stored.text, stored.edit_count) == ("second", 2)


# -- reactions ---------------------------------------------------------------------------------


def react(action: str, ms: int, reaction: str = "love", psid: str = PSID) -> dict:
    return named_reaction_event(
        page_id=PAGE_ID,
        psid=psid,
        mid="m_1",
        timestamp_ms=ms,
        action=action,
        reaction=reaction,
        emoji="\u2764",
    )


def reactions_on() -> set[tuple[str, str]]:
    return set(
        MessageReaction.objects.filter(mid="m_1", active=True).values_list("psid", "reaction")
    )


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        (["react", "unreact"], set()),
        (["unreact", "react"], set()),  # the unreact is newer: delivered first, still wins
        (["react", "react", "unreact", "unreact"], set()),
        (["react", "react"], {(PSID, "love")}),
    ],
)
def test_an_unreact_removes_the_reaction_it_names_in_any_order(post_webhook, page, order, expected):
    post(post_webhook, message("m_1", T0, "hi"))
    times = {"react": T0 + 1_000, "unreact": T0 + 2_000}

    for action in order:
        post(post_webhook, react(action, times[action]))

    assert reactions_on() == expected


def test_an_unreact_leaves_the_other_reactions(post_webhook, page):
    post(post_webhook, message("m_1", T0, "hi"))
    post(
        post_webhook,
        react("react", T0 + 1, "love"),
        react("react", T0 + 2, "smile"),
        react("react", T0 + 3, "wow", psid="7009"),
    )

    post(post_webhook, react("unreact", T0 + 4, "love"))

    assert reactions_on() == {(PSID, "smile"), ("7009", "wow")}


def test_a_reaction_before_its_message_is_kept(post_webhook, page):
    post(post_webhook, react("react", T0 + 1_000))
    post(post_webhook, message("m_1", T0, "hi"))

    assert reactions_on() == {(PSID, "love")}


def test_an_unreact_without_a_name_takes_off_the_persons_older_reactions(post_webhook, page):
    post(post_webhook, message("m_1", T0, "hi"), react("react", T0 + 1, "love"))
    post(post_webhook, react("react", T0 + 1, "wow", psid="7009"))

    post(
        post_webhook,
        reaction_event(
            page_id=PAGE_ID, psid=PSID, mid="m_1", timestamp_ms=T0 + 5, action="unreact"
        ),
    )

    assert reactions_on() == {("7009", "wow")}


def test_reprocessing_an_applied_receipt_with_edits_changes_nothing(post_webhook, page):
    from conversations.services.webhook_reprocess import webhook_receipts_reprocess

    post(post_webhook, message("m_1", T0, "a"), edit("m_1", T0 + 1, "b", 1), react("react", T0))
    with connection.cursor() as cursor:
        cursor.execute("SELECT version FROM conversations_conversation")
        version = cursor.fetchone()[0]

    summary = webhook_receipts_reprocess(since=datetime.now(tz=UTC) - timedelta(hours=1))

    assert (summary.receipts, summary.changed) == (1, 0)
    assert summary.by_status == {ReceiptStatus.PROCESSED: 1}
    assert Conversation.objects.get().version == version
    assert WebhookReceipt.objects.get().attempts == 2


def test_the_sync_does_not_rewrite_a_message_stored_in_another_conversation(post_webhook, page):
    post(post_webhook, message("m_1", T0, "mine"))

    result, _ = batch_apply(
        messages=[
            IncomingMessage(
                page.pk,
                "7009",
                "m_1",
                Direction.INBOUND,
                at(T0),
                text="theirs",
                text_as_of=at(T0 + 10_000),
            )
        ],
        source=Source.SYNC,
    )

    assert (result.messages_inserted, result.messages_edited) == (0, 0)
    assert Message.objects.get().text == "mine"
