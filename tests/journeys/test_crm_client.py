"""The CRM client against the simulator: 404 as None, retries, read-merge-write, headers."""

from __future__ import annotations

import uuid

import pytest

from evoflow.http import RetryPolicy, UpstreamUnavailable
from journeys.crm import CrmClient


@pytest.fixture
def client_for(crm_simulator, settings):
    def make(attempts: int = 3) -> CrmClient:
        return CrmClient(
            settings.CRM_BASE_URL,
            token="secret-token",
            retry=RetryPolicy(max_attempts=attempts, backoff_base=0.01),
        )

    return make


def test_a_missing_contact_is_none_not_an_error(client_for):
    assert client_for().contact_get("00000000-0000-4000-8000-000000000000") is None


def test_get_parses_the_contact(client_for, crm_simulator):
    contact_id = str(uuid.uuid4())

    contact = client_for().contact_get(contact_id)

    expected = crm_simulator.generated_contact(contact_id)
    assert contact is not None
    assert (contact.name, contact.email, contact.phone_number) == (
        expected["name"],
        expected["email"],
        expected["phone_number"],
    )


def test_merge_keeps_the_attributes_it_does_not_change(client_for, crm_simulator):
    contact_id = str(uuid.uuid4())
    plan = crm_simulator.generated_contact(contact_id)["custom_attributes"]["plan"]

    updated = client_for().contact_custom_attributes_merge(contact_id, {"stage": "lead"})

    assert updated is not None
    assert updated.custom_attributes == {"plan": plan, "stage": "lead"}


def test_429_with_retry_after_is_retried(client_for, crm_simulator, monkeypatch):
    crm_simulator.throttle_rate = 1.0
    crm_simulator.retry_after_seconds = 0
    client = client_for(attempts=2)
    waits: list[float] = []
    client.sleep = waits.append

    with pytest.raises(UpstreamUnavailable, match="HTTP 429"):
        client.contact_label_add(str(uuid.uuid4()), "x")

    assert waits == [0.0]
    assert crm_simulator.counters.calls("contacts.labels.add") == 2


def test_5xx_is_retried_and_then_succeeds(client_for, crm_simulator):
    crm_simulator.faults.fault_rate = 1.0
    client = client_for(attempts=3)
    calls = []

    def heal(seconds: float) -> None:
        calls.append(seconds)
        crm_simulator.faults.fault_rate = 0.0

    client.sleep = heal
    message = client.conversation_message_send("7", content="hi", idempotency_key="k")

    assert message["content"] == "hi"
    assert len(calls) == 1
    assert crm_simulator.counters.snapshot()["idempotency_keys"][
        "conversations.messages.create"
    ] == {"k": 2}
