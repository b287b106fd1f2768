"""200 concurrent webhook POSTs to a live server: no duplicate conversation, message or event."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from django.conf import settings
from django.db import connection

from conversations.models import Conversation, InteractionEvent, Message
from conversations.simulator.payloads import (
    message_event,
    read_event,
    signed_body,
    webhook_document,
)
from tests.conversations.factories import FacebookPageFactory

PAGE_ID = "444555666"
T0 = 1_741_000_000_000
PSIDS = [str(7100000000 + n) for n in range(20)]
POSTS = 200


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_200_concurrent_posts_for_20_psids_apply_every_message_exactly_once(live_server):
    # Given 20 people with 15 messages each (300 distinct), every message placed in 2 or 3
    # different batches, the batches shuffled into 200 POSTs
    FacebookPageFactory(page_id=PAGE_ID)
    rng = random.Random(20250303)
    messages = [
        (psid, f"m_{psid}_{n}", T0 + n * 1_000 + index)
        for index, psid in enumerate(PSIDS)
        for n in range(15)
    ]
    # Every fifth message is the page's own reply (an echo); each person also sends two read
    # watermarks, which may arrive before or after the replies they cover.
    items = [
        message_event(
            page_id=PAGE_ID,
            psid=psid,
            mid=mid,
            timestamp_ms=ts,
            text=f"text of {mid}",
            is_echo=int(mid.rsplit("_", 1)[1]) % 5 == 4,
        )
        for psid, mid, ts in messages
    ] + [
        read_event(page_id=PAGE_ID, psid=psid, watermark_ms=T0 + at * 1_000 + index)
        for index, psid in enumerate(PSIDS)
        for at in (7, 12)
    ]
    batches: list[list[dict]] = [[] for _ in range(POSTS)]
    for item in items:
        for batch_index in rng.sample(range(POSTS), rng.choice((2, 3))):
            batches[batch_index].append(item)
    for batch in batches:
        rng.shuffle(batch)  # psids interleaved in a random order in each batch
    bodies = [
        signed_body(webhook_document(PAGE_ID, batch), secret=settings.FB_APP_SECRET)
        for batch in batches
    ]

    # When they are POSTed by 32 threads at once to a live server
    def post(item: tuple[bytes, dict[str, str]]) -> int:
        body, headers = item
        response = requests.post(
            f"{live_server.url}/webhooks/messenger/", data=body, headers=headers, timeout=60
        )
        return response.status_code

    with ThreadPoolExecutor(max_workers=32) as pool:
        statuses = list(pool.map(post, bodies))

    # Then no 5xx, exactly the conversations, messages, events and counts
    assert statuses.count(200) == POSTS
    assert Conversation.objects.count() == 20
    assert Message.objects.count() == len(messages) == 300
    assert InteractionEvent.objects.filter(kind="message_received").count() == 240
    assert InteractionEvent.objects.filter(kind="message_sent").count() == 60
    assert InteractionEvent.objects.filter(kind="read").count() == 40
    assert InteractionEvent.objects.count() == 340
    for conversation in Conversation.objects.all():
        assert conversation.message_count == 15
        assert conversation.last_message_mid == f"m_{conversation.psid}_14"
        # replies 4 and 9 were sent before the last watermark (12 s), reply 14 after it
        read = dict(
            Message.objects.filter(conversation=conversation, direction="outbound").values_list(
                "mid", "read_at"
            )
        )
        assert {mid for mid, read_at in read.items() if read_at is not None} == {
            f"m_{conversation.psid}_4",
            f"m_{conversation.psid}_9",
        }
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM conversations_webhookreceipt WHERE status = 'processed'"
        )
        assert cursor.fetchone()[0] == POSTS
