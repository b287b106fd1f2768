"""Hypothesis: 500+ random or malformed payloads, validly signed: never a 500, never half-applied.

Each generated payload mixes well-formed events with random junk at every level (the envelope,
entries, events, fields of the wrong type, huge or out-of-range numbers, NUL characters). For
each one the test checks the outcome against the receipt: a 400 (only for an envelope that is no
page payload) leaves a `rejected` receipt and no data; a 200 leaves a `processed` receipt, or a
`quarantined` one naming each entry or event that fit no schema with its reason, and the
messages of every other usable message event.
"""

from __future__ import annotations

import json

import pytest
from django.conf import settings
from django.db import connection
from hypothesis import HealthCheck, given
from hypothesis import event as hypothesis_event
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from conversations.models import Message, WebhookReceipt
from conversations.services.pages import page_pk_cache_clear
from conversations.signatures import signature_for

PAGE_ID = "123123123"
T0 = 1_741_000_000_000

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(["", "\x00", "m_1", PAGE_ID, "7001", "react", "page"]),
)
junk = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


def mostly(valid):
    """Junk one time in 25: enough fully valid payloads to apply something."""
    return st.integers(0, 24).flatmap(lambda n: junk if n == 0 else valid)


psids = mostly(st.sampled_from(["7001", "7002", "7003"]))
timestamps = mostly(st.integers(min_value=T0, max_value=T0 + 10**6))
mids = mostly(st.sampled_from(["m_1", "m_2", "m_3", "m_4"]))


@st.composite
def events(draw):
    kind = draw(
        st.sampled_from(
            [
                "message",
                "message",
                "echo",
                "delivery",
                "read",
                "reaction",
                "postback",
                "junk",
                "unknown",
            ]
        )
    )
    if kind == "junk" and draw(st.integers(0, 3)) == 0:
        return draw(junk)
    psid = draw(psids)
    event = {"sender": {"id": psid}, "recipient": {"id": PAGE_ID}, "timestamp": draw(timestamps)}
    if kind in ("message", "echo"):
        message = {"mid": draw(mids), "text": draw(mostly(st.text(max_size=30)))}
        if kind == "echo":
            message["is_echo"] = draw(mostly(st.just(True)))
            event["sender"], event["recipient"] = {"id": PAGE_ID}, {"id": psid}
        if draw(st.booleans()):
            message["attachments"] = draw(
                st.one_of(st.just([{"type": "image", "payload": {"url": "https://x/y.png"}}]), junk)
            )
        event["message"] = message
    elif kind == "delivery":
        event["delivery"] = {"watermark": draw(timestamps)}
    elif kind == "read":
        event["read"] = {"watermark": draw(timestamps)}
    elif kind == "reaction":
        event["reaction"] = {
            "mid": draw(mids),
            "action": draw(mostly(st.sampled_from(["react", "unreact"]))),
        }
    elif kind == "postback":
        event["postback"] = {"payload": draw(st.one_of(st.text(max_size=10), junk)), "title": "t"}
    else:
        event["something_new"] = draw(junk)
    if draw(st.integers(0, 9)) == 0:
        del event[draw(st.sampled_from(["sender", "timestamp", "recipient"]))]
    return event


@st.composite
def payloads(draw):
    shape = draw(st.integers(0, 19))
    if shape == 0:
        return draw(junk)
    entry = {
        "id": draw(st.one_of(st.just(PAGE_ID), junk)) if shape == 1 else PAGE_ID,
        "time": T0,
        "messaging": draw(st.lists(events(), max_size=6)),
    }
    if draw(st.booleans()):
        entry["standby"] = draw(st.lists(events(), max_size=2))
    return {
        "object": draw(st.one_of(st.just("page"), junk)) if shape == 2 else "page",
        "entry": [entry] if shape != 3 else draw(junk),
    }


def _counts() -> tuple[int, int, int, int]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT (SELECT count(*) FROM conversations_facebookpage),"
            " (SELECT count(*) FROM conversations_conversation),"
            " (SELECT count(*) FROM conversations_message),"
            " (SELECT count(*) FROM conversations_interactionevent)"
        )
        return cursor.fetchone()


@pytest.mark.slow
@pytest.mark.django_db
@hypothesis_settings(
    max_examples=500,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(document=payloads(), is_truncated=st.integers(0, 19).map(lambda n: n == 0))
def test_random_payloads_never_500_and_each_event_is_applied_or_quarantined(
    client, document, is_truncated
):
    page_pk_cache_clear()
    text = json.dumps(document)
    body = (text[:-1] if is_truncated else text).encode()
    before = _counts()
    receipts_before = WebhookReceipt.objects.count()

    response = client.generic(
        "POST",
        "/webhooks/messenger/",
        body,
        content_type="application/json",
        HTTP_X_HUB_SIGNATURE_256=signature_for(body, secret=settings.FB_APP_SECRET),
    )

    assert response.status_code in (200, 400), response.content
    hypothesis_event(f"status {response.status_code}")
    assert WebhookReceipt.objects.count() == receipts_before + 1
    receipt = WebhookReceipt.objects.order_by("-id").first()
    if response.status_code == 400:
        assert receipt.status == "rejected"
        assert receipt.error
        assert _counts() == before
    else:
        assert receipt.status in ("processed", "quarantined"), receipt.error
        assert (receipt.status == "quarantined") == bool(receipt.quarantined_events)
        assert all(item["reason"] for item in receipt.quarantined_events)
        usable = _usable_message_mids(document, receipt.quarantined_events)
        assert set(Message.objects.values_list("mid", flat=True)) >= usable
        assert receipt.event_count == sum(
            len(events)
            for entry in document["entry"]
            if isinstance(entry, dict)
            for events in (entry.get("messaging"), entry.get("standby"))
            if isinstance(events, list)
        )


def _usable_message_mids(document, quarantined) -> set[str]:
    left_out = {(item["entry"], item["channel"], item.get("index")) for item in quarantined}
    mids = set()
    for entry_index, entry in enumerate(document["entry"]):
        if (entry_index, "entry", None) in left_out or not isinstance(entry, dict):
            continue
        events = [("messaging", i, e) for i, e in enumerate(entry.get("messaging", []))]
        events += [("standby", i, e) for i, e in enumerate(entry.get("standby", []))]
        for channel, index, item in events:
            if (entry_index, channel, index) in left_out:
                continue
            if not isinstance(item, dict):
                continue
            message = item.get("message")
            if not isinstance(message, dict):
                continue
            echo = message.get("is_echo") is True
            person = item.get("recipient") if echo else item.get("sender")
            if (
                isinstance(person, dict)
                and isinstance(person.get("id"), str)
                and person["id"] in ("7001", "7002", "7003")
            ):
                mids.add(message["mid"])
    return mids
