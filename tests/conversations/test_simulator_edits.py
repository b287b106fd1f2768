"""The Graph simulator's control API for edits and reactions, over HTTP."""

from __future__ import annotations

import pytest
import requests

from conversations.simulator.graph import GraphSimulator

TOKEN = "sim-page-token"


def _messages(base: str, thread_id: str) -> list[dict]:
    response = requests.get(
        f"{base}/{thread_id}/messages",
        params={"access_token": TOKEN, "fields": "id,message", "limit": 100},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return response.json()["data"]


def test_an_edit_is_served_by_graph_counted_in_the_truth_and_answered_as_meta_would_send_it():
    simulator = GraphSimulator(conversations=3, messages=30, seed=5)
    with simulator.running() as base:
        conversation = simulator.truth()["conversations"][-1]
        thread_id, oldest = conversation["id"], conversation["messages"][0]["id"]
        before = conversation["updated_timestamp_ms"]

        first = requests.post(
            f"{base}/_control/edits",
            json={"conversation": thread_id, "mid": oldest, "text": "edited once"},
            timeout=5,
        ).json()
        second = requests.post(
            f"{base}/_control/edits",
            json={"conversation": thread_id, "mid": oldest, "text": "edited twice"},
            timeout=5,
        ).json()
        served = {m["id"]: m["message"] for m in _messages(base, thread_id)}
        truth = {c["id"]: c for c in simulator.truth()["conversations"]}[thread_id]

    assert (first["num_edit"], second["num_edit"]) == (1, 2)
    assert second["event"] == {
        "sender": {"id": truth["psid"]},
        "recipient": {"id": simulator.page().page_id},
        "timestamp": second["timestamp_ms"],
        "message_edit": {"mid": oldest, "text": "edited twice", "num_edit": 2},
    }
    assert served[oldest] == "edited twice"
    edited = truth["messages"][0]
    assert (edited["text"], edited["edit_count"]) == ("edited twice", 2)
    assert truth["updated_timestamp_ms"] > before  # the thread moved up: a sync reads it again


def test_reactions_put_on_and_taken_off_by_name():
    simulator = GraphSimulator(conversations=2, messages=10, seed=6)
    with simulator.running() as base:
        conversation = simulator.truth()["conversations"][0]
        thread_id, mid = conversation["id"], conversation["messages"][-1]["id"]

        def react(action: str, reaction: str) -> dict:
            response = requests.post(
                f"{base}/_control/reactions",
                json={
                    "conversation": thread_id,
                    "mid": mid,
                    "action": action,
                    "reaction": reaction,
                },
                timeout=5,
            )
            assert response.status_code == 200, response.text
            return response.json()

        react("react", "love")
        react("react", "wow")
        taken_off = react("unreact", "love")
        truth = {c["id"]: c for c in simulator.truth()["conversations"]}[thread_id]

    assert truth["messages"][-1]["reactions"] == [[conversation["psid"], "wow"]]
    assert taken_off["event"]["reaction"] == {
        "reaction": "love",
        "emoji": "\u2764\ufe0f",
        "action": "unreact",
        "mid": mid,
    }


@pytest.mark.parametrize(
    ("route", "values", "status"),
    [
        ("edits", {"mid": "m_x", "text": "x"}, 400),  # no conversation
        ("edits", {"conversation": "{thread}", "mid": "m_none", "text": "x"}, 404),
        ("edits", {"conversation": "{thread}", "mid": "{mid}"}, 400),  # no text
        ("reactions", {"conversation": "{thread}", "mid": "{mid}", "action": "like"}, 400),
        ("reactions", {"conversation": "t_999", "mid": "{mid}"}, 404),
    ],
)
def test_bad_edit_and_reaction_calls_are_refused(route, values, status):
    simulator = GraphSimulator(conversations=2, messages=10, seed=7)
    with simulator.running() as base:
        conversation = simulator.truth()["conversations"][0]
        filled = {
            key: value.format(thread=conversation["id"], mid=conversation["messages"][0]["id"])
            for key, value in values.items()
        }
        response = requests.post(f"{base}/_control/{route}", json=filled, timeout=5)

    assert response.status_code == status, response.text
