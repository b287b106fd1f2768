"""Fidelity against the Graph simulator's truth with edits and reactions (C9).

After a full sync, messages are edited and reacted to in the simulator (through its control API,
over HTTP). Some edits reach evoflow by webhook, out of order and duplicated, some only through
the sync (Graph serves the current text); every reaction comes by webhook, shuffled and
duplicated. After an incremental sync, every conversation's messages, texts, edit counts,
reactions and last message equal the truth.
"""

from __future__ import annotations

import random

import pytest
import requests

from conversations.models import Conversation, Message, MessageReaction
from conversations.simulator.graph import GraphSimulator
from conversations.simulator.payloads import webhook_document
from tests.conversations.sync_helpers import (
    assert_equal_to_truth,
    sim_page,
    simulator_serving,
    sync_now,
)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _fast_limiter(settings):
    settings.GRAPH_PAGE_CALLS_PER_SECOND = 1000
    settings.GRAPH_APP_CALLS_PER_SECOND = 1000
    settings.SYNC_BATCH_ATTEMPTS = 1


def _control(base: str, route: str, **values) -> dict:
    response = requests.post(f"{base}/_control/{route}", json=values, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def test_edits_and_reactions_converge_through_webhook_and_sync(settings, post_webhook):
    rng = random.Random(1414)
    sim = GraphSimulator(conversations=30, messages=600, seed=14)
    with simulator_serving(sim, settings) as base:
        page = sim_page(sim)
        assert sync_now(page, "full").status == "succeeded"
        truth = sim.truth()["conversations"]
        threads = rng.sample([c for c in truth if len(c["messages"]) >= 4], 12)

        # Given edits in the simulator: by webhook (every edit of the message, shuffled and
        # duplicated), by webhook with the first edit lost, and through the sync only (once,
        # and twice); the last message of half the threads is among them
        by_webhook: list[dict] = []
        sync_only_twice: list[str] = []
        for index, thread in enumerate(threads):
            messages = thread["messages"]
            picks = [messages[-1], messages[1]] if index % 2 == 0 else [messages[2], messages[0]]
            for number, message in enumerate(picks):
                route = (index + number) % 4
                edits = [
                    _control(
                        base,
                        "edits",
                        conversation=thread["id"],
                        mid=message["id"],
                        text=f"{message['text']} (edit {n} of {message['id']})",
                    )
                    for n in range(1, (3 if route in (0, 1) else 1 if route == 2 else 2) + 1)
                ]
                if route == 0:
                    by_webhook += [edit["event"] for edit in edits] * 2
                elif route == 1:
                    by_webhook += [edit["event"] for edit in edits[1:]]
                elif route == 3:
                    sync_only_twice.append(message["id"])
        # and reactions, some taken off again, all delivered shuffled and twice
        reactions: list[dict] = []
        for thread in threads[:8]:
            mid = thread["messages"][-2]["id"]
            for action, reaction in (("react", "love"), ("react", "wow"), ("unreact", "love")):
                event = _control(
                    base,
                    "reactions",
                    conversation=thread["id"],
                    mid=mid,
                    action=action,
                    reaction=reaction,
                    emoji="x",
                )["event"]
                reactions += [event, event]
        events = by_webhook + reactions
        rng.shuffle(events)
        for start in range(0, len(events), 7):
            response = post_webhook(webhook_document(sim.page().page_id, events[start : start + 7]))
            assert response.status_code == 200, response.content
            assert response.json()["status"] == "processed"

        # When an incremental sync runs
        run = sync_now(page, "incremental")

        # Then every conversation equals the truth, texts included, and no message was added
        assert run.status == "succeeded"
        assert run.messages_inserted == 0
        assert_equal_to_truth(page, sim)
        truth = sim.truth()["conversations"]
        stored = {m.mid: m for m in Message.objects.filter(page=page)}
        on = set(
            MessageReaction.objects.filter(page=page, active=True).values_list(
                "mid", "psid", "reaction"
            )
        )
        expected_on = set()
        edited = 0
        for conversation in truth:
            for message in conversation["messages"]:
                mine = stored[message["id"]]
                assert mine.text == message["text"], message["id"]
                if message["id"] in sync_only_twice:
                    # Graph serves the text, not the number of edits: the sync counts one.
                    assert (mine.edit_count, message["edit_count"]) == (1, 2)
                else:
                    assert mine.edit_count == message["edit_count"], message["id"]
                edited += message["edit_count"] > 0
                expected_on |= {(message["id"], psid, name) for psid, name in message["reactions"]}
            if conversation["messages"]:
                newest = conversation["messages"][-1]
                row = Conversation.objects.get(page=page, psid=conversation["psid"])
                assert (row.last_message_mid, row.last_message_text) == (
                    newest["id"],
                    newest["text"],
                )
                assert row.message_count == conversation["message_count"]
        assert edited == 24
        assert on == expected_on
        assert len(expected_on) == 8  # "wow" stays on each, "love" was taken off again
