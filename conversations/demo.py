"""Demo data: the simulated page with a few conversations, loaded the way Meta would send them.

The messages come from the Graph simulator's deterministic world (the same seed `make run`
starts it with), turned into Meta-shaped webhook payloads and applied through the webhook
processing service, so the demo exercises the real ingest path. Idempotent: each payload's
bytes are deterministic, and a payload already received (same SHA-256) is not stored again.
"""

from __future__ import annotations

import hashlib
from typing import Any

from conversations.models import FacebookPage, SignatureVerdict, SyncMode, WebhookReceipt
from conversations.services import page_upsert, webhook_receive
from conversations.services.sync import sync_request
from conversations.signatures import meta_json_bytes
from conversations.simulator.graph import DEFAULT_ACCESS_TOKEN, DEFAULT_PAGE_ID, GraphSimulator
from conversations.simulator.payloads import (
    message_event,
    reaction_event,
    read_event,
    webhook_document,
)
from evoflow.demo import DemoSeedContext

# Must match the `graph` process of `make run` (devtools/devstack.py).
DEMO_SIMULATOR_OPTIONS: dict[str, Any] = {"conversations": 40, "messages": 400, "seed": 1}
DEMO_CONVERSATIONS = 12  # the newest ones arrive by webhook; the sync brings the rest


def demo_payloads() -> list[dict[str, Any]]:
    """One payload per demo conversation: its messages, a read mark and a reaction."""
    simulator = GraphSimulator(page_id=DEFAULT_PAGE_ID, **DEMO_SIMULATOR_OPTIONS)
    documents = []
    for index in range(DEMO_CONVERSATIONS):
        conversation = simulator.generated_conversation(index)
        messages = [
            simulator.generated_message(conversation, position)
            for position in range(conversation.base_count)
        ]
        events = [
            message_event(
                page_id=DEFAULT_PAGE_ID,
                psid=conversation.psid,
                mid=message.mid,
                timestamp_ms=int(message.created * 1000),
                text=message.text,
                attachments=[
                    {"type": "image", "payload": {"url": item["image_data"]["url"]}}
                    for item in message.attachments
                ],
                reply_to_mid=message.reply_to,
                is_echo=message.from_page,
            )
            for message in messages
        ]
        if len(messages) >= 2:
            events.append(
                read_event(
                    page_id=DEFAULT_PAGE_ID,
                    psid=conversation.psid,
                    watermark_ms=int(messages[-2].created * 1000),
                )
            )
            events.append(
                reaction_event(
                    page_id=DEFAULT_PAGE_ID,
                    psid=conversation.psid,
                    mid=messages[-2].mid,
                    timestamp_ms=int(messages[-1].created * 1000) - 1,
                )
            )
        documents.append(webhook_document(DEFAULT_PAGE_ID, events))
    return documents


def seed(context: DemoSeedContext) -> None:
    page = FacebookPage.objects.filter(page_id=DEFAULT_PAGE_ID).first()
    if page is None or not page.has_access_token:
        # The simulator's token, so the Graph sync can reach the simulated page.
        page_upsert(
            page_id=DEFAULT_PAGE_ID, name="Simulated Shop", access_token=DEFAULT_ACCESS_TOKEN
        )
    applied = 0
    for document in demo_payloads():
        body = meta_json_bytes(document)
        if WebhookReceipt.objects.filter(body_sha256=hashlib.sha256(body).hexdigest()).exists():
            continue
        webhook_receive(body=body, signature_verdict=SignatureVerdict.INTERNAL)
        applied += 1
    page = FacebookPage.objects.get(page_id=DEFAULT_PAGE_ID)
    # The worker brings the rest of the page from the Graph simulator (a full sync once; an
    # incremental one when the page has synced before).
    mode = SyncMode.INCREMENTAL if page.sync_watermark else SyncMode.FULL
    run, created = sync_request(page=page, mode=mode, trigger="demo")
    context.summary.append(
        f"Messenger: page {page.page_id} ({page.name}), {page.conversations.count()} "
        f"conversations from the Graph simulator's webhooks ({applied} payloads applied now);"
        f" {mode} sync run {run.pk} {'queued' if created else 'already ' + run.status}"
    )
