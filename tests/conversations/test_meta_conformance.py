"""Conformance with Meta's Messenger webhook reference: every documented example and variant.

Each file under fixtures/meta_webhooks/ is one example of one webhook field, written after the
reference page it names (with the reference's field names; placeholders replaced by concrete
values): the payloads to post first (`before`), the payload itself (`body`), and exactly what
evoflow must then hold (`expect`): the receipt with its skipped and quarantined events, every
message, interaction event, reaction and edit version, every conversation. Each body is posted
signed and serialised as Meta does (non-ASCII and `/` escaped). A new shape is one more file.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from conversations.models import (
    Conversation,
    InteractionEvent,
    Message,
    MessageEdit,
    MessageReaction,
    WebhookReceipt,
)
from conversations.simulator.payloads import signed_body

FIXTURES = Path(__file__).parent / "fixtures" / "meta_webhooks"
FIXTURE_FILES = sorted(FIXTURES.glob("*.json"))

# Every webhook field the issue names has at least one example.
FIELDS = {
    "messages",
    "message_echoes",
    "message_deliveries",
    "message_reads",
    "message_reactions",
    "message_edits",
    "messaging_postbacks",
    "messaging_referrals",
    "messaging_optins",
    "messaging_handovers",
    "messaging_policy_enforcement",
    "messaging_account_linking",
    "standby",
    "batched",
}


def _ms(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp() * 1000)


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def test_every_field_of_the_reference_has_a_fixture():
    fields = {_load(path)["field"] for path in FIXTURE_FILES}
    assert fields == FIELDS
    attachment_types = {
        item["type"]
        for path in FIXTURE_FILES
        for message in _load(path)["expect"]["messages"]
        for item in message["attachments"]
    }
    assert attachment_types >= {
        "image",
        "audio",
        "video",
        "file",
        "reel",
        "ig_reel",
        "sticker",
        "fallback",
        "template",
        "location",
        "post",
        "ig_post",
    }


def _post(client, document: dict[str, Any]) -> tuple[Any, bytes]:
    body, headers = signed_body(document, secret=settings.FB_APP_SECRET)
    assert body.isascii()  # Meta's serialisation, escaped
    response = client.generic(
        "POST",
        "/webhooks/messenger/",
        body,
        content_type="application/json",
        HTTP_X_HUB_SIGNATURE_256=headers["X-Hub-Signature-256"],
    )
    return response, body


def _stored() -> dict[str, Any]:
    messages = [
        {
            "mid": m.mid,
            "direction": m.direction,
            "text": m.text,
            "attachments": m.attachments,
            "reply_to_mid": m.reply_to_mid,
            "is_echo": m.is_echo,
            "app_id": m.app_id,
            "sent_at_ms": _ms(m.sent_at),
            "edit_count": m.edit_count,
            "delivered_at_ms": _ms(m.delivered_at),
            "read_at_ms": _ms(m.read_at),
        }
        for m in Message.objects.order_by("mid")
    ]
    events = [
        {
            "kind": e.kind,
            "dedupe_key": e.dedupe_key,
            "message": e.message.mid if e.message else None,
            "occurred_at_ms": _ms(e.occurred_at),
            "metadata": e.metadata,
        }
        for e in InteractionEvent.objects.select_related("message").order_by("dedupe_key")
    ]
    reactions = [
        [r.mid, r.psid, r.reaction, r.active]
        for r in MessageReaction.objects.order_by("mid", "psid", "reaction")
    ]
    edits = [[e.mid, e.num_edit, e.text] for e in MessageEdit.objects.order_by("mid", "num_edit")]
    conversations = [
        {
            "psid": c.psid,
            "message_count": c.message_count,
            "last_message_mid": c.last_message_mid,
            "last_message_text": c.last_message_text,
        }
        for c in Conversation.objects.order_by("psid")
    ]
    return {
        "messages": messages,
        "events": events,
        "reactions": reactions,
        "edits": edits,
        "conversations": conversations,
    }


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=[path.stem for path in FIXTURE_FILES])
def test_a_documented_example_is_stored_or_skipped_exactly(client, page, path):
    fixture = _load(path)
    expect = fixture["expect"]
    for document in fixture["before"]:
        response, _ = _post(client, document)
        assert response.status_code == 200, response.content

    response, body = _post(client, fixture["body"])

    # Never refused for one event: 200 with the receipt's status
    assert response.status_code == 200, response.content
    assert response.json()["status"] == expect["receipt"]["status"]
    receipt = WebhookReceipt.objects.get(pk=response.json()["receipt_id"])
    assert bytes(receipt.body) == body
    assert {
        "status": receipt.status,
        "event_count": receipt.event_count,
        "unknown_event_count": receipt.unknown_event_count,
        "skipped_events": receipt.skipped_events,
        "quarantined_events": receipt.quarantined_events,
    } == expect["receipt"]
    stored = _stored()
    assert stored["messages"] == sorted(expect["messages"], key=lambda m: m["mid"])
    assert stored["events"] == sorted(expect["events"], key=lambda e: e["dedupe_key"])
    assert stored["reactions"] == sorted(expect.get("reactions", []))
    assert stored["edits"] == sorted(expect.get("edits", []))
    assert stored["conversations"] == sorted(expect["conversations"], key=lambda c: c["psid"])

    # And the same POST again (Meta re-delivers) changes nothing
    again, _ = _post(client, fixture["body"])
    assert again.status_code == 200
    assert _stored() == stored
