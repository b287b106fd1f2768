"""The CRM simulator against its contract, over real HTTP (and the shared base through it)."""

from __future__ import annotations

import time
import uuid

import pytest
import requests

from journeys.simulator import CrmSimulator


@pytest.fixture
def sim():
    simulator = CrmSimulator(seed=3)
    with simulator.running() as base_url:
        simulator.base_url = base_url  # type: ignore[attr-defined]
        yield simulator


def test_contacts_are_deterministic_from_the_seed(sim):
    contact_id = str(uuid.uuid4())
    other = CrmSimulator(seed=3)
    different_seed = CrmSimulator(seed=4)

    body = requests.get(f"{sim.base_url}/api/v1/contacts/{contact_id}", timeout=5).json()

    assert body == other.generated_contact(contact_id)
    assert body["name"] != ""
    assert body["email"].endswith("@example.com")
    assert different_seed.generated_contact(contact_id) != body


def test_unknown_and_malformed_ids_are_404(sim):
    missing = requests.get(
        f"{sim.base_url}/api/v1/contacts/00000000-1111-2222-3333-444444444444", timeout=5
    )
    malformed = requests.get(f"{sim.base_url}/api/v1/contacts/abc", timeout=5)

    assert missing.status_code == malformed.status_code == 404
    assert missing.json()["error"] == "not_found"


def test_patch_replaces_the_whole_custom_attributes_map(sim):
    contact_id = str(uuid.uuid4())
    url = f"{sim.base_url}/api/v1/contacts/{contact_id}"

    patched = requests.patch(url, json={"custom_attributes": {"stage": "new"}}, timeout=5).json()
    invalid = requests.patch(url, json={"nickname": "x"}, timeout=5)

    assert patched["custom_attributes"] == {"stage": "new"}  # "plan" is gone, like the real CRM
    assert invalid.status_code == 422


def test_labels_and_messages(sim):
    contact_id = str(uuid.uuid4())
    base = f"{sim.base_url}/api/v1/contacts/{contact_id}/labels"

    requests.post(base, json={"labels": ["a", "b"]}, timeout=5)
    removed = requests.delete(f"{base}/a", timeout=5).json()
    listed = requests.get(base, timeout=5).json()
    message = requests.post(
        f"{sim.base_url}/api/v1/conversations/9/messages", json={"content": "hi"}, timeout=5
    ).json()

    assert removed == listed == {"payload": ["b"]}
    assert (message["conversation_id"], message["content"], message["id"]) == ("9", "hi", 1)


def test_a_repeated_idempotency_key_is_replayed_without_a_second_effect(sim):
    url = f"{sim.base_url}/api/v1/conversations/9/messages"
    headers = {"Idempotency-Key": "k-1"}

    first = requests.post(url, json={"content": "hi"}, headers=headers, timeout=5)
    second = requests.post(url, json={"content": "hi"}, headers=headers, timeout=5)
    other = requests.post(
        url, json={"content": "hi"}, headers={"Idempotency-Key": "k-2"}, timeout=5
    )
    counters = requests.get(f"{sim.base_url}/_control/counters", timeout=5).json()
    effects = requests.get(f"{sim.base_url}/_control/effects", timeout=5).json()

    assert first.json() == second.json()
    assert second.headers["Idempotent-Replayed"] == "true"
    assert other.json()["id"] == 2
    assert counters["calls"]["conversations.messages.create"] == 3
    assert counters["idempotency_keys"]["conversations.messages.create"] == {"k-1": 2, "k-2": 1}
    assert effects == {
        "effects": {"conversations.messages.create": 2},
        "idempotency_keys": {"conversations.messages.create": {"k-1": 1, "k-2": 1}},
    }
    assert len(sim.messages()) == 2


def test_faults_throttling_slowness_and_reset(sim):
    url = f"{sim.base_url}/api/v1/contacts/{uuid.uuid4()}"
    requests.post(f"{sim.base_url}/_control/faults", json={"fault_rate": 1.0}, timeout=5)
    failed = requests.get(url, timeout=5)
    requests.post(
        f"{sim.base_url}/_control/faults", json={"fault_rate": 0.0, "slow_ms": 200}, timeout=5
    )
    started = time.monotonic()
    slow = requests.get(url, timeout=5)
    elapsed = time.monotonic() - started
    requests.post(f"{sim.base_url}/_control/faults", json={"slow_ms": 0}, timeout=5)
    requests.post(
        f"{sim.base_url}/_control/throttle", json={"rate": 1.0, "retry_after": 2}, timeout=5
    )
    throttled = requests.patch(url, json={"name": "x"}, timeout=5)
    bad = requests.post(f"{sim.base_url}/_control/throttle", json={"rate": 2}, timeout=5)
    requests.post(f"{sim.base_url}/_control/reset", timeout=5)
    after_reset = requests.get(f"{sim.base_url}/_control/counters", timeout=5).json()

    assert failed.status_code == 503
    assert failed.json() == {"error": "unavailable", "message": "injected fault"}
    assert slow.status_code == 200
    assert elapsed >= 0.2
    assert throttled.status_code == 429
    assert throttled.headers["Retry-After"] == "2"
    assert bad.status_code == 400
    assert after_reset["calls"] == {}
    assert sim.effects() == {"effects": {}, "idempotency_keys": {}}


def test_control_routes_set_and_delete_contacts(sim):
    contact_id = str(uuid.uuid4())
    url = f"{sim.base_url}/api/v1/contacts/{contact_id}"

    requests.put(f"{sim.base_url}/_control/contacts/{contact_id}", json={"name": "Set"}, timeout=5)
    named = requests.get(url, timeout=5).json()["name"]
    requests.delete(f"{sim.base_url}/_control/contacts/{contact_id}", timeout=5)
    gone = requests.get(url, timeout=5)

    assert named == "Set"
    assert gone.status_code == 404
