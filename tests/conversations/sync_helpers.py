"""Helpers of the sync acceptance tests: the stored state of a page in the simulator's terms,
compared with `GraphSimulator.truth()`, and running sync runs in this process."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.db import connection
from django.db.models import Count

from conversations.models import (
    Conversation,
    FacebookPage,
    InteractionEvent,
    Message,
    SyncRun,
)
from conversations.services.pages import page_upsert
from conversations.services.sync import sync_request, sync_run_execute
from conversations.simulator.graph import GraphSimulator
from devtools.simulator import SimResponse

MESSAGE_EVENT_KINDS = ("message_received", "message_sent")


def seconds(moment: Any) -> int:
    """A time to the whole second, as Graph serves `created_time` (webhooks carry ms)."""
    return math.floor(moment.timestamp())


def truth_state(sim: GraphSimulator, page_id: str | None = None) -> dict[str, dict[str, Any]]:
    """The simulator's truth for one page, keyed by thread id, in the shape of `db_state`."""
    state = {}
    for conversation in sim.truth(page_id)["conversations"]:
        messages = {
            message["id"]: {
                "direction": "outbound" if message["from_page"] else "inbound",
                "text": message["text"],
                "sent_at": message["created_timestamp_ms"] // 1000,
                "attachments": message["attachments"],
                "reply_to": message["reply_to"] or "",
            }
            for message in conversation["messages"]
        }
        newest = conversation["messages"][-1] if conversation["messages"] else None
        state[conversation["id"]] = {
            "psid": conversation["psid"],
            "name": conversation["name"],
            "message_count": conversation["message_count"],
            "last_message_mid": newest["id"] if newest else "",
            "last_message_at": newest["created_timestamp_ms"] // 1000 if newest else None,
            "messages": messages,
        }
    return state


def db_state(page: FacebookPage, *, include_deleted: bool = False) -> dict[str, dict[str, Any]]:
    """The live conversations of the page as stored, keyed by thread id (same shape)."""
    conversations = Conversation.objects.filter(page=page)
    if not include_deleted:
        conversations = conversations.filter(deleted_at__isnull=True)
    state: dict[str, dict[str, Any]] = {}
    by_pk: dict[int, dict[str, Any]] = {}
    for conversation in conversations:
        entry = {
            "psid": conversation.psid,
            "name": conversation.participant_name,
            "message_count": conversation.message_count,
            "last_message_mid": conversation.last_message_mid,
            "last_message_at": (
                seconds(conversation.last_message_at) if conversation.last_message_at else None
            ),
            "messages": {},
        }
        assert conversation.thread_id not in state, f"two rows for {conversation.thread_id}"
        state[conversation.thread_id] = entry
        by_pk[conversation.pk] = entry
    for message in Message.objects.filter(page=page, conversation_id__in=by_pk):
        by_pk[message.conversation_id]["messages"][message.mid] = {
            "direction": message.direction,
            "text": message.text,
            "sent_at": seconds(message.sent_at),
            "attachments": message.attachments,
            "reply_to": message.reply_to_mid,
        }
    return state


def assert_one_event_per_message(page: FacebookPage) -> None:
    """Every message has exactly one message_received/message_sent event, and no such event
    exists without its message."""
    messages = Message.objects.filter(page=page)
    wrong = (
        messages.annotate(message_events=Count("events", filter=_message_event_filter()))
        .exclude(message_events=1)
        .values_list("mid", "message_events")[:10]
    )
    assert list(wrong) == []
    events = InteractionEvent.objects.filter(page=page, kind__in=MESSAGE_EVENT_KINDS)
    assert events.count() == messages.count()
    assert not events.filter(message__isnull=True).exists()
    # The event's kind matches the message's direction.
    assert not events.filter(kind="message_received", message__direction="outbound").exists()
    assert not events.filter(kind="message_sent", message__direction="inbound").exists()


def _message_event_filter():
    from django.db.models import Q

    return Q(events__kind__in=MESSAGE_EVENT_KINDS)


def assert_equal_to_truth(page: FacebookPage, sim: GraphSimulator, page_id: str | None = None):
    """The page's live conversations, messages, counts and last messages equal the truth, with
    one event per message; returns the truth state."""
    truth = truth_state(sim, page_id)
    stored = db_state(page)
    assert sorted(stored) == sorted(truth), _diff_keys(stored, truth)
    for thread_id, expected in truth.items():
        actual = stored[thread_id]
        if actual != expected:
            assert {k: v for k, v in actual.items() if k != "messages"} == {
                k: v for k, v in expected.items() if k != "messages"
            }, thread_id
            assert sorted(actual["messages"]) == sorted(expected["messages"]), thread_id
            for mid, message in expected["messages"].items():
                assert actual["messages"][mid] == message, (thread_id, mid, actual["messages"][mid])
    assert_one_event_per_message(page)
    assert_no_duplicates(page)
    return truth


def assert_subset_of_truth(page: FacebookPage, sim: GraphSimulator) -> None:
    """What is stored is true (a partial state never holds anything the API does not), every
    stored conversation holds all of its messages up to what it has, and events match."""
    truth = truth_state(sim)
    stored = db_state(page)
    assert set(stored) <= set(truth)
    for thread_id, actual in stored.items():
        expected = truth[thread_id]
        assert actual["psid"] == expected["psid"]
        for mid, message in actual["messages"].items():
            assert expected["messages"][mid] == message, (thread_id, mid)
        assert actual["message_count"] == len(actual["messages"])
    assert_one_event_per_message(page)
    assert_no_duplicates(page)


def assert_no_duplicates(page: FacebookPage) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) - count(DISTINCT mid) FROM conversations_message WHERE page_id = %s",
            [page.pk],
        )
        assert cursor.fetchone()[0] == 0
        cursor.execute(
            "SELECT count(*) - count(DISTINCT psid) FROM conversations_conversation"
            " WHERE page_id = %s",
            [page.pk],
        )
        assert cursor.fetchone()[0] == 0


def _diff_keys(stored: dict[str, Any], truth: dict[str, Any]) -> str:
    missing = sorted(set(truth) - set(stored))
    extra = sorted(set(stored) - set(truth))
    return f"missing {len(missing)} {missing[:5]}, extra {len(extra)} {extra[:5]}"


def sim_page(sim: GraphSimulator, page_id: str | None = None) -> FacebookPage:
    """The FacebookPage row of a simulated page, with the simulator's token."""
    world = sim.page(page_id)
    return page_upsert(page_id=world.page_id, name=world.name, access_token=world.access_token)


def sync_now(page: FacebookPage, mode: str = "full") -> SyncRun:
    """Request a run and execute it in this process; the finished run."""
    run, created = sync_request(page=page, mode=mode, enqueue=False)
    assert created, f"run {run.pk} of the page is still {run.status}"
    return sync_run_execute(run_id=run.pk)


def graph_calls(sim: GraphSimulator) -> int:
    """Graph calls served (control calls excluded)."""
    calls = sim.counters.snapshot()["calls"]
    return sum(count for endpoint, count in calls.items() if not endpoint.startswith("control"))


@contextmanager
def simulator_serving(sim: GraphSimulator, settings) -> Iterator[str]:
    """Serve the simulator and point the Graph client of this process at it."""
    with sim.running() as base:
        settings.GRAPH_API_BASE_URL = base + "/v21.0"
        yield base


@contextmanager
def drift_when(sim: GraphSimulator, endpoint: str, predicate) -> Iterator[list[str]]:
    """Answer the simulator's `endpoint` ("conversations" or "messages") with a renamed
    envelope when `predicate(request)` holds; yields the list of drifted request paths.
    (The simulator's own `drift_rate` drifts at random; these tests pick the batch.)"""
    drifted: list[str] = []
    originals = {}
    for position, route in enumerate(sim._routes):
        if route.endpoint != endpoint:
            continue
        original = route.handler
        originals[position] = route

        def handler(request, original=original):
            response = original(request)
            if response.status == 200 and predicate(request):
                drifted.append(request.path)
                document = json.loads(response.raw) if response.raw is not None else response.body
                return SimResponse(response.status, {"result": document}, response.headers)
            return response

        sim._routes[position] = dataclasses.replace(route, handler=handler)
    try:
        yield drifted
    finally:
        for position, route in originals.items():
            sim._routes[position] = route


def long_thread_in_batch(sim: GraphSimulator, batch: int) -> str:
    """A generated thread of more than 100 messages (its messages edge is paged) among the
    conversations of inbox batch `batch` (0-based, 100 a batch) of a world without bumps."""
    for index in range(100 * batch, 100 * batch + 100):
        if sim.generated_message_count(index) > 100:
            return sim.generated_conversation(index).key
    raise AssertionError(f"no thread of more than 100 messages in batch {batch}")
