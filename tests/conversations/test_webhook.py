"""The Messenger webhook: verification, signatures, storage before acknowledgement, processing."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from django.conf import settings
from django.db import connection

from conversations.models import (
    Conversation,
    InteractionEvent,
    Message,
    ReceiptStatus,
    WebhookReceipt,
)
from conversations.services import webhook_receipt_retry, webhook_receipts_retry_due
from conversations.signatures import meta_json_bytes, signature_for
from conversations.simulator.payloads import (
    delivery_event,
    message_event,
    postback_event,
    reaction_event,
    read_event,
    webhook_document,
)
from tests.conversations.conftest import PAGE_ID

T0 = 1_741_000_000_000  # 2025-03-03, epoch milliseconds
PSID = "7001002003"


def at(milliseconds: int) -> datetime:
    return datetime.fromtimestamp(milliseconds / 1000, tz=UTC)


# -- verification ------------------------------------------------------------------------------


def test_verification_echoes_the_challenge_with_the_right_token(client):
    response = client.get(
        "/webhooks/messenger/",
        {
            "hub.mode": "subscribe",
            "hub.verify_token": settings.FB_VERIFY_TOKEN,
            "hub.challenge": "1158201444",
        },
    )
    assert response.status_code == 200
    assert response.content == b"1158201444"
    assert response["Content-Type"].startswith("text/plain")


@pytest.mark.parametrize(
    "params",
    [
        {"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "1"},
        {"hub.mode": "unsubscribe", "hub.verify_token": "local-verify-token", "hub.challenge": "1"},
        {"hub.challenge": "1"},
    ],
)
def test_verification_refuses_a_wrong_token_or_mode(client, params):
    response = client.get("/webhooks/messenger/", params)
    assert response.status_code == 403
    assert b"1" not in response.content.replace(b"403", b"")


# -- signatures ---------------------------------------------------------------------------------


def test_a_validly_signed_message_is_stored_and_applied(post_webhook, page):
    document = webhook_document(
        PAGE_ID, [message_event(page_id=PAGE_ID, psid=PSID, mid="m_1", timestamp_ms=T0, text="hi")]
    )
    response = post_webhook(document)

    assert response.status_code == 200
    receipt = WebhookReceipt.objects.get()
    assert receipt.status == ReceiptStatus.PROCESSED
    assert bytes(receipt.body) == meta_json_bytes(document)
    assert receipt.attempts == 1
    conversation = Conversation.objects.get()
    assert (conversation.page_id, conversation.psid) == (page.pk, PSID)
    assert conversation.message_count == 1
    assert (conversation.last_message_mid, conversation.last_message_text) == ("m_1", "hi")
    assert conversation.last_message_at == at(T0)
    message = Message.objects.get()
    assert (message.mid, message.direction, message.source) == ("m_1", "inbound", "webhook")
    event = InteractionEvent.objects.get()
    assert (event.kind, event.message_id, event.dedupe_key) == (
        "message_received",
        message.pk,
        "message_received:m_1",
    )


def test_a_tampered_body_is_refused_and_nothing_is_stored(post_webhook, page):
    document = webhook_document(
        PAGE_ID, [message_event(page_id=PAGE_ID, psid=PSID, mid="m_1", timestamp_ms=T0, text="hi")]
    )
    body = meta_json_bytes(document)
    signature = signature_for(body, secret=settings.FB_APP_SECRET)
    tampered = body.replace(b'"hi"', b'"ho"')

    response = post_webhook(body=tampered, headers={"X-Hub-Signature-256": signature})

    assert response.status_code == 403
    assert response.json()["code"] == "invalid_signature"
    assert WebhookReceipt.objects.count() == 0
    assert Conversation.objects.count() == 0


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Hub-Signature-256": ""},
        {"X-Hub-Signature-256": "sha1=0000"},
        {"X-Hub-Signature-256": "sha256=" + "0" * 64},
    ],
)
def test_a_missing_or_wrong_signature_is_refused(post_webhook, page, headers):
    body = meta_json_bytes(webhook_document(PAGE_ID, []))
    response = post_webhook(body=body, headers=headers)
    assert response.status_code == 403
    assert WebhookReceipt.objects.count() == 0


def test_non_ascii_text_signed_over_meta_escaped_bytes_is_accepted(post_webhook, page):
    # Given Meta's bytes: non-ASCII as \u escapes and "/" as "\/"
    document = webhook_document(
        PAGE_ID,
        [
            message_event(
                page_id=PAGE_ID,
                psid=PSID,
                mid="m_é",
                timestamp_ms=T0,
                text="Café crème? https://shop.example/a/b 👍",
            )
        ],
    )
    body = meta_json_bytes(document)
    assert b"\\u00e9" in body
    assert b"\\/" in body
    assert body.isascii()
    reserialised = json.dumps(json.loads(body)).encode()
    assert signature_for(reserialised, secret="x") != signature_for(body, secret="x")

    response = post_webhook(
        body=body,
        headers={"X-Hub-Signature-256": signature_for(body, secret=settings.FB_APP_SECRET)},
    )

    assert response.status_code == 200
    message = Message.objects.get()
    assert message.text == "Café crème? https://shop.example/a/b 👍"
    assert message.mid == "m_é"
    assert bytes(WebhookReceipt.objects.get().body) == body


# -- processing rules ------------------------------------------------------------------------


def test_meta_redelivering_the_same_payload_changes_nothing(post_webhook, page):
    document = webhook_document(
        PAGE_ID,
        [
            message_event(page_id=PAGE_ID, psid=PSID, mid="m_1", timestamp_ms=T0, text="a"),
            message_event(page_id=PAGE_ID, psid=PSID, mid="m_2", timestamp_ms=T0 + 1, text="b"),
        ],
    )
    assert post_webhook(document).status_code == 200
    version_after_first = Conversation.objects.get().version

    assert post_webhook(document).status_code == 200

    conversation = Conversation.objects.get()
    assert conversation.message_count == 2
    assert conversation.version == version_after_first
    assert Message.objects.count() == 2
    assert InteractionEvent.objects.count() == 2
    assert list(WebhookReceipt.objects.values_list("status", flat=True)) == ["processed"] * 2


def test_an_older_message_after_a_newer_one_leaves_last_message_on_the_newer(post_webhook, page):
    newer = message_event(
        page_id=PAGE_ID, psid=PSID, mid="m_new", timestamp_ms=T0 + 60_000, text="newer"
    )
    older = message_event(page_id=PAGE_ID, psid=PSID, mid="m_old", timestamp_ms=T0, text="older")
    post_webhook(webhook_document(PAGE_ID, [newer]))

    post_webhook(webhook_document(PAGE_ID, [older]))

    conversation = Conversation.objects.get()
    assert conversation.last_message_mid == "m_new"
    assert conversation.last_message_text == "newer"
    assert conversation.last_message_at == at(T0 + 60_000)
    assert conversation.message_count == 2


def test_last_message_cannot_move_backwards_even_by_raw_sql(page):
    from django.db import IntegrityError, transaction

    from tests.conversations.factories import ConversationFactory

    conversation = ConversationFactory(page=page, last_message_at=at(T0 + 1000))
    with (
        pytest.raises(IntegrityError, match="may not move backwards"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(
            "UPDATE conversations_conversation SET last_message_at = %s WHERE id = %s",
            [at(T0), conversation.pk],
        )
    with (
        pytest.raises(IntegrityError, match="may not move backwards"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(
            "UPDATE conversations_conversation SET last_message_at = NULL WHERE id = %s",
            [conversation.pk],
        )
    conversation.refresh_from_db()
    assert conversation.last_message_at == at(T0 + 1000)


def test_a_mixed_batch_applies_every_kind_and_records_skips(post_webhook, page):
    other = "7009998887"
    events = [
        # read watermark arriving before the outbound message it covers
        read_event(page_id=PAGE_ID, psid=PSID, watermark_ms=T0 + 5_000),
        message_event(page_id=PAGE_ID, psid=PSID, mid="m_in", timestamp_ms=T0, text="hello"),
        message_event(
            page_id=PAGE_ID,
            psid=PSID,
            mid="m_echo",
            timestamp_ms=T0 + 2_000,
            text="hi there",
            is_echo=True,
            app_id=42,
        ),
        message_event(
            page_id=PAGE_ID,
            psid=PSID,
            mid="m_late",
            timestamp_ms=T0 + 9_000,
            text="later reply",
            is_echo=True,
        ),
        delivery_event(page_id=PAGE_ID, psid=PSID, watermark_ms=T0 + 3_000, mids=["m_echo"]),
        reaction_event(page_id=PAGE_ID, psid=PSID, mid="m_echo", timestamp_ms=T0 + 6_000),
        reaction_event(
            page_id=PAGE_ID, psid=PSID, mid="m_echo", timestamp_ms=T0 + 7_000, action="unreact"
        ),
        postback_event(page_id=PAGE_ID, psid=other, timestamp_ms=T0 + 8_000, payload="START"),
        {
            "sender": {"id": PSID},
            "recipient": {"id": PAGE_ID},
            "timestamp": T0 + 1,
            "a_kind_meta_adds_later": {"ref": "x"},
        },
        # bad participants: missing id, a number, the page itself
        {
            "sender": {},
            "recipient": {"id": PAGE_ID},
            "timestamp": T0,
            "message": {"mid": "m_bad1", "text": "x"},
        },
        {
            "sender": {"id": 7001},
            "recipient": {"id": PAGE_ID},
            "timestamp": T0,
            "message": {"mid": "m_bad2", "text": "x"},
        },
        {
            "sender": {"id": PAGE_ID},
            "recipient": {"id": PAGE_ID},
            "timestamp": T0,
            "message": {"mid": "m_bad3", "text": "x"},
        },
    ]
    standby = [
        message_event(
            page_id=PAGE_ID,
            psid=other,
            mid="m_standby",
            timestamp_ms=T0 + 4_000,
            text="via inbox app",
        ),
    ]

    response = post_webhook(webhook_document(PAGE_ID, events, standby=standby))

    assert response.status_code == 200
    receipt = WebhookReceipt.objects.get()
    assert receipt.status == ReceiptStatus.PROCESSED
    assert (receipt.event_count, receipt.unknown_event_count) == (13, 1)
    assert [(s["index"], s["reason"]) for s in receipt.skipped_events] == [
        (8, "unknown event kind"),
        (9, "participant id missing"),
        (10, "participant id is not a string"),
        (11, "participant is the page itself"),
    ]
    conversation = Conversation.objects.get(psid=PSID)
    assert conversation.message_count == 3
    assert conversation.last_message_mid == "m_late"
    assert conversation.read_watermark == at(T0 + 5_000)
    messages = {m.mid: m for m in Message.objects.all()}
    assert set(messages) == {"m_in", "m_echo", "m_late", "m_standby"}
    echo = messages["m_echo"]
    assert (echo.direction, echo.is_echo, echo.app_id) == ("outbound", True, "42")
    assert echo.read_at == at(T0 + 5_000)
    assert echo.delivered_at == at(T0 + 5_000)  # read implies delivered
    assert messages["m_late"].read_at is None
    assert messages["m_in"].read_at is None  # marks concern the page's own messages
    kinds = sorted(InteractionEvent.objects.values_list("kind", flat=True))
    assert kinds == sorted(
        [
            "message_received",
            "message_sent",
            "message_sent",
            "message_received",
            "read",
            "delivered",
            "reaction",
            "reaction",
            "postback",
        ]
    )
    reactions = InteractionEvent.objects.filter(kind="reaction").order_by("occurred_at")
    assert [r.metadata["action"] for r in reactions] == ["react", "unreact"]
    assert {r.message_id for r in reactions} == {echo.pk}
    standby_event = InteractionEvent.objects.get(message=messages["m_standby"])
    assert standby_event.kind == "message_received"
    assert Conversation.objects.get(psid=other).message_count == 1

    # A re-delivery of the whole batch adds nothing
    post_webhook(webhook_document(PAGE_ID, events, standby=standby))
    assert InteractionEvent.objects.count() == 9
    assert Message.objects.count() == 4


def test_a_malformed_event_is_quarantined_and_the_rest_of_the_payload_applied(post_webhook, page):
    document = {
        "object": "page",
        "entry": [
            {
                "id": PAGE_ID,
                "time": T0,
                "messaging": [
                    message_event(
                        page_id=PAGE_ID, psid=PSID, mid="m_ok", timestamp_ms=T0, text="fine"
                    ),
                    {
                        "sender": {"id": PSID},
                        "recipient": {"id": PAGE_ID},
                        "timestamp": "yesterday",
                        "message": {"mid": "m_2"},
                    },
                ],
            }
        ],
    }

    response = post_webhook(document)

    assert response.status_code == 200
    receipt = WebhookReceipt.objects.get()
    assert receipt.status == ReceiptStatus.QUARANTINED
    assert receipt.error == ""
    assert receipt.quarantined_events == [
        {
            "entry": 0,
            "channel": "messaging",
            "index": 1,
            "kind": "message",
            "reason": "timestamp: Input should be a valid integer",
        }
    ]
    assert list(Message.objects.values_list("mid", flat=True)) == ["m_ok"]


@pytest.mark.parametrize(
    ("document", "detail"),
    [
        ({"object": "instagram", "entry": []}, "object: Input should be 'page'"),
        ({"object": "page"}, "entry: Field required"),
        ({"object": "page", "entry": {"id": PAGE_ID}}, "entry: Input should be a valid list"),
        ([{"object": "page"}], "the body is not a JSON object"),
    ],
)
def test_only_an_envelope_that_is_not_a_page_payload_is_refused(
    post_webhook, page, document, detail
):
    response = post_webhook(document)

    assert response.status_code == 400
    assert response.json()["code"] == "invalid_payload"
    receipt = WebhookReceipt.objects.get()
    assert receipt.status == ReceiptStatus.REJECTED
    assert detail in receipt.error
    assert bytes(receipt.body) == meta_json_bytes(document)


def test_an_entry_that_fits_no_schema_is_quarantined_whole_and_the_others_applied(
    post_webhook, page
):
    good = webhook_document(
        PAGE_ID, [message_event(page_id=PAGE_ID, psid=PSID, mid="m_ok", timestamp_ms=T0)]
    )
    document = {
        "object": "page",
        "entry": [
            {"id": "not-a-page-id", "time": T0, "messaging": [{"message": {"mid": "m_x"}}]},
            good["entry"][0],
            "junk",
        ],
    }

    response = post_webhook(document)

    assert response.status_code == 200
    receipt = WebhookReceipt.objects.get()
    assert receipt.status == ReceiptStatus.QUARANTINED
    assert [(q["entry"], q["kind"], q.get("events")) for q in receipt.quarantined_events] == [
        (0, "entry", 1),
        (2, "entry", 0),
    ]
    assert "id: String should match pattern" in receipt.quarantined_events[0]["reason"]
    assert receipt.event_count == 2
    assert list(Message.objects.values_list("mid", flat=True)) == ["m_ok"]


def test_a_body_that_is_not_json_is_a_rejected_receipt(post_webhook, page):
    body = b"\xff\xfe not json"
    response = post_webhook(
        body=body,
        headers={"X-Hub-Signature-256": signature_for(body, secret=settings.FB_APP_SECRET)},
    )
    assert response.status_code == 400
    assert WebhookReceipt.objects.get().status == ReceiptStatus.REJECTED


def test_a_webhook_for_an_unknown_page_keeps_the_messages_and_flags_the_page(post_webhook, db):
    from conversations.models import FacebookPage

    post_webhook(
        webhook_document(
            "555666777", [message_event(page_id="555666777", psid=PSID, mid="m_x", timestamp_ms=T0)]
        )
    )

    page = FacebookPage.objects.get(page_id="555666777")
    assert page.is_reauthorization_required is True
    assert Message.objects.get().page_id == page.pk


# -- failures and retries ----------------------------------------------------------------------

FAIL_ON_EVENT_TRIGGER = """
CREATE FUNCTION test_fail_on_event() RETURNS trigger AS $$
BEGIN
    IF NEW.dedupe_key = 'message_received:m_3' THEN
        RAISE EXCEPTION 'injected failure';
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER test_fail_on_event BEFORE INSERT ON conversations_interactionevent
    FOR EACH ROW EXECUTE FUNCTION test_fail_on_event();
"""


def test_a_failure_mid_payload_applies_nothing_and_the_retry_applies_everything_once(
    post_webhook, page
):
    # Given a database that fails while inserting the third message's event, i.e. after the
    # conversation upsert and the message inserts of the same payload
    with connection.cursor() as cursor:
        cursor.execute(FAIL_ON_EVENT_TRIGGER)
    document = webhook_document(
        PAGE_ID,
        [
            message_event(
                page_id=PAGE_ID,
                psid=str(7001002000 + i),
                mid=f"m_{i}",
                timestamp_ms=T0 + i,
                text=str(i),
            )
            for i in range(5)
        ]
        + [read_event(page_id=PAGE_ID, psid="7001002001", watermark_ms=T0 + 10)],
    )

    response = post_webhook(document)

    # Then the payload is acknowledged (it is stored) and nothing of it is applied
    assert response.status_code == 200
    receipt = WebhookReceipt.objects.get()
    assert receipt.status == ReceiptStatus.FAILED
    assert "injected failure" in receipt.error
    assert receipt.attempts == 1
    assert receipt.next_attempt_at is not None
    assert (Conversation.objects.count(), Message.objects.count()) == (0, 0)
    assert InteractionEvent.objects.count() == 0

    # When the fault is gone and the retry runs (not before its backoff is due)
    with connection.cursor() as cursor:
        cursor.execute("DROP TRIGGER test_fail_on_event ON conversations_interactionevent")
    assert webhook_receipts_retry_due() == 0
    WebhookReceipt.objects.filter(pk=receipt.pk).update(next_attempt_at=receipt.received_at)
    assert webhook_receipts_retry_due() == 1

    # Then everything is applied exactly once
    receipt.refresh_from_db()
    assert (receipt.status, receipt.attempts, receipt.error) == ("processed", 2, "")
    assert Conversation.objects.count() == 5
    assert Message.objects.count() == 5
    assert InteractionEvent.objects.filter(kind="message_received").count() == 5
    assert InteractionEvent.objects.filter(kind="read").count() == 1
    # And retrying again (an operator's click) changes nothing
    assert webhook_receipt_retry(receipt_id=receipt.pk).status == "skipped"
    assert Message.objects.count() == 5


def test_the_retry_schedule_is_ensured_and_its_task_retries_due_receipts(post_webhook, page):
    from django_q.models import Schedule

    from conversations.tasks import webhook_receipts_retry_scheduled
    from evoflow.schedules import schedules_ensure

    schedules_ensure()
    schedule = Schedule.objects.get(name="conversations.webhook_receipts_retry")
    assert (schedule.func, schedule.schedule_type, schedule.minutes) == (
        "conversations.tasks.webhook_receipts_retry_scheduled",
        Schedule.MINUTES,
        1,
    )

    # Given a payload stored as failed whose backoff has elapsed
    with connection.cursor() as cursor:
        cursor.execute(FAIL_ON_EVENT_TRIGGER)
    document = webhook_document(
        PAGE_ID, [message_event(page_id=PAGE_ID, psid=PSID, mid="m_3", timestamp_ms=T0)]
    )
    post_webhook(document)
    with connection.cursor() as cursor:
        cursor.execute("DROP TRIGGER test_fail_on_event ON conversations_interactionevent")
    receipt = WebhookReceipt.objects.get()
    assert receipt.status == ReceiptStatus.FAILED
    WebhookReceipt.objects.update(next_attempt_at=receipt.received_at)

    # When the scheduled task runs (twice, as an at-least-once queue may deliver it)
    assert webhook_receipts_retry_scheduled() == 1
    assert webhook_receipts_retry_scheduled() == 0

    # Then the payload is applied once
    receipt.refresh_from_db()
    assert receipt.status == ReceiptStatus.PROCESSED
    assert Message.objects.count() == 1
    assert Conversation.objects.get().message_count == 1


def test_retry_backoff_doubles_and_is_capped():
    from datetime import timedelta

    from conversations.services.webhook import retry_delay

    assert [retry_delay(n) for n in (1, 2, 3, 10, 12)] == [
        timedelta(minutes=1),
        timedelta(minutes=2),
        timedelta(minutes=4),
        timedelta(minutes=360),
        timedelta(minutes=360),
    ]


def test_old_processed_and_rejected_receipts_are_pruned_and_failed_ones_kept(page):
    from datetime import timedelta

    from django.utils import timezone

    from conversations.services import webhook_receipts_prune

    def receipt(status: str, age_days: int) -> int:
        created = WebhookReceipt.objects.create(
            body=b"{}", body_sha256="z", signature_verdict="valid", status=status
        )
        WebhookReceipt.objects.filter(pk=created.pk).update(
            received_at=timezone.now() - timedelta(days=age_days)
        )
        return created.pk

    old_processed = receipt("processed", 40)
    old_rejected = receipt("rejected", 31)
    old_failed = receipt("failed", 40)
    recent = receipt("processed", 2)

    assert webhook_receipts_prune() == 2
    remaining = set(WebhookReceipt.objects.values_list("id", flat=True))
    assert remaining == {old_failed, recent}
    assert {old_processed, old_rejected}.isdisjoint(remaining)
    assert webhook_receipts_prune() == 0


def test_version_grows_on_every_change_and_not_on_a_no_op(post_webhook, page):
    first = message_event(page_id=PAGE_ID, psid=PSID, mid="m_v1", timestamp_ms=T0)
    post_webhook(webhook_document(PAGE_ID, [first]))
    conversation = Conversation.objects.get()
    after_first = conversation.version

    post_webhook(webhook_document(PAGE_ID, [first]))  # re-delivery: no change
    conversation.refresh_from_db()
    assert conversation.version == after_first

    post_webhook(
        webhook_document(
            PAGE_ID, [message_event(page_id=PAGE_ID, psid=PSID, mid="m_v2", timestamp_ms=T0 + 1)]
        )
    )
    conversation.refresh_from_db()
    assert conversation.version == after_first + 1

    # any other writer (here a plain ORM update) bumps it too, through the trigger
    Conversation.objects.filter(pk=conversation.pk).update(participant_name="Renamed")
    conversation.refresh_from_db()
    assert conversation.version == after_first + 2
