"""The Graph API simulator against its contract (docs/graph-api.md): paging, ordering,
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
from devtools.simulator import Faults
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
        from conversations.simulator.wire import encode_cursor

        started = time.monotonic()
        deep = get(base, f"/{PAGE}/conversations", limit=100, after=encode_cursor("i:98999"))
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


# -- several pages ----------------------------------------------------------------------------

SECOND = "111222334"
SECOND_TOKEN = f"{TOKEN}-{SECOND}"


def get_as(base: str, path: str, token: str, **params):
    return requests.get(f"{base}{path}", params={"access_token": token, **params}, timeout=10)


def test_two_pages_are_served_at_once_with_their_own_token_world_and_rate_window():
    # Given one simulator with a second page (id +1, seed +1, its own token), 3 calls per window
    simulator = GraphSimulator(conversations=4, messages=12, seed=3, rate_limit=3, extra_pages=1)
    with simulator.running() as base:
        # When each page is called with its own token, and with the other's
        first = get(base, f"/{PAGE}/conversations", fields="id,participants")
        second = get_as(base, f"/{SECOND}/conversations", SECOND_TOKEN, fields="id,participants")
        crossed = get_as(base, f"/{SECOND}/conversations", TOKEN)
        node = get_as(base, f"/v21.0/{SECOND}", SECOND_TOKEN)
        # And page 1 is called past its rate while page 2 stays at its 3 calls
        allowed = [get(base, f"/{PAGE}/conversations").status_code for _ in range(2)]
        throttled = get(base, f"/{PAGE}/conversations")

    assert (first.status_code, second.status_code) == (200, 200)
    first_ids = [n["id"] for n in first.json()["data"]]
    second_ids = [n["id"] for n in second.json()["data"]]
    assert first_ids == [f"t_3{i:09d}" for i in range(4)]
    assert second_ids == [f"t_4{i:09d}" for i in range(4)]
    assert second.json()["data"][0]["participants"]["data"][1]["id"] == SECOND
    assert crossed.json()["error"]["code"] == 190
    assert node.json() == {"id": SECOND, "name": "Simulated Shop 2"}
    # Then only page 1 is throttled: each page has its own window
    assert allowed == [200, 200]
    assert throttled.json()["error"]["code"] == 80001
    usage = json.loads(node.headers["X-Business-Use-Case-Usage"])
    assert list(usage) == [SECOND]
    assert usage[SECOND][0]["call_count"] == 100  # 3 calls of 3
    assert simulator.page(SECOND).seed == 4
    assert simulator.page().page_id == PAGE


def test_thread_ids_route_to_the_page_that_owns_them():
    simulator = GraphSimulator(conversations=3, messages=30, seed=3, extra_pages=1)
    thread = simulator.page(SECOND).generated_conversation(1).key
    with simulator.running() as base:
        messages = get_as(base, f"/{thread}/messages", SECOND_TOKEN, fields="id,from,to")
        wrong_token = get(base, f"/{thread}/messages")
        node = get_as(base, f"/v21.0/{thread}", SECOND_TOKEN, fields="id,message_count")
        unknown = get(base, "/t_9000000001/messages")

    assert messages.status_code == 200
    ids = {m["from"]["id"] for m in messages.json()["data"]} | {
        m["to"]["data"][0]["id"] for m in messages.json()["data"]
    }
    assert SECOND in ids
    assert PAGE not in ids
    assert all(m["id"].startswith("m_4_1_") for m in messages.json()["data"])
    assert wrong_token.json()["error"]["code"] == 190
    assert node.json() == {
        "id": thread,
        "message_count": simulator.page(SECOND).generated_message_count(1),
    }
    assert unknown.json()["error"]["code"] == 100


def test_pages_added_by_list_or_page_add_need_distinct_ids_and_seeds():
    simulator = GraphSimulator(
        conversations=2,
        messages=4,
        seed=1,
        extra_pages=[{"page_id": "500", "seed": 50, "access_token": "five", "name": "Five"}],
    )
    added = simulator.page_add(page_id="600", seed=60, conversations=1, messages=1)

    assert list(simulator.pages) == [PAGE, "500", "600"]
    assert (simulator.page("500").access_token, simulator.page("500").name) == ("five", "Five")
    assert added.access_token == "sim-page-token-600"
    with pytest.raises(ValueError, match="seed 60"):
        simulator.page_add(page_id="700", seed=60)
    with pytest.raises(ValueError, match="page 500"):
        simulator.page_add(page_id="500", seed=70)
    with simulator.running() as base:
        served = get_as(base, "/600/conversations", "sim-page-token-600").json()["data"]
    newest = added.truth()["conversations"][0]
    assert served == [{"id": "t_60000000000", "updated_time": newest["updated_time"]}]


def test_control_routes_take_a_page_id_and_default_to_the_first_page():
    simulator = GraphSimulator(conversations=3, messages=9, seed=3, extra_pages=1)
    page_two_thread = simulator.page(SECOND).generated_conversation(0).key
    with simulator.running() as base:

        def control(method: str, path: str, **json_body):
            return requests.request(method, f"{base}/_control/{path}", json=json_body, timeout=5)

        added = control("POST", "conversations", page_id=SECOND, name="Second", messages=2)
        on_first = control("POST", "conversations", name="First", messages=1)
        message = control("POST", "messages", conversation=page_two_thread, text="hi page two")
        mismatched = control("POST", "messages", conversation=page_two_thread, page_id=PAGE)
        token = control("POST", "token", page_id=SECOND, access_token="rotated-two")
        rate = control("POST", "rate", page_id=SECOND, limit=7)
        unknown_page = control("POST", "token", page_id="42", access_token="x")
        deleted = control("DELETE", f"conversations/{page_two_thread}?page_id={SECOND}")
        state_two = requests.get(f"{base}/_control/state?page_id={SECOND}", timeout=5).json()
        state_one = requests.get(f"{base}/_control/state", timeout=5).json()
        old_token = get_as(base, f"/{SECOND}/conversations", SECOND_TOKEN)
        listing = get_as(base, f"/{SECOND}/conversations", "rotated-two", fields="id,message_count")

    assert added.status_code == 201
    assert added.json()["id"].startswith("t_4live")
    assert added.json()["page_id"] == SECOND
    assert on_first.json()["id"].startswith("t_3live")
    assert message.status_code == 201
    assert message.json()["mids"][0].startswith("m_4_live_")
    assert mismatched.status_code == 404
    assert token.json() == {"access_token_set": True, "page_id": SECOND}
    assert rate.json()["limit"] == 7
    assert simulator.rate_limit == 0  # the first page's rate did not change
    assert unknown_page.status_code == 404
    assert deleted.json() == {"deleted": page_two_thread, "page_id": SECOND}
    assert state_two["page_id"] == SECOND
    assert state_two["deleted"] == [page_two_thread]
    assert state_two["rate_limit"] == 7
    assert state_two["pages"] == [PAGE, SECOND]
    assert state_one["page_id"] == PAGE
    assert state_one["deleted"] == []
    assert old_token.json()["error"]["code"] == 190
    counts = {n["id"]: n["message_count"] for n in listing.json()["data"]}
    assert counts[added.json()["id"]] == 2
    assert page_two_thread not in counts
    assert len(counts) == 3  # 3 generated + 1 added - 1 deleted


def test_every_graph_call_is_recorded_per_page_with_its_time():
    simulator = GraphSimulator(conversations=2, messages=4, extra_pages=1, rate_limit=2)
    thread = simulator.page(SECOND).generated_conversation(0).key
    with simulator.running() as base:
        before = time.time()
        for _ in range(3):  # the third is throttled: still a call to the page
            get(base, f"/{PAGE}/conversations")
        get(base, f"/{PAGE}")
        get_as(base, f"/{thread}/messages", SECOND_TOKEN)
        get_as(base, f"/{thread}", "wrong token")
        get(base, "/999/conversations")  # no such page: not a call to any page
        after = time.time()
        counters = requests.get(f"{base}/_control/counters", timeout=5).json()
        requests.post(f"{base}/_control/reset", timeout=5)
        reset = requests.get(f"{base}/_control/counters", timeout=5).json()

    pages = counters["pages"]
    assert pages[PAGE]["calls"] == 4
    assert pages[PAGE]["endpoints"] == {"conversations": 3, "page": 1}
    assert pages[SECOND]["calls"] == 2
    assert pages[SECOND]["endpoints"] == {"messages": 1, "conversation": 1}
    assert all(before <= moment <= after for moment in pages[PAGE]["timestamps"])
    assert pages[PAGE]["timestamps"] == sorted(pages[PAGE]["timestamps"])
    assert simulator.page_calls_max_in_window(PAGE, window_s=60) == 0  # reset since
    assert reset["pages"] == {
        PAGE: {"calls": 0, "endpoints": {}, "timestamps": []},
        SECOND: {"calls": 0, "endpoints": {}, "timestamps": []},
    }


def test_the_busiest_sliding_window_of_calls_to_one_page():
    from conversations.simulator.calls import calls_max_in_window

    assert calls_max_in_window([]) == 0
    assert calls_max_in_window([0.0, 0.5, 0.99, 1.0, 1.2, 3.0]) == 4  # 0.5, 0.99, 1.0, 1.2
    assert calls_max_in_window([5.0, 1.0, 1.5], window_s=0.5) == 1
    simulator = GraphSimulator(conversations=1, messages=1, extra_pages=1)
    with simulator.running() as base:
        for _ in range(3):
            get(base, f"/{PAGE}")
    assert simulator.page_calls_max_in_window() == 3
    assert len(simulator.page_call_times(PAGE)) == 3
    assert simulator.page_calls_max_in_window(SECOND) == 0


# -- folders ----------------------------------------------------------------------------------


def walk_folder(base: str, folder: str | None, **params) -> list[dict]:
    extra = {"folder": folder} if folder else {}
    return [n for page in walk_conversations(base, **extra, **params) for n in page["data"]]


def test_folders_split_the_conversations_and_paging_stays_within_one():
    # Given about 1 in 10 generated conversations in "other"
    simulator = GraphSimulator(conversations=120, messages=360, seed=6, other_folder_share=0.1)
    truth = {c["id"]: c for c in simulator.truth()["conversations"]}
    with simulator.running() as base:
        default = walk_folder(base, None, limit=7, fields="id,updated_time")
        inbox = walk_folder(base, "inbox", limit=7, fields="id,updated_time", platform="messenger")
        other = walk_folder(base, "other", limit=3, fields="id,updated_time")
        done = get(base, f"/{PAGE}/conversations", folder="page_done").json()
        unknown = get(base, f"/{PAGE}/conversations", folder="archive")

    assert [n["id"] for n in default] == [n["id"] for n in inbox]
    assert {truth[n["id"]]["folder"] for n in inbox} == {"inbox"}
    assert {truth[n["id"]]["folder"] for n in other} == {"other"}
    assert 5 <= len(other) <= 20
    assert len(inbox) + len(other) == 120
    for nodes in (inbox, other):
        times = [parse_time(n["updated_time"]) for n in nodes]
        assert times == sorted(times, reverse=True)
        assert len({n["id"] for n in nodes}) == len(nodes)
    assert done == {"data": []}
    assert unknown.status_code == 400
    assert unknown.json()["error"]["code"] == 100


def test_a_conversation_added_to_other_and_bumps_stay_in_their_folder():
    simulator = GraphSimulator(conversations=40, messages=80, seed=6, other_folder_share=0.2)
    oldest_other = [c for c in simulator.truth()["conversations"] if c["folder"] == "other"][-1]
    with simulator.running() as base:
        added = requests.post(
            f"{base}/_control/conversations",
            json={"name": "Stranger", "folder": "other", "messages": 1},
            timeout=5,
        )
        requests.post(
            f"{base}/_control/messages",
            json={"conversation": oldest_other["id"], "text": "bump"},
            timeout=5,
        )
        bad = requests.post(f"{base}/_control/conversations", json={"folder": "x"}, timeout=5)
        other = [n["id"] for n in walk_folder(base, "other", limit=2)]
        inbox = [n["id"] for n in walk_folder(base, None, limit=100)]

    assert added.json()["folder"] == "other"
    assert other[:2] == [oldest_other["id"], added.json()["id"]]  # bumped after it was added
    assert added.json()["id"] not in inbox
    assert oldest_other["id"] not in inbox
    assert bad.status_code == 400
    assert len(other) + len(inbox) == 41


def test_a_large_world_pages_the_other_folder_in_constant_time():
    simulator = GraphSimulator(
        conversations=100_000, messages=1_000_000, seed=7, other_folder_share=0.1
    )
    from conversations.simulator.wire import encode_cursor

    with simulator.running() as base:
        started = time.monotonic()
        deep = get(
            base,
            f"/{PAGE}/conversations",
            folder="other",
            limit=100,
            after=encode_cursor("i:90000"),
            fields="id,message_count,messages.limit(100){id,message}",
        )
        empty = get(base, f"/{PAGE}/conversations", folder="spam")
        assert time.monotonic() - started < 2
    ids = [node["id"] for node in deep.json()["data"]]
    assert len(ids) == 100
    assert all(simulator.page().folder_of(key) == "other" for key in ids)
    assert int(ids[0][3:]) > 90_000
    assert empty.json() == {"data": []}


# -- truth --------------------------------------------------------------------------------------

FULL_FIELDS = (
    "id,updated_time,participants,message_count,"
    "messages.limit(100){id,created_time,from,to,message,attachments,reply_to}"
)
MESSAGE_FIELDS = "id,created_time,from,to,message,attachments,reply_to"


def walk_everything(base: str, token: str = TOKEN, page: str = PAGE) -> dict[str, dict]:
    """What a full sync sees: every folder, every conversation, every message, over HTTP."""
    seen: dict[str, dict] = {}
    session = requests.Session()
    for folder in ("inbox", "other", "page_done", "spam"):
        url, params = (
            f"{base}/v21.0/{page}/conversations",
            {
                "access_token": token,
                "folder": folder,
                "limit": "7",
                "fields": FULL_FIELDS,
            },
        )
        while url:
            body = session.get(url, params=params, timeout=10).json()
            params = None
            for node in body["data"]:
                messages = list(node["messages"]["data"])
                next_url = node["messages"].get("paging", {}).get("next")
                while next_url:
                    more = session.get(next_url, params={"fields": MESSAGE_FIELDS}, timeout=10)
                    messages += more.json()["data"]
                    next_url = more.json().get("paging", {}).get("next")
                seen[node["id"]] = {**node, "folder": folder, "messages": messages}
            url = body.get("paging", {}).get("next")
    return seen


def test_the_truth_equals_what_a_full_walk_of_the_api_returns():
    # Given a world with long threads, both folders, added and deleted conversations
    simulator = GraphSimulator(conversations=30, messages=2_400, seed=12, other_folder_share=0.2)
    with simulator.running() as base:
        requests.post(
            f"{base}/_control/conversations",
            json={"name": "Zoë Late", "folder": "spam", "messages": 2},
            timeout=5,
        )
        requests.post(
            f"{base}/_control/messages",
            json={"conversation": "t_12000000004", "text": "é / ü", "from_page": True},
            timeout=5,
        )
        requests.delete(f"{base}/_control/conversations/t_12000000007", timeout=5)
        # When the whole API is walked
        walked = walk_everything(base)
    truth = simulator.truth()

    # Then it holds exactly the truth's conversations and messages
    assert truth["deleted"] == ["t_12000000007"]
    updated = [c["updated_timestamp_ms"] for c in truth["conversations"]]
    assert updated == sorted(updated, reverse=True)  # newest-updated first
    assert set(walked) == {c["id"] for c in truth["conversations"]}
    assert max(c["message_count"] for c in truth["conversations"]) > 100  # /messages paging
    for expected in truth["conversations"]:
        node = walked[expected["id"]]
        person = node["participants"]["data"][0]
        assert (person["id"], person["name"]) == (expected["psid"], expected["name"])
        assert node["folder"] == expected["folder"]
        assert node["updated_time"] == expected["updated_time"]
        assert node["message_count"] == expected["message_count"] == len(expected["messages"])
        served = [
            {
                "id": m["id"],
                "created_time": m["created_time"],
                "from_page": m["from"]["id"] == PAGE,
                "text": m["message"],
                "attachments": m.get("attachments", {}).get("data", []),
                "reply_to": m.get("reply_to", {}).get("mid"),
            }
            for m in reversed(node["messages"])  # the truth lists the oldest first
        ]
        # The truth's timestamps, edit counts and reactions are not fields of Graph's message
        truth_only = {"created_timestamp_ms", "edit_count", "reactions"}
        assert served == [
            {key: value for key, value in m.items() if key not in truth_only}
            for m in expected["messages"]
        ]
        for message in expected["messages"]:
            assert parse_time(message["created_time"]).timestamp() == (
                message["created_timestamp_ms"] // 1000
            )
    spam = [c for c in truth["conversations"] if c["folder"] == "spam"]
    assert [m["text"] for m in spam[0]["messages"]] == ["message 0", "message 1"]
    assert spam[0]["name"] == "Zoë Late"


def test_the_truth_of_a_second_page_over_the_control_api():
    simulator = GraphSimulator(conversations=3, messages=6, seed=2, extra_pages=1)
    with simulator.running() as base:
        truth = requests.get(f"{base}/_control/truth?page_id={SECOND}", timeout=5).json()
        walked = walk_everything(base, token=SECOND_TOKEN, page=SECOND)
        missing = requests.get(f"{base}/_control/truth?page_id=5", timeout=5)
    assert truth == simulator.truth(SECOND)
    assert truth["page_id"] == SECOND
    assert (
        {c["id"] for c in truth["conversations"]}
        == set(walked)
        == {f"t_3{i:09d}" for i in range(3)}
    )
    assert missing.status_code == 404


# -- speed without changing content -------------------------------------------------------------


def test_the_fast_message_json_equals_the_reference_rendering():
    from conversations.simulator.render import MessageRenderer, Participant, json_compact

    simulator = GraphSimulator(conversations=5, messages=400, seed=3)
    world = simulator.page()
    conversation = world.generated_conversation(2)
    conversation.name = 'Zoë "Quote" \\ Name'
    messages, _ = world.message_window(conversation, skip_newest=0, limit=100)
    _, live = world.message_add(thread_id=conversation.key, text='<b>"hé"</b>\n', from_page=True)
    for fields in (MESSAGE_FIELDS.split(","), ["message", "id"], ["reply_to", "attachments"]):
        renderer = MessageRenderer(
            person=Participant(participant_id=conversation.psid, name=conversation.name),
            page=Participant(participant_id=PAGE, name="Simulated Shop"),
            fields=fields,
        )
        for message in [*messages, live]:
            assert renderer.json(message) == json_compact(renderer.item(message))


def test_the_same_seed_gives_the_same_messages_in_another_process():
    script = (
        "import hashlib, json\n"
        "from conversations.simulator.graph import GraphSimulator\n"
        "sim = GraphSimulator(conversations=20, messages=300, seed=9, other_folder_share=0.3)\n"
        "print(hashlib.sha256(json.dumps(sim.truth()).encode()).hexdigest())\n"
    )
    other = subprocess.run(
        [sys.executable, "-c", script],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**__import__("os").environ, "PYTHONHASHSEED": "123"},
    )
    import hashlib

    here = GraphSimulator(conversations=20, messages=300, seed=9, other_folder_share=0.3)
    assert other.returncode == 0, other.stderr
    assert other.stdout.strip() == hashlib.sha256(json.dumps(here.truth()).encode()).hexdigest()


@pytest.mark.slow
def test_the_management_command_serves_extra_pages():
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "graph_simulator",
            "--port",
            str(port),
            "--conversations",
            "5",
            "--messages",
            "10",
            "--extra-pages",
            "2",
            "--other-folder-share",
            "0.5",
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
        third = "111222335"
        state = requests.get(f"{base}/_control/state?page_id={third}", timeout=5).json()
        truth = requests.get(f"{base}/_control/truth?page_id={third}", timeout=5).json()
        served = get_as(base, f"/{third}/conversations", f"{TOKEN}-{third}", limit=100).json()
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert state["pages"] == [PAGE, "111222334", third]
    assert state["seed"] == 3
    inbox = [c["id"] for c in truth["conversations"] if c["folder"] == "inbox"]
    assert [n["id"] for n in served["data"]] == inbox
    assert len(inbox) < 5


def test_a_new_message_does_not_move_the_older_messages_in_time():
    simulator = GraphSimulator(conversations=5, messages=50, seed=41)
    thread = simulator.generated_conversation(2).key
    before = {m["id"]: m["created_time"] for m in simulator.truth()["conversations"][2]["messages"]}

    simulator.message_add(thread_id=thread, text="a new one")

    after = next(c for c in simulator.truth()["conversations"] if c["id"] == thread)
    times = {m["id"]: m["created_time"] for m in after["messages"]}
    assert {mid: times[mid] for mid in before} == before
    assert len(times) == len(before) + 1


def test_the_control_api_serves_a_threads_participants_wrong_and_right_again():
    simulator = GraphSimulator(conversations=3, messages=6)
    thread = simulator.generated_conversation(1).key

    def participants(base: str) -> list[dict]:
        body = get(base, f"/{PAGE}/conversations", fields="id,participants").json()
        return next(c for c in body["data"] if c["id"] == thread)["participants"]["data"]

    with simulator.running() as base:
        control = f"{base}/_control/participants"
        normal = participants(base)
        shapes = {}
        for kind in ("no_id", "page_only", "not_psid", "two_people"):
            answer = requests.post(control, json={"conversation": thread, "kind": kind}, timeout=5)
            assert answer.status_code == 200
            shapes[kind] = participants(base)
        restored = requests.post(control, json={"conversation": thread, "kind": None}, timeout=5)
        after = participants(base)
        refusals = [
            requests.post(control, json={"conversation": thread, "kind": "odd"}, timeout=5),
            requests.post(control, json={"kind": "no_id"}, timeout=5),
            requests.post(
                control, json={"conversation": "t_1999999999", "kind": "no_id"}, timeout=5
            ),
        ]

    assert [p["id"] for p in normal] == [simulator.generated_conversation(1).psid, PAGE]
    assert "id" not in shapes["no_id"][0]
    assert shapes["no_id"][1]["id"] == PAGE
    assert [p["id"] for p in shapes["page_only"]] == [PAGE]
    assert not shapes["not_psid"][0]["id"].isdigit()
    assert len(shapes["two_people"]) == 3
    assert restored.status_code == 200
    assert after == normal
    assert [answer.status_code for answer in refusals] == [400, 400, 404]


def test_the_management_command_serves_the_newest_threads_with_bad_participants():
    port = free_port()
    process = subprocess.Popen(
        [
            *(sys.executable, "manage.py", "graph_simulator", "--port", str(port)),
            *("--conversations", "6", "--messages", "12", "--bad-participants", "5"),
        ],
        cwd=PROJECT_ROOT,
        env={**__import__("os").environ, "DEBUG": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"

        def answers() -> bool:
            try:
                return requests.get(f"{base}/_control/state", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        assert wait_for(answers, timeout=30)
        served = get(base, f"/{PAGE}/conversations", fields="id,participants", limit=10).json()
    finally:
        process.terminate()
        process.wait(timeout=10)

    people = [
        [participant.get("id") for participant in conversation["participants"]["data"]]
        for conversation in served["data"]
    ]
    # Newest first: no id, the page alone, not a PSID, two people, no id again; then a good one
    assert people[0] == [None, PAGE]
    assert people[1] == [PAGE]
    assert not people[2][0].isdigit()
    assert len(people[3]) == 3
    assert people[4] == [None, PAGE]
    assert people[5][0].isdigit()
    assert people[5][1] == PAGE
