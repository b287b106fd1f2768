"""The conversations API, the admin pages, the integrity checks, page tokens and the demo."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from conversations.models import (
    Conversation,
    FacebookPage,
    InteractionEvent,
    Message,
    ReceiptStatus,
    SyncRun,
    WebhookReceipt,
)
from conversations.services import page_set_access_token, page_upsert
from conversations.simulator.payloads import message_event, webhook_document
from tests.conversations.conftest import PAGE_ID
from tests.conversations.factories import ConversationFactory, FacebookPageFactory, MessageFactory
from tests.core.factories import UserFactory

T0 = 1_741_000_000_000


@pytest.fixture
def reader(db):
    user = UserFactory()
    user.user_permissions.add(Permission.objects.get(codename="view_conversation"))
    return user


@pytest.fixture
def reader_client(api_client, reader):
    api_client.force_authenticate(user=reader)
    return api_client


# -- API ----------------------------------------------------------------------------------------


def test_conversations_are_listed_newest_updated_first_with_filters_and_cursor(reader_client, page):
    other_page = FacebookPageFactory(page_id="999000111")
    now = timezone.now()
    conversations = [ConversationFactory(page=page) for _ in range(3)]
    for age, conversation in zip((30, 10, 20), conversations, strict=True):
        Conversation.objects.filter(pk=conversation.pk).update(
            updated_at=now - timedelta(minutes=age)
        )
    ConversationFactory(page=other_page)
    deleted = ConversationFactory(page=page)
    Conversation.objects.filter(pk=deleted.pk).update(deleted_at=now, updated_at=now)

    response = reader_client.get("/api/v1/conversations/", {"page_id": PAGE_ID, "page_size": 2})
    assert response.status_code == 200
    first = response.json()
    assert [c["id"] for c in first["results"]] == [conversations[1].pk, conversations[2].pk]
    assert first["results"][0]["page_id"] == PAGE_ID
    second = reader_client.get(first["next"]).json()
    assert [c["id"] for c in second["results"]] == [conversations[0].pk]
    assert second["next"] is None

    since = (now - timedelta(minutes=15)).isoformat()
    recent = reader_client.get(
        "/api/v1/conversations/", {"updated_since": since, "page_id": PAGE_ID}
    ).json()
    assert [c["id"] for c in recent["results"]] == [conversations[1].pk]
    with_deleted = reader_client.get(
        "/api/v1/conversations/", {"page_id": PAGE_ID, "include_deleted": "true"}
    ).json()
    assert with_deleted["results"][0]["id"] == deleted.pk
    assert with_deleted["results"][0]["is_deleted"] is True


@pytest.mark.parametrize(
    "params",
    [
        {"updated_since": "yesterday"},
        {"page_id": "not-a-page"},
        {"page": PAGE_ID},
        {"include_deleted": "x"},
    ],
)
def test_bad_filters_are_a_400_in_the_error_format(reader_client, params):
    response = reader_client.get("/api/v1/conversations/", params)
    assert response.status_code == 400
    assert response.json()["code"] == "validation_error"


def test_messages_of_a_conversation_newest_first(reader_client, page):
    conversation = ConversationFactory(page=page)
    base = datetime(2025, 3, 1, tzinfo=UTC)
    messages = [
        MessageFactory(conversation=conversation, sent_at=base + timedelta(minutes=n))
        for n in range(3)
    ]

    response = reader_client.get(f"/api/v1/conversations/{conversation.pk}/messages/")

    assert response.status_code == 200
    body = response.json()
    assert [m["mid"] for m in body["results"]] == [m.mid for m in reversed(messages)]
    assert set(body["results"][0]) >= {"mid", "direction", "text", "attachments", "sent_at"}
    assert reader_client.get("/api/v1/conversations/999999/messages/").status_code == 404


def test_reading_conversations_needs_the_permission(api_client, authenticated_client):
    assert api_client.get("/api/v1/conversations/").status_code in (401, 403)
    response = authenticated_client.get("/api/v1/conversations/")
    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"


# -- pages and tokens --------------------------------------------------------------------------


def test_the_page_token_is_encrypted_at_rest_and_never_in_the_admin(admin_client, db):
    page = page_upsert(page_id="321321321", name="Shop", access_token="EAAB-secret-token")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT access_token_encrypted FROM conversations_facebookpage WHERE id = %s",
            [page.pk],
        )
        stored = cursor.fetchone()[0]
    assert "EAAB-secret-token" not in stored
    assert page.access_token() == "EAAB-secret-token"
    assert page.is_reauthorization_required is False

    change = admin_client.get(f"/admin/conversations/facebookpage/{page.pk}/change/")
    listing = admin_client.get("/admin/conversations/facebookpage/")
    for response in (change, listing):
        assert response.status_code == 200
        assert b"EAAB-secret-token" not in response.content
        assert stored.encode() not in response.content
    assert b"set (hidden)" in listing.content

    # The write-only field replaces the token
    response = admin_client.post(
        f"/admin/conversations/facebookpage/{page.pk}/change/",
        {"page_id": "321321321", "name": "Shop", "sync_watermark": "", "new_access_token": "new"},
    )
    assert response.status_code == 302
    page.refresh_from_db()
    assert page.access_token() == "new"


def test_the_reauthorisation_badge_shows_for_flagged_pages(admin_client, db):
    page = page_upsert(page_id="321321322", name="Flagged")
    FacebookPage.objects.filter(pk=page.pk).update(is_reauthorization_required=True)
    listing = admin_client.get("/admin/conversations/facebookpage/")
    assert b"re-authorisation required" in listing.content
    page_set_access_token(page=page, access_token="fresh")
    page.refresh_from_db()
    assert page.is_reauthorization_required is False


# -- admin ----------------------------------------------------------------------------------


def test_admin_lists_search_and_paginated_conversation_detail(admin_client, page):
    conversation = ConversationFactory(page=page, participant_name="Zelda Quux", psid="7123")
    for n in range(60):
        MessageFactory(conversation=conversation, text=f"message number {n}")
    ConversationFactory(page=page, participant_name="Other Person")

    found = admin_client.get("/admin/conversations/conversation/", {"q": "Zelda"})
    assert found.status_code == 200
    assert b"Zelda Quux" in found.content
    assert b"Other Person" not in found.content
    assert b"Zelda" in admin_client.get("/admin/conversations/conversation/", {"q": "7123"}).content
    deleted = admin_client.get("/admin/conversations/conversation/", {"deleted": "yes"})
    assert b"Zelda" not in deleted.content

    detail = admin_client.get(f"/admin/conversations/conversation/{conversation.pk}/change/")
    assert detail.status_code == 200
    assert b"Messages (60)" in detail.content
    assert b"message number 59" in detail.content
    assert b"message number 5<" not in detail.content
    older = admin_client.get(
        f"/admin/conversations/conversation/{conversation.pk}/change/", {"messages_page": 2}
    )
    assert b"message number 5<" in older.content
    for path in ("message", "interactionevent", "webhookreceipt"):
        assert admin_client.get(f"/admin/conversations/{path}/").status_code == 200


def test_the_admin_retry_action_reprocesses_failed_receipts(admin_client, page, post_webhook):
    # Given a receipt whose processing failed (its page row vanished under it)
    document = webhook_document(
        PAGE_ID, [message_event(page_id=PAGE_ID, psid="7001", mid="m_r", timestamp_ms=T0)]
    )
    from conversations.signatures import meta_json_bytes

    receipt = WebhookReceipt.objects.create(
        body=meta_json_bytes(document),
        body_sha256="x",
        signature_verdict="valid",
        status=ReceiptStatus.FAILED,
        attempts=3,
        error="OperationalError: simulated",
    )
    listing = admin_client.get("/admin/conversations/webhookreceipt/", {"status": "failed"})
    assert str(receipt.pk).encode() in listing.content

    response = admin_client.post(
        "/admin/conversations/webhookreceipt/",
        {"action": "retry_receipts", "_selected_action": [receipt.pk]},
        follow=True,
    )

    assert b"Retried: 1 processed." in response.content
    receipt.refresh_from_db()
    assert (receipt.status, receipt.attempts) == ("processed", 4)
    assert Message.objects.get().mid == "m_r"


# -- integrity ------------------------------------------------------------------------------


def run_integrity(*args: str) -> tuple[int, dict]:
    out = StringIO()
    try:
        call_command("integrity", "--json", *args, stdout=out, stderr=StringIO())
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    return code, json.loads(out.getvalue())


CHECKS = [
    "conversations.duplicate_conversations",
    "conversations.duplicate_messages",
    "conversations.message_count_mismatch",
    "conversations.messages_without_event",
    "conversations.receipts_failed_over_an_hour",
]


def _statuses(document: dict) -> dict[str, tuple[str, int]]:
    return {
        result["id"]: (result["status"], result["failing_count"]) for result in document["checks"]
    }


def test_integrity_checks_are_healthy_after_real_ingest(page, post_webhook):
    post_webhook(
        webhook_document(
            PAGE_ID,
            [
                message_event(page_id=PAGE_ID, psid="7001", mid=f"m_{n}", timestamp_ms=T0 + n)
                for n in range(5)
            ],
        )
    )
    code, document = run_integrity(*[arg for check in CHECKS for arg in ("--check", check)])
    assert code == 0
    assert _statuses(document) == dict.fromkeys(CHECKS, ("ok", 0))


def test_integrity_finds_and_repairs_counts_and_missing_events(page):
    conversation = ConversationFactory(page=page)
    message = MessageFactory(conversation=conversation)  # no event: written behind the service
    Conversation.objects.filter(pk=conversation.pk).update(message_count=7)
    old_failure = WebhookReceipt.objects.create(
        body=b"{}", body_sha256="y", signature_verdict="valid", status=ReceiptStatus.FAILED
    )
    WebhookReceipt.objects.filter(pk=old_failure.pk).update(
        received_at=timezone.now() - timedelta(hours=2)
    )

    args = [arg for check in CHECKS for arg in ("--check", check)]
    code, document = run_integrity(*args)
    assert code == 2
    assert _statuses(document) == {
        "conversations.duplicate_conversations": ("ok", 0),
        "conversations.duplicate_messages": ("ok", 0),
        "conversations.message_count_mismatch": ("error", 1),
        "conversations.messages_without_event": ("error", 1),
        "conversations.receipts_failed_over_an_hour": ("warning", 1),
    }

    code, document = run_integrity(*args, "--fix")
    conversation.refresh_from_db()
    assert conversation.message_count == 1
    event = InteractionEvent.objects.get()
    assert (event.message_id, event.kind) == (message.pk, "message_received")
    assert _statuses(document)["conversations.message_count_mismatch"] == ("ok", 0)
    assert _statuses(document)["conversations.messages_without_event"] == ("ok", 0)


def test_message_count_follows_inserts_and_deletes_on_every_path(page):
    # (Every insert path: test_message_count_paths.py; deletes are refused outside a purge.)
    import pgtrigger

    from conversations.services.purge import PURGE_LIFTS

    conversation = ConversationFactory(page=page)
    MessageFactory.create_batch(3, conversation=conversation)  # plain ORM inserts
    with pgtrigger.ignore(*PURGE_LIFTS):
        Message.objects.filter(pk=Message.objects.order_by("id").first().pk).delete()
    conversation.refresh_from_db()
    assert conversation.message_count == 2


# -- demo -----------------------------------------------------------------------------------


def test_the_demo_seeder_loads_through_the_webhook_path_and_is_idempotent(db):
    from conversations import demo
    from evoflow.demo import DemoSeedContext

    context = DemoSeedContext(password="x", is_password_printable=False)
    demo.seed(context)
    counts = (
        Conversation.objects.count(),
        Message.objects.count(),
        InteractionEvent.objects.count(),
    )
    demo.seed(context)

    assert counts[0] == demo.DEMO_CONVERSATIONS
    assert counts[1] > 50
    assert (
        Conversation.objects.count(),
        Message.objects.count(),
        InteractionEvent.objects.count(),
    ) == counts
    assert WebhookReceipt.objects.filter(status="processed").count() == demo.DEMO_CONVERSATIONS
    page = FacebookPage.objects.get(page_id="111222333")
    assert page.access_token() == "sim-page-token"
    assert "Messenger" in context.summary[0]
    # One full sync queued for the worker; the second seeding found it live.
    run = SyncRun.objects.get(page=page)
    assert (run.mode, run.status, run.trigger) == ("full", "queued", "demo")


def test_the_demo_sync_brings_the_rest_of_the_simulated_page(transactional_db, settings):
    from conversations import demo
    from conversations.services.sync import sync_run_execute
    from conversations.simulator.graph import GraphSimulator
    from evoflow.demo import DemoSeedContext

    demo.seed(DemoSeedContext(password="x", is_password_printable=False))
    run = SyncRun.objects.get()
    simulator = GraphSimulator(page_id="111222333", **demo.DEMO_SIMULATOR_OPTIONS)
    with simulator.running() as base:
        settings.GRAPH_API_BASE_URL = f"{base}/v21.0"
        settings.GRAPH_PAGE_CALLS_PER_SECOND = 1000
        run = sync_run_execute(run_id=run.pk)

    assert run.status == "succeeded", run.error
    total = demo.DEMO_SIMULATOR_OPTIONS["messages"]
    assert Conversation.objects.count() == demo.DEMO_SIMULATOR_OPTIONS["conversations"]
    assert Message.objects.count() == total
    # The webhook already had the newest conversations' messages: the sync added the rest only.
    assert run.messages_inserted == total - sum(
        simulator.generated_conversation(index).base_count
        for index in range(demo.DEMO_CONVERSATIONS)
    )
    assert (
        InteractionEvent.objects.filter(kind__in=["message_received", "message_sent"]).count()
        == total
    )
