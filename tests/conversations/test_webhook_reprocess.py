"""Re-applying stored receipts after a fix: `manage.py webhook_reprocess` and the admin action.

The "bug" is a schema check that refuses one event; it is injected into the parser for the
first POST and removed for the reprocessing, as a deploy of a fix would.
"""

from __future__ import annotations

import contextlib
import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from conversations.models import (
    Conversation,
    Message,
    MessageEdit,
    ReceiptStatus,
    WebhookReceipt,
)
from conversations.schemas import PayloadInvalid
from conversations.services import webhook_payload
from conversations.simulator.payloads import edit_event, message_event, webhook_document
from tests.conversations.conftest import PAGE_ID

T0 = 1_741_000_000_000
PSID = "7001002003"


def run(*args: str) -> tuple[int, str]:
    out = StringIO()
    try:
        call_command("webhook_reprocess", *args, stdout=out, stderr=StringIO())
    except SystemExit as exit_:
        return int(exit_.code or 0), out.getvalue()
    return 0, out.getvalue()


@pytest.fixture
def quarantined_receipt(post_webhook, page, monkeypatch) -> WebhookReceipt:
    """A receipt whose edit event a (since fixed) schema bug quarantined."""
    real_parse = webhook_payload.event_parse

    def buggy_parse(raw, **kwargs):
        if isinstance(raw, dict) and "message_edit" in raw:
            raise PayloadInvalid("message_edit.num_edit: a bug refused it")
        return real_parse(raw, **kwargs)

    monkeypatch.setattr(webhook_payload, "event_parse", buggy_parse)
    response = post_webhook(
        webhook_document(
            PAGE_ID,
            [
                message_event(page_id=PAGE_ID, psid=PSID, mid="m_1", timestamp_ms=T0, text="a"),
                edit_event(
                    page_id=PAGE_ID, psid=PSID, mid="m_1", timestamp_ms=T0 + 1, text="b", num_edit=1
                ),
            ],
        )
    )
    monkeypatch.setattr(webhook_payload, "event_parse", real_parse)
    assert response.status_code == 200
    receipt = WebhookReceipt.objects.get()
    assert receipt.status == ReceiptStatus.QUARANTINED
    assert receipt.quarantined_events[0]["kind"] == "message_edit"
    assert Message.objects.get().text == "a"
    return receipt


def test_reprocessing_applies_the_quarantined_events_once_and_then_changes_nothing(
    quarantined_receipt,
):
    # When the quarantined receipts are reprocessed after the fix
    code, out = run("--status", "quarantined", "--json")

    # Then the edit is applied and the receipt is processed
    assert code == 0
    assert json.loads(out) == {
        "receipts": 1,
        "by_status": {"processed": 1},
        "messages_inserted": 0,
        "events_inserted": 0,
        "messages_edited": 1,
        "reactions_changed": 0,
        "messages_marked": 0,
        "changed": 1,
        "quarantined_events_left": 0,
    }
    quarantined_receipt.refresh_from_db()
    assert (quarantined_receipt.status, quarantined_receipt.quarantined_events) == (
        ReceiptStatus.PROCESSED,
        [],
    )
    assert Message.objects.get().text == "b"
    assert Conversation.objects.get().last_message_text == "b"
    version = Conversation.objects.get().version

    # And reprocessing it again by id changes nothing, and says so
    code, out = run("--receipt", str(quarantined_receipt.pk))
    assert code == 0
    assert "1 receipts reprocessed (1 processed); 0 changes" in out
    assert "Nothing changed" in out
    assert Conversation.objects.get().version == version
    assert MessageEdit.objects.filter(num_edit=1).count() == 1
    assert Message.objects.count() == 1


def test_a_receipt_still_not_applicable_is_counted_and_exits_1(post_webhook, page):
    response = post_webhook({"object": "instagram", "entry": []})
    assert response.status_code == 400

    code, out = run("--since", "2000-01-01T00:00:00")

    assert code == 1
    assert "1 receipts reprocessed (1 rejected)" in out
    assert WebhookReceipt.objects.get().status == ReceiptStatus.REJECTED


@pytest.mark.parametrize("args", [(), ("--since", "yesterday")], ids=["nothing-named", "bad-time"])
def test_bad_arguments_exit_2(db, args):
    with pytest.raises(SystemExit) as exit_:
        call_command("webhook_reprocess", *args, stdout=StringIO(), stderr=StringIO())
    assert exit_.value.code == 2


def test_an_unknown_status_is_refused(db):
    with pytest.raises(CommandError, match="invalid choice: 'nonsense'"):
        call_command("webhook_reprocess", "--status", "nonsense", stdout=StringIO())


def test_the_admin_action_reprocesses_the_selected_receipts(quarantined_receipt, admin_client):
    response = admin_client.post(
        "/admin/conversations/webhookreceipt/",
        {"action": "reprocess_receipts", "_selected_action": [quarantined_receipt.pk]},
        follow=True,
    )

    assert b"Reprocessed 1 receipt (1 processed)" in response.content
    assert b"1 message edited" in response.content
    assert Message.objects.get().text == "b"
    detail = admin_client.get(
        f"/admin/conversations/webhookreceipt/{quarantined_receipt.pk}/change/"
    )
    assert detail.status_code == 200
    assert b"quarantined" in detail.content.lower()


def _check(check_id: str) -> tuple[str, int]:
    out = StringIO()
    with contextlib.suppress(SystemExit):  # the exit status says warning: read the document
        call_command("integrity", "--json", "--check", check_id, stdout=out, stderr=StringIO())
    (result,) = json.loads(out.getvalue())["checks"]
    return result["status"], result["failing_count"]


def test_the_integrity_check_reports_quarantined_receipts_until_they_are_reprocessed(
    quarantined_receipt,
):
    assert _check("conversations.receipts_quarantined") == ("warning", 1)

    run("--status", "quarantined")

    assert _check("conversations.receipts_quarantined") == ("ok", 0)
