"""C8 "never removed": PostgreSQL refuses every DELETE of conversations and messages, a page is
removed softly (admin), and data leaves only through the audited purge command."""

from __future__ import annotations

from io import StringIO

import pgtrigger
import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction

from conversations.models import (
    Conversation,
    FacebookPage,
    InteractionEvent,
    Message,
    PurgeRecord,
    SyncRun,
)
from conversations.services import page_remove, page_restore, page_upsert
from conversations.services.purge import PURGE_LIFTS
from conversations.services.sync import PageRemoved, sync_pages_scheduled, sync_request
from tests.conversations.factories import ConversationFactory, FacebookPageFactory, MessageFactory
from tests.core.factories import UserFactory

pytestmark = pytest.mark.django_db


def _counts(page: FacebookPage) -> tuple[int, int, int]:
    return (
        Conversation.objects.filter(page=page).count(),
        Message.objects.filter(page=page).count(),
        InteractionEvent.objects.filter(page=page).count(),
    )


def _event(message: Message) -> InteractionEvent:
    return InteractionEvent.objects.create(
        page=message.page,
        conversation=message.conversation,
        message=message,
        kind="message_received",
        occurred_at=message.sent_at,
        dedupe_key=f"message_received:{message.mid}",
        source="sync",
    )


@pytest.fixture
def stocked_page() -> FacebookPage:
    """A page with a token, two conversations of three messages each (with their events) and a
    finished sync run."""
    page = page_upsert(page_id="700700700", name="Shop", access_token="token-1")
    for psid in ("7000000011", "7000000012"):
        conversation = ConversationFactory(page=page, psid=psid)
        for message in MessageFactory.create_batch(3, conversation=conversation):
            _event(message)
    SyncRun.objects.create(page=page, mode="full", status="succeeded")
    return page


def _refused(statement) -> str:
    with pytest.raises(DatabaseError) as refusal, transaction.atomic():
        statement()
    return str(refusal.value)


# -- the database refuses -------------------------------------------------------------------


def test_every_delete_path_of_conversations_and_messages_is_refused(stocked_page):
    before = _counts(stocked_page)
    message = Message.objects.filter(page=stocked_page).first()
    conversation = Conversation.objects.filter(page=stocked_page).first()

    def raw(sql: str, *params):
        def run():
            with connection.cursor() as cursor:
                cursor.execute(sql, list(params))

        return run

    refusals = [
        _refused(message.delete),
        _refused(Message.objects.filter(page=stocked_page).delete),
        _refused(conversation.delete),  # cascades to its messages first
        _refused(FacebookPage.objects.filter(pk=stocked_page.pk).delete),  # the admin's old way
        _refused(raw("DELETE FROM conversations_message WHERE id = %s", message.pk)),
        _refused(raw("DELETE FROM conversations_conversation WHERE page_id = %s", stocked_page.pk)),
    ]

    assert all("Cannot delete rows from" in refusal for refusal in refusals), refusals
    assert _counts(stocked_page) == before
    assert FacebookPage.objects.filter(pk=stocked_page.pk).exists()


def test_truncate_of_conversations_messages_and_the_purge_audit_is_refused(stocked_page):
    # TRUNCATE fires no row trigger: without a statement-level guard it would skip C8 entirely
    before = _counts(stocked_page)

    def raw(sql: str):
        def run():
            with connection.cursor() as cursor:
                # The fixture's foreign-key checks still pending would refuse it first.
                cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
                cursor.execute(sql)

        return run

    refusals = [
        _refused(raw("TRUNCATE conversations_message CASCADE")),
        _refused(raw("TRUNCATE conversations_conversation CASCADE")),
        _refused(raw("TRUNCATE conversations_facebookpage CASCADE")),
        _refused(raw("TRUNCATE conversations_purgerecord")),
    ]

    assert all("Cannot truncate" in refusal for refusal in refusals), refusals
    assert _counts(stocked_page) == before


def test_the_delete_path_of_message_count_holds_where_the_purge_lifts_the_guard(stocked_page):
    conversation = Conversation.objects.filter(page=stocked_page).first()
    oldest = Message.objects.filter(conversation=conversation).order_by("sent_at").first()

    with transaction.atomic(), pgtrigger.ignore(*PURGE_LIFTS):
        InteractionEvent.objects.filter(message=oldest).delete()
        Message.objects.filter(pk=oldest.pk).delete()

    conversation.refresh_from_db()
    stored = Message.objects.filter(conversation=conversation).count()
    assert conversation.message_count == 2 == stored
    # ...and the guard is back once that block is over
    assert "Cannot delete" in _refused(Message.objects.filter(conversation=conversation).delete)


# -- removing a page (soft) --------------------------------------------------------------------


def test_removing_a_page_keeps_its_data_and_stops_its_syncs(stocked_page):
    live, _ = sync_request(page=stocked_page, mode="incremental", enqueue=False)
    before = _counts(stocked_page)

    assert page_remove(page=stocked_page) is True
    assert page_remove(page=stocked_page) is False

    stocked_page.refresh_from_db()
    live.refresh_from_db()
    assert stocked_page.removed_at is not None
    assert not stocked_page.has_access_token
    assert (live.status, live.error_code) == ("cancelled", "page_removed")
    assert _counts(stocked_page) == before
    with pytest.raises(PageRemoved) as refused:
        sync_request(page=stocked_page, mode="full", enqueue=False)
    assert refused.value.code == "page_removed"
    # ...even with a token set again while removed; the schedule passes it by
    stocked_page.set_access_token("token-2")
    stocked_page.save(update_fields=["access_token_encrypted"])
    assert sync_pages_scheduled(trigger="schedule") == 0

    assert page_restore(page=stocked_page) is True
    stocked_page.refresh_from_db()
    assert sync_request(page=stocked_page, mode="full", enqueue=False)[1] is True


def test_the_admin_removes_and_restores_pages_and_never_deletes_one(client, stocked_page):
    operator = UserFactory(is_staff=True, is_superuser=True)
    client.force_login(operator)
    changelist = "/admin/conversations/facebookpage/"

    delete_page = client.get(f"{changelist}{stocked_page.pk}/delete/")
    asked = client.post(
        changelist, {"action": "remove_pages", "_selected_action": [stocked_page.pk]}
    )
    stocked_page.refresh_from_db()
    removed_before_confirming = stocked_page.removed_at
    removed = client.post(
        changelist,
        {"action": "remove_pages", "_selected_action": [stocked_page.pk], "confirm": "yes"},
        follow=True,
    )
    listed = client.get(changelist, {"removed": "yes"})
    restored = client.post(
        changelist,
        {"action": "restore_pages", "_selected_action": [stocked_page.pk], "confirm": "yes"},
        follow=True,
    )

    assert delete_page.status_code == 403
    assert asked.status_code == 200
    assert "Remove these pages?" in asked.content.decode()
    assert removed_before_confirming is None
    assert b"delete_selected" not in client.get(changelist).content
    assert removed.status_code == 200
    assert "every conversation is kept" in removed.content.decode()
    assert stocked_page.page_id in listed.content.decode()
    assert "restored" in restored.content.decode()
    stocked_page.refresh_from_db()
    assert stocked_page.removed_at is None
    assert _counts(stocked_page) == (2, 6, 6)


# -- the purge command ---------------------------------------------------------------------------


def _purge(*args: str) -> str:
    out = StringIO()
    call_command("conversations_purge", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_the_purge_shows_what_it_would_delete_and_deletes_nothing_unconfirmed(stocked_page):
    before = _counts(stocked_page)

    shown = _purge("--page", stocked_page.page_id)

    assert "Would delete page 700700700 (not removed yet): 2 conversation(s), 6 message(s)" in shown
    assert "Nothing deleted" in shown
    assert _counts(stocked_page) == before
    assert not PurgeRecord.objects.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--confirm", "700700701", "--reason", "r"], "must repeat '700700700'"),
        (["--confirm", "700700700"], "needs a reason"),
        (["--confirm", "700700700", "--reason", "closed"], "is not removed"),
    ],
)
def test_the_purge_refuses_without_its_confirmation_reason_or_removal(stocked_page, args, message):
    before = _counts(stocked_page)

    with pytest.raises(CommandError, match=message):
        _purge("--page", stocked_page.page_id, *args)

    assert _counts(stocked_page) == before
    assert not PurgeRecord.objects.exists()


def test_the_purge_of_a_removed_page_deletes_it_all_and_records_it(stocked_page):
    other = FacebookPageFactory(page_id="700700799")
    kept = MessageFactory(conversation=ConversationFactory(page=other))
    page_remove(page=stocked_page)

    done = _purge(
        *("--page", stocked_page.page_id, "--confirm", stocked_page.page_id),
        *("--reason", "contract ended", "--requested-by", "ops-a"),
    )

    assert "Deleted page 700700700: 2 conversation(s), 6 message(s), 6 interaction event(s)" in done
    assert not FacebookPage.objects.filter(page_id="700700700").exists()
    assert not SyncRun.objects.filter(page_id=stocked_page.pk).exists()
    assert Message.objects.filter(page_id=stocked_page.pk).count() == 0
    assert list(Message.objects.values_list("pk", flat=True)) == [kept.pk]
    record = PurgeRecord.objects.get()
    assert (record.scope, record.page_id, record.psid) == ("page", "700700700", "")
    assert (record.conversations, record.messages, record.events, record.sync_runs) == (2, 6, 6, 1)
    assert (record.reason, record.requested_by) == ("contract ended", "ops-a")
    # The record is append-only
    assert "Cannot update or delete" in _refused(
        lambda: PurgeRecord.objects.filter(pk=record.pk).update(reason="edited")
    )
    assert "Cannot update or delete" in _refused(PurgeRecord.objects.all().delete)


def test_the_purge_of_one_conversation_leaves_the_rest_of_the_page(stocked_page):
    gone = Conversation.objects.get(page=stocked_page, psid="7000000011")

    with pytest.raises(CommandError, match="must repeat '7000000011'"):
        _purge("--page", stocked_page.page_id, "--psid", "7000000011", "--confirm", "x")
    done = _purge(
        *("--page", stocked_page.page_id, "--psid", "7000000011", "--confirm", "7000000011"),
        *("--reason", "erasure request 17", "--requested-by", "ops-b"),
    )

    assert f"Deleted conversation {gone.pk} (7000000011) of page 700700700" in done
    assert not Conversation.objects.filter(pk=gone.pk).exists()
    assert _counts(stocked_page) == (1, 3, 3)
    record = PurgeRecord.objects.get()
    assert (record.scope, record.psid, record.messages, record.events) == (
        "conversation",
        "7000000011",
        3,
        3,
    )


def test_the_purge_record_admin_lists_records_and_offers_no_change(client, stocked_page):
    page_remove(page=stocked_page)
    _purge(
        *("--page", stocked_page.page_id, "--confirm", stocked_page.page_id),
        *("--reason", "closed", "--requested-by", "ops-c"),
    )
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    record = PurgeRecord.objects.get()

    listed = client.get("/admin/conversations/purgerecord/")
    change = client.post(f"/admin/conversations/purgerecord/{record.pk}/change/", {"reason": "x"})

    assert listed.status_code == 200
    assert "ops-c" in listed.content.decode()
    assert change.status_code == 403
    record.refresh_from_db()
    assert record.reason == "closed"


# -- the triggers C8 (and the rest of the app) rest on ---------------------------------------


def test_every_required_trigger_is_installed_and_enabled_and_a_disabled_one_is_named():
    from django.apps import apps

    from evoflow.integrity.required_sql import required_sql
    from evoflow.sqlfiles import triggers_missing

    (conversations,) = [item for item in required_sql() if item.app_label == "conversations"]
    assert "conversations.Message:message_protect_delete" in conversations.triggers
    listing = "\n".join(
        f"-- trigger: {apps.get_model(model)._meta.db_table}.{name}"
        for model, name in (uri.split(":") for uri in conversations.triggers)
    )
    assert triggers_missing(connection, listing) == []

    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT tgname FROM pg_trigger WHERE tgname LIKE 'pgtrigger\\_message\\_protect%%'"
            )
            (installed,) = cursor.fetchone()
            cursor.execute(f'ALTER TABLE conversations_message DISABLE TRIGGER "{installed}"')
        assert triggers_missing(connection, listing) == [
            "conversations_message.message_protect_delete: disabled"
        ]
        transaction.set_rollback(True)


def test_the_sync_api_answers_409_page_removed_for_a_removed_page(api_client, stocked_page):
    from django.contrib.auth.models import Permission

    syncer = UserFactory()
    syncer.user_permissions.add(Permission.objects.get(codename="add_syncrun"))
    api_client.force_authenticate(user=syncer)
    page_remove(page=stocked_page)
    runs_before = SyncRun.objects.count()

    response = api_client.post(
        f"/api/v1/pages/{stocked_page.page_id}/sync/", {"mode": "full"}, format="json"
    )

    assert response.status_code == 409
    assert response.json()["code"] == "page_removed"
    assert SyncRun.objects.count() == runs_before
