"""Payloads that pass the shapes but could never be stored, message links across conversations,
the page id cache, the API cursor and the admin's edges."""

from __future__ import annotations

import base64
import json

import pytest
from django.contrib.admin import site
from django.contrib.messages.storage.cookie import CookieStorage
from django.db import ProgrammingError, connection, transaction
from django.test import Client, RequestFactory
from django.views.debug import SafeExceptionReporterFilter

from conversations.models import (
    Conversation,
    EventKind,
    FacebookPage,
    InteractionEvent,
    Message,
    ReceiptStatus,
    WebhookReceipt,
)
from conversations.services.pages import page_pk_cache_remember
from conversations.signatures import meta_json_bytes
from conversations.simulator.payloads import (
    message_event,
    postback_event,
    reaction_event,
    webhook_document,
)
from tests.conversations.conftest import PAGE_ID
from tests.conversations.factories import ConversationFactory, FacebookPageFactory

T0 = 1_741_000_000_000
PSID = "7001002003"
OTHER_PSID = "7001002004"


def assert_rejected(response, detail_part: str) -> WebhookReceipt:
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid_payload"
    receipt = WebhookReceipt.objects.get(pk=body["receipt_id"])
    assert receipt.status == ReceiptStatus.REJECTED
    assert detail_part in receipt.error
    assert (Message.objects.count(), InteractionEvent.objects.count()) == (0, 0)
    return receipt


def assert_quarantined(response, detail_part: str, *, stored_mids: set[str]) -> WebhookReceipt:
    """One event quarantined with its reason, every other one applied, 200."""
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == ReceiptStatus.QUARANTINED
    receipt = WebhookReceipt.objects.get(pk=body["receipt_id"])
    assert receipt.status == ReceiptStatus.QUARANTINED
    assert len(receipt.quarantined_events) == 1, receipt.quarantined_events
    assert detail_part in receipt.quarantined_events[0]["reason"]
    assert set(Message.objects.values_list("mid", flat=True)) == stored_mids
    return receipt


# -- values that pass the shape but not the columns ---------------------------------------------


def _reaction_with_emoji(
    emoji: str, *, mid: str = "m_1", psid: str = PSID, action: str = "react"
) -> dict:
    return {
        "sender": {"id": psid},
        "recipient": {"id": PAGE_ID},
        "timestamp": T0,
        "reaction": {"mid": mid, "action": action, "emoji": emoji},
    }


def test_a_reaction_emoji_too_long_for_the_dedupe_key_is_quarantined_not_failed(post_webhook, page):
    # Given a valid message and a reaction whose emoji is 33 characters long, in one POST
    document = webhook_document(
        PAGE_ID,
        [
            message_event(page_id=PAGE_ID, psid=PSID, mid="m_ok", timestamp_ms=T0),
            _reaction_with_emoji("x" * 33),
        ],
    )

    # When it is posted
    response = post_webhook(document)

    # Then the reaction is quarantined, the message applied, and nothing waits for a retry
    receipt = assert_quarantined(response, "reaction.emoji", stored_mids={"m_ok"})
    assert receipt.next_attempt_at is None
    assert receipt.quarantined_events[0]["kind"] == "reaction"


def test_the_longest_allowed_reaction_fits_its_dedupe_key(post_webhook, page):
    # Given the longest mid (255), PSID (64 digits), action and emoji (32) the shapes allow
    mid, psid = "m" * 255, "7" * 64
    document = webhook_document(
        PAGE_ID, [_reaction_with_emoji("x" * 32, mid=mid, psid=psid, action="unreact")]
    )

    # When it is posted
    response = post_webhook(document)

    # Then the reaction is stored with its 384-character key
    assert response.status_code == 200
    assert response.json()["status"] == ReceiptStatus.PROCESSED
    event = InteractionEvent.objects.get()
    assert event.dedupe_key == f"reaction:{mid}:{psid}:unreact:{'x' * 32}:{T0}"
    assert len(event.dedupe_key) == 384


def test_an_integer_app_id_longer_than_its_column_is_quarantined(post_webhook, page):
    # Given echoes with a 65-digit and a 64-digit integer app id
    too_long = message_event(
        page_id=PAGE_ID, psid=PSID, mid="m_e1", timestamp_ms=T0, is_echo=True, app_id=10**64
    )
    longest = message_event(
        page_id=PAGE_ID, psid=PSID, mid="m_e2", timestamp_ms=T0, is_echo=True, app_id=10**64 - 1
    )

    # When each is posted
    quarantined = post_webhook(webhook_document(PAGE_ID, [too_long]))
    assert_quarantined(quarantined, "message.app_id", stored_mids=set())
    accepted = post_webhook(webhook_document(PAGE_ID, [longest]))

    # Then the 64-digit one is stored
    assert accepted.status_code == 200
    assert Message.objects.get().app_id == "9" * 64


@pytest.mark.parametrize(
    ("literal", "detail"),
    [
        (b"NaN", "NaN is not a number jsonb can hold"),
        (b"Infinity", "Infinity is not a number jsonb can hold"),
        (b"-Infinity", "-Infinity is not a number jsonb can hold"),
        (b"1e400", "1e400 is not a number jsonb can hold"),
    ],
)
def test_numbers_jsonb_cannot_hold_quarantine_their_event(post_webhook, page, literal, detail):
    # Given a message whose attachment payload holds a non-finite number, beside a good one
    good = message_event(page_id=PAGE_ID, psid=PSID, mid="m_good", timestamp_ms=T0)
    event = message_event(
        page_id=PAGE_ID,
        psid=PSID,
        mid="m_n",
        timestamp_ms=T0,
        attachments=[{"type": "image", "payload": {"x": 1}}],
    )
    body = meta_json_bytes(webhook_document(PAGE_ID, [event, good])).replace(
        b'{"x":1}', b'{"x":' + literal + b"}"
    )

    # When it is posted
    response = post_webhook(body=body, headers=_signed(body))

    # Then that event is quarantined and the other applied
    receipt = assert_quarantined(response, detail, stored_mids={"m_good"})
    assert receipt.quarantined_events[0]["index"] == 0


def test_a_lone_surrogate_in_an_attachment_is_quarantined(post_webhook, page):
    # Given an attachment payload with a lone \ud800 escape (no text column is involved)
    event = message_event(
        page_id=PAGE_ID,
        psid=PSID,
        mid="m_s",
        timestamp_ms=T0,
        attachments=[{"type": "image", "payload": {"x": "y"}}],
    )
    body = meta_json_bytes(webhook_document(PAGE_ID, [event])).replace(b'"y"', b'"\\ud800"')

    # When it is posted
    response = post_webhook(body=body, headers=_signed(body))

    # Then the event is quarantined, and the body kept as received
    receipt = assert_quarantined(response, "lone UTF-16 surrogate", stored_mids=set())
    assert bytes(receipt.body) == body


def test_an_attachment_nested_too_deeply_is_quarantined(post_webhook, page):
    # Given an attachment payload nested 40 levels deep
    nested: dict = {"leaf": 1}
    for _ in range(39):
        nested = {"n": nested}
    event = message_event(
        page_id=PAGE_ID,
        psid=PSID,
        mid="m_d",
        timestamp_ms=T0,
        attachments=[{"type": "image", "payload": nested}],
    )

    # When it is posted
    response = post_webhook(webhook_document(PAGE_ID, [event]))

    # Then it is quarantined
    assert_quarantined(response, "nested deeper than 32 levels", stored_mids=set())


@pytest.mark.parametrize(
    "body",
    [
        b'{"object":"page","entry":' + b"[" * 200_000 + b"]" * 200_000 + b"}",
        # Near the limit: the parser or the NUL check's walk over the document gives up
        b'{"object":"page","entry":' + b"[" * 985 + b'"\\u0000"' + b"]" * 985 + b"}",
    ],
    ids=["far-beyond-the-limit", "near-the-limit"],
)
def test_a_body_nested_too_deeply_is_a_400_with_a_rejected_receipt(post_webhook, page, body):
    # Given a signed body of deeply nested arrays

    # When it is posted
    response = post_webhook(body=body, headers=_signed(body))

    # Then it is a 400 with its receipt stored as rejected (not a 500 without a receipt)
    receipt = assert_rejected(response, "the body is nested too deeply")
    assert bytes(receipt.body) == body


def _signed(body: bytes) -> dict[str, str]:
    from django.conf import settings

    from conversations.signatures import signature_for

    return {"X-Hub-Signature-256": signature_for(body, secret=settings.FB_APP_SECRET)}


# -- message links stay within the conversation -------------------------------------------------


def test_reactions_and_postbacks_link_only_to_a_message_of_their_own_conversation(
    post_webhook, page
):
    # Given a message of PSID's conversation
    post_webhook(
        webhook_document(
            PAGE_ID, [message_event(page_id=PAGE_ID, psid=PSID, mid="m_a", timestamp_ms=T0)]
        )
    )
    message = Message.objects.get()

    # When another person reacts to it and posts back with its mid, and PSID reacts too
    response = post_webhook(
        webhook_document(
            PAGE_ID,
            [
                reaction_event(page_id=PAGE_ID, psid=OTHER_PSID, mid="m_a", timestamp_ms=T0 + 1),
                postback_event(
                    page_id=PAGE_ID, psid=OTHER_PSID, timestamp_ms=T0 + 2, payload="P", mid="m_a"
                ),
                reaction_event(page_id=PAGE_ID, psid=PSID, mid="m_a", timestamp_ms=T0 + 3),
            ],
        )
    )

    # Then only PSID's reaction is linked to the message
    assert response.status_code == 200
    links = {
        (event.conversation.psid, event.kind): event.message_id
        for event in InteractionEvent.objects.filter(
            kind__in=[EventKind.REACTION, EventKind.POSTBACK]
        ).select_related("conversation")
    }
    assert links == {
        (OTHER_PSID, EventKind.REACTION): None,
        (OTHER_PSID, EventKind.POSTBACK): None,
        (PSID, EventKind.REACTION): message.pk,
    }


# -- the page id cache --------------------------------------------------------------------------


def _post_message(mid: str, page_id: str = PAGE_ID):
    from django.conf import settings

    from conversations.simulator.payloads import signed_body

    body, headers = signed_body(
        webhook_document(
            page_id, [message_event(page_id=page_id, psid=PSID, mid=mid, timestamp_ms=T0)]
        ),
        secret=settings.FB_APP_SECRET,
    )
    extra = {"HTTP_X_HUB_SIGNATURE_256": headers["X-Hub-Signature-256"]}
    return Client().generic(
        "POST", "/webhooks/messenger/", body, content_type="application/json", **extra
    )


def _purge_page(page_id: str) -> None:
    from conversations.services import page_purge, page_remove

    page = FacebookPage.objects.get(page_id=page_id)
    page_remove(page=page)
    page_purge(page=page, confirm=page_id, reason="test", requested_by="test")


@pytest.mark.django_db(transaction=True)
def test_a_page_deleted_in_this_process_is_forgotten_by_the_cache():
    # Given a page whose primary key the webhook cached
    FacebookPageFactory(page_id=PAGE_ID)
    assert _post_message("m_1").json()["status"] == ReceiptStatus.PROCESSED

    # When the page is purged (removed, then purged: the only way a page row goes) and a
    # message for it arrives
    _purge_page(PAGE_ID)
    response = _post_message("m_2")

    # Then the message is stored under a new page row
    assert response.json()["status"] == ReceiptStatus.PROCESSED
    page = FacebookPage.objects.get()
    assert (page.page_id, page.is_reauthorization_required) == (PAGE_ID, True)
    assert list(Message.objects.values_list("mid", "page_id")) == [("m_2", page.pk)]


@pytest.mark.django_db(transaction=True)
def test_a_page_deleted_by_another_process_is_retried_once_with_fresh_ids():
    # Given a page deleted by another process, whose primary key this process still caches
    # (the delete's signal cleared only the deleting process's cache)
    stale_pk = FacebookPageFactory(page_id=PAGE_ID).pk
    assert _post_message("m_1").json()["status"] == ReceiptStatus.PROCESSED
    _purge_page(PAGE_ID)
    page_pk_cache_remember({PAGE_ID: stale_pk})

    # When a message for it arrives
    response = _post_message("m_2")

    # Then it is processed at once, under a new page row
    assert response.status_code == 200
    assert response.json()["status"] == ReceiptStatus.PROCESSED
    page = FacebookPage.objects.get()
    assert list(Message.objects.values_list("mid", "page_id")) == [("m_2", page.pk)]
    assert list(WebhookReceipt.objects.values_list("status", flat=True)) == [
        ReceiptStatus.PROCESSED,
        ReceiptStatus.PROCESSED,
    ]


@pytest.mark.django_db(transaction=True)
def test_a_page_id_cannot_change_once_created(admin_client):
    # Given a page
    page = FacebookPageFactory(page_id=PAGE_ID, name="Shop")

    # When the admin form posts another page id, and raw SQL tries the same
    response = admin_client.post(
        f"/admin/conversations/facebookpage/{page.pk}/change/",
        {"page_id": "999888777", "name": "Renamed", "sync_watermark": ""},
    )
    with (
        pytest.raises(ProgrammingError, match="Cannot update rows"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute("UPDATE conversations_facebookpage SET page_id = '999888777'")

    # Then the name changed, the page id did not
    assert response.status_code == 302
    page.refresh_from_db()
    assert (page.page_id, page.name) == (PAGE_ID, "Renamed")


# -- API cursor ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/v1/conversations/", "messages"])
def test_a_tampered_cursor_is_an_invalid_cursor_400(admin_user, api_client, page, path):
    # Given a cursor whose position is not a date-time
    conversation = ConversationFactory(page=page)
    if path == "messages":
        path = f"/api/v1/conversations/{conversation.pk}/messages/"
    api_client.force_authenticate(admin_user)
    cursor = base64.b64encode(b"o=0&r=0&p=notadate").decode()

    # When it is used
    response = api_client.get(path, {"cursor": cursor})

    # Then it is the client's error, with its own code
    assert response.status_code == 400
    assert response.json() == {"code": "invalid_cursor", "detail": "Invalid cursor."}


# -- admin ------------------------------------------------------------------------------------


def test_a_non_ascii_digit_conversation_id_in_the_admin_is_not_a_500(admin_client, page):
    # Given a conversation
    ConversationFactory(page=page)

    # When the change page of id "²" is asked for
    response = admin_client.get("/admin/conversations/conversation/%C2%B2/change/")

    # Then the admin answers as for any unknown id
    assert response.status_code == 302
    assert response["Location"] == "/admin/"


def test_a_receipt_change_page_is_read_only_and_cannot_be_posted(admin_client, db):
    # Given a processed receipt
    receipt = WebhookReceipt.objects.create(
        body=b"{}", body_sha256="x", signature_verdict="valid", status=ReceiptStatus.PROCESSED
    )
    url = f"/admin/conversations/webhookreceipt/{receipt.pk}/change/"

    # When its change page is shown, and a form is posted to it anyway
    page = admin_client.get(url)
    posted = admin_client.post(url, {"updated_at_0": "2000-01-01", "updated_at_1": "00:00:00"})

    # Then no field is an input, there is no save button, and the post changed nothing
    assert page.status_code == 200
    content = page.content.decode()
    assert 'name="updated_at' not in content
    assert 'name="_save"' not in content
    assert posted.status_code == 403
    before = receipt.updated_at
    receipt.refresh_from_db()
    assert receipt.updated_at == before


def test_the_page_admin_hides_the_new_token_from_error_reports(admin_user, db):
    # Given an add and a change request of the page admin carrying a new token
    page = FacebookPageFactory(page_id=PAGE_ID)
    model_admin = site._registry[FacebookPage]
    filtered = []
    for view, args in ((model_admin.add_view, ()), (model_admin.change_view, (str(page.pk),))):
        request = RequestFactory().post("/", {"page_id": "", "new_access_token": "EAAB-secret"})
        request.user = admin_user
        request._dont_enforce_csrf_checks = True
        request._messages = CookieStorage(request)

        # When the view handles it (an invalid form, so it renders)
        view(request, *args)

        # Then a DEBUG error page would mask the token
        filtered.append(
            SafeExceptionReporterFilter().get_post_parameters(request)["new_access_token"]
        )
    assert filtered == ["********************", "********************"]
    assert json.dumps(filtered).count("EAAB") == 0
    assert Conversation.objects.count() == 0
