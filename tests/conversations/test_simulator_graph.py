"""The Graph API simulator against its contract (graph-api-facts.md): paging, ordering,
field selection, usage headers, throttling, token errors, fault modes, control API, webhooks."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime

import pytest
import requests
from django.conf import settings

from conversations.models import Conversation, Message
from conversations.simulator.graph import GraphSimulator
from evoflow.simulator import Faults
from tests.conversations.factories import FacebookPageFactory
from tests.helpers import PROJECT_ROOT, free_port, wait_for

TOKEN = "sim-page-token"
PAGE = "111222333"


def get(base: str, path: str, **params):
    return requests.get(f"{base}{path}", params={"access_token": TOKEN, **params}, timeout=10)


def walk_conversations(base: str, **params) -> list[dict]:
    pages, response = [], get(base, f"/v21.0/{PAGE}/conversations", **params)
    while True:
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(body)
        if "next" not in body.get("paging", {}):
            break
        response = requests.get(body["paging"]["next"], timeout=10)
    return pages


def parse_time(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S%z")


def test_the_world_is_deterministic_and_message_counts_vary_but_sum_exactly():
    first, same, other = (
        GraphSimulator(conversations=41, messages=777, seed=5),
        GraphSimulator(conversations=41, messages=777, seed=5),
        GraphSimulator(conversations=41, messages=777, seed=6),
    )
    counts = [first.generated_message_count(i) for i in range(41)]
    assert sum(counts) == 777
    assert len(set(counts)) > 5
    assert min(counts) >= 1
    assert counts == [same.generated_message_count(i) for i in range(41)]
    assert counts != [other.generated_message_count(i) for i in range(41)]
    conversation = first.generated_conversation(7)
    assert first.generated_message(conversation, 3) == same.generated_message(
        same.generated_conversation(7), 3
    )


def test_conversations_page_newest_updated_first_with_cursors_and_next():
    simulator = GraphSimulator(conversations=60, messages=300, seed=2)
    with simulator.running() as base:
        pages = walk_conversations(base, fields="id,updated_time,message_count")

    assert [len(page["data"]) for page in pages] == [25, 25, 10]  # default limit 25
    nodes = [node for page in pages for node in page["data"]]
    assert len({node["id"] for node in nodes}) == 60
    times = [parse_time(node["updated_time"]) for node in nodes]
    assert times == sorted(times, reverse=True)
    assert sum(node["message_count"] for node in nodes) == 300
    assert all("cursors" in page["paging"] for page in pages)
    assert "next" not in pages[-1]["paging"]
    assert pages[0]["paging"]["next"].startswith(f"{base}/v21.0/{PAGE}/conversations?")
    assert set(nodes[0]) == {"id", "updated_time", "message_count"}


def test_the_version_prefix_is_optional_and_limit_is_honoured():
    simulator = GraphSimulator(conversations=5, messages=10)
    with simulator.running() as base:
        plain = get(base, f"/{PAGE}/conversations", limit=2).json()
        prefixed = get(base, f"/v19.0/{PAGE}/conversations", limit=2).json()
    assert [n["id"] for n in plain["data"]] == [n["id"] for n in prefixed["data"]]
    assert len(plain["data"]) == 2


def test_nested_messages_expansion_selects_fields_and_limits():
    simulator = GraphSimulator(conversations=3, messages=90, seed=4)
    fields = "id,participants,messages.limit(4){id,created_time,from,to,message,attachments}"
    with simulator.running() as base:
        body = get(base, f"/{PAGE}/conversations", fields=fields).json()

    node = body["data"][0]
    assert set(node) == {"id", "participants", "messages"}
    people = node["participants"]["data"]
    assert [p["id"] for p in people][1] == PAGE
    assert people[0]["email"] == f"{people[0]['id']}@facebook.com"
    messages = node["messages"]["data"]
    assert len(messages) == 4
    assert set(messages[0]) <= {"id", "created_time", "from", "to", "message", "attachments"}
    assert {"id", "created_time", "from", "to", "message"} <= set(messages[0])
    created = [parse_time(m["created_time"]) for m in messages]
    assert created == sorted(created, reverse=True)
    assert "next" in node["messages"]["paging"]


def test_messages_edge_is_newest_first_with_paging_over_every_message():
    simulator = GraphSimulator(conversations=2, messages=130, seed=9)
    with simulator.running() as base:
        thread = get(base, f"/{PAGE}/conversations", fields="id,message_count").json()["data"][0]
        seen, response = (
            [],
            get(
                base,
                f"/v21.0/{thread['id']}/messages",
                limit=10,
                fields="id,created_time,from,message,attachments",
            ),
        )
        while True:
            body = response.json()
            seen.extend(body["data"])
            if "next" not in body.get("paging", {}):
                break
            response = requests.get(body["paging"]["next"], timeout=10)

    assert len(seen) == thread["message_count"]
    assert len({m["id"] for m in seen}) == len(seen)
    created = [parse_time(m["created_time"]) for m in seen]
    assert created == sorted(created, reverse=True)
    assert any("attachments" in m for m in seen)  # attachments
    assert {m["from"]["id"] for m in seen} >= {PAGE}  # echoes: messages from the page


def test_usage_headers_follow_the_call_rate_and_throttling_starts_past_the_limit():
    simulator = GraphSimulator(conversations=3, messages=3, rate_limit=4, rate_window_s=60)
    with simulator.running() as base:
        responses = [get(base, f"/{PAGE}/conversations") for _ in range(6)]

    usages = [json.loads(r.headers["X-App-Usage"])["call_count"] for r in responses]
    assert usages[:4] == [25, 50, 75, 100]
    assert [r.status_code for r in responses] == [200, 200, 200, 200, 400, 400]
    error = responses[4].json()["error"]
    assert (error["code"], error["type"]) == (80001, "OAuthException")
    business = json.loads(responses[5].headers["X-Business-Use-Case-Usage"])[PAGE][0]
    assert business["type"] == "pages"
    assert business["call_count"] == 100
    assert business["estimated_time_to_regain_access"] == 1


@pytest.mark.parametrize("code", [4, 32, 613, 80001, 80006])
def test_each_throttling_code_can_be_configured(code):
    simulator = GraphSimulator(conversations=1, messages=1, rate_limit=1)
    with simulator.running() as base:
        requests.post(f"{base}/_control/rate", json={"throttle_code": code}, timeout=5)
        get(base, f"/{PAGE}/conversations")
        body = get(base, f"/{PAGE}/conversations").json()
    assert body["error"]["code"] == code
    assert f"(#{code})" in body["error"]["message"]


def test_a_wrong_token_is_error_190_and_the_token_can_be_changed_at_run_time():
    simulator = GraphSimulator(conversations=1, messages=1)
    with simulator.running() as base:
        wrong = requests.get(f"{base}/{PAGE}/conversations?access_token=nope", timeout=5)
        requests.post(f"{base}/_control/token", json={"access_token": "rotated"}, timeout=5)
        old = get(base, f"/{PAGE}/conversations")
        bearer = requests.get(
            f"{base}/{PAGE}/conversations", timeout=5, headers={"Authorization": "Bearer rotated"}
        )
    assert wrong.status_code == 400
    assert wrong.json()["error"]["code"] == 190
    assert old.json()["error"]["code"] == 190
    assert bearer.status_code == 200


def test_fault_modes_server_errors_malformed_drift_and_slowness():
    with GraphSimulator(conversations=3, messages=3, faults=Faults(fault_rate=1.0)).running() as b:
        fault = get(b, f"/{PAGE}/conversations")
    assert fault.status_code == 500
    assert fault.json()["error"]["is_transient"] is True

    with GraphSimulator(
        conversations=3, messages=3, faults=Faults(malformed_rate=1.0)
    ).running() as b:
        malformed = get(b, f"/{PAGE}/conversations")
    assert malformed.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(malformed.content)

    with GraphSimulator(conversations=3, messages=3, drift_rate=1.0, seed=3).running() as b:
        drifted = [
            get(b, f"/{PAGE}/conversations", fields="id,updated_time,participants").json()
            for _ in range(8)
        ]
    normal_shape = lambda body: (  # noqa: E731
        isinstance(body.get("data"), list)
        and all(
            isinstance(n.get("id"), str)
            and isinstance(n.get("updated_time"), str)
            and isinstance(n.get("participants"), dict)
            for n in body["data"]
        )
    )
    assert not any(normal_shape(body) for body in drifted)

    with GraphSimulator(conversations=1, messages=1, faults=Faults(slow_ms=200)).running() as b:
        started = time.monotonic()
        get(b, f"/{PAGE}/conversations")
        assert time.monotonic() - started >= 0.2


def test_control_api_adds_and_deletes_while_running_and_counts_calls():
    simulator = GraphSimulator(conversations=10, messages=50, seed=8)
    with simulator.running() as base:
        last = walk_conversations(base, limit=5)[-1]["data"][-1]["id"]
        added = requests.post(
            f"{base}/_control/messages",
            json={"conversation": last, "text": "new!", "count": 2},
            timeout=5,
        )
        new = requests.post(
            f"{base}/_control/conversations",
            json={"psid": "6999", "name": "Newcomer", "messages": 3},
            timeout=5,
        )
        deleted_id = "t_8000000004"
        requests.delete(f"{base}/_control/conversations/{deleted_id}", timeout=5)
        nodes = [
            n for page in walk_conversations(base, fields="id,message_count") for n in page["data"]
        ]
        gone = get(base, f"/{deleted_id}/messages")
        newest = get(base, f"/{last}/messages", limit=1, fields="id,message").json()["data"][0]
        counters = requests.get(f"{base}/_control/counters", timeout=5).json()

    assert added.status_code == 201
    assert len(added.json()["mids"]) == 2
    ids = [n["id"] for n in nodes]
    assert ids[0] == new.json()["id"]  # newest-updated first
    assert ids[1] == last  # bumped by its new messages
    assert deleted_id not in ids
    assert len(ids) == 10  # 10 generated + 1 added - 1 deleted
    assert {n["id"]: n["message_count"] for n in nodes}[new.json()["id"]] == 3
    assert gone.json()["error"]["code"] == 100
    assert newest["message"] == "new!"
    assert counters["calls"]["conversations"] == 3  # 2 pages of 5, then 1 page of 25
    assert counters["calls"]["messages"] == 2
    assert len(counters["timestamps"]["messages"]) == 2


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_new_messages_are_sent_as_signed_webhooks_the_real_endpoint_accepts(live_server):
    # Given the simulator feeding the real webhook endpoint of a live server
    FacebookPageFactory(page_id=PAGE)
    simulator = GraphSimulator(
        conversations=4,
        messages=8,
        seed=11,
        webhook_target=f"{live_server.url}/webhooks/messenger/",
        app_secret=settings.FB_APP_SECRET,
    )
    with simulator.running() as base:
        thread = "t_11000000002"
        response = requests.post(
            f"{base}/_control/messages",
            json={"conversation": thread, "text": "live é/ü", "count": 3},
            timeout=30,
        )
        echo = requests.post(
            f"{base}/_control/messages",
            json={"conversation": thread, "text": "we reply", "from_page": True},
            timeout=30,
        )

    assert response.json()["webhook_status"] == 200
    assert echo.json()["webhook_status"] == 200
    conversation = Conversation.objects.get(psid=simulator.generated_conversation(2).psid)
    assert conversation.message_count == 4
    assert conversation.last_message_text == "we reply"
    assert Message.objects.filter(text="live é/ü", direction="inbound").count() == 3
    assert Message.objects.get(text="we reply").is_echo is True


@pytest.mark.slow
def test_the_management_command_serves_under_a_version_prefix():
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "graph_simulator",
            "--port",
            str(port),
            "--conversations",
            "12",
            "--messages",
            "40",
            "--seed",
            "3",
        ],
        cwd=PROJECT_ROOT,
        env={**__import__("os").environ, "DEBUG": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"

        def answers() -> bool:
            try:
                return requests.get(f"{base}/_control/state", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        assert wait_for(answers, timeout=30)
        body = get(base, f"/v21.0/{PAGE}/conversations", limit=100).json()
        assert len(body["data"]) == 12
        assert requests.get(f"{base}/_control/state", timeout=5).json()["seed"] == 3
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_base_control_routes_faults_reset_and_idempotency_keys():
    simulator = GraphSimulator(conversations=2, messages=2)
    with simulator.running() as base:
        assert requests.get(f"{base}/_control/faults", timeout=5).json() == {
            "fault_rate": 0.0,
            "slow_ms": 0,
            "malformed_rate": 0.0,
        }
        changed = requests.post(f"{base}/_control/faults", json={"fault_rate": 1}, timeout=5)
        assert changed.json()["fault_rate"] == 1.0
        assert get(base, f"/{PAGE}").status_code == 500
        requests.post(f"{base}/_control/faults", json={"fault_rate": 0}, timeout=5)
        bad = requests.post(f"{base}/_control/faults", json={"fault_rate": 2}, timeout=5)
        assert bad.status_code == 400
        page = requests.get(
            f"{base}/v21.0/{PAGE}",
            params={"access_token": TOKEN},
            headers={"Idempotency-Key": "k-1"},
            timeout=5,
        )
        assert page.json() == {"id": PAGE, "name": "Simulated Shop"}
        counters = requests.get(f"{base}/_control/counters", timeout=5).json()
        assert counters["calls"]["page"] == 2
        assert counters["idempotency_keys"]["page"] == {"k-1": 1}
        requests.post(f"{base}/_control/reset", timeout=5)
        assert requests.get(f"{base}/_control/counters", timeout=5).json()["calls"] == {}
        assert requests.post(f"{base}/{PAGE}/conversations", timeout=5).status_code == 405
        assert requests.get(f"{base}/nowhere", timeout=5).status_code == 404
        other_page = get(base, "/999/conversations").json()
        assert other_page["error"]["code"] == 100


def test_a_large_world_is_lazy_and_pages_in_constant_time():
    simulator = GraphSimulator(conversations=100_000, messages=1_000_000, seed=7)
    with simulator.running() as base:
        first = get(base, f"/{PAGE}/conversations", limit=100, fields="id,message_count").json()
        # jump deep into the list with the cursor of conversation 99,000
        from conversations.simulator.graph import _encode_cursor

        started = time.monotonic()
        deep = get(base, f"/{PAGE}/conversations", limit=100, after=_encode_cursor("i:98999"))
        assert time.monotonic() - started < 2
    assert len(first["data"]) == 100
    assert deep.json()["data"][0]["id"] == "t_7000099000"
    assert sum(simulator.generated_message_count(i) for i in range(100_000)) == 1_000_000


def test_churn_changes_the_list_between_pages_of_a_walk():
    # Given a simulator where every page served makes a later conversation jump or vanish
    simulator = GraphSimulator(conversations=30, messages=60, seed=4, churn_rate=1.0)
    with simulator.running() as base:
        nodes = [n for page in walk_conversations(base, limit=5) for n in page["data"]]

    # Then the walk missed exactly the conversations that changed after their page position
    seen = [node["id"] for node in nodes]
    assert len(seen) == len(set(seen))
    churned = {key for _, key in simulator.churned}
    assert churned
    assert not churned & set(seen)
    assert len(seen) == 30 - len(churned)
    # And a new walk finds the bumped ones first (newest updated), the deleted ones nowhere
    deleted = {key for action, key in simulator.churned if action == "deleted"}
    bumped = {key for action, key in simulator.churned if action == "bumped"} - deleted
    simulator.churn_rate = 0.0
    with simulator.running() as base:
        again = [n["id"] for page in walk_conversations(base, limit=100) for n in page["data"]]
    assert set(again[: len(bumped)]) == bumped
    assert not deleted & set(again)
    assert len(again) == 30 - len(deleted)
