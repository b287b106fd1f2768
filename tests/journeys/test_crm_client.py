"""The CRM client against the simulator: 404 as None, retries, read-merge-write, headers."""

from __future__ import annotations

import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from evoflow.http import RetryPolicy, UpstreamUnavailable
from journeys.crm import CrmClient, CrmError


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


class _OddLabelsCrm(BaseHTTPRequestHandler):
    """A CRM answering label calls with valid JSON of the wrong shape."""

    body = b"[]"

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    do_POST = do_DELETE = _answer

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass


@pytest.mark.parametrize(
    "body", [b"[]", b'{"payload": 5}', b'{"payload": [1, 2]}', b'"vip"'], ids=str
)
@pytest.mark.parametrize("call", ["add", "remove"])
def test_a_label_answer_of_the_wrong_shape_is_a_crm_error(body, call):
    # given a CRM that answers label calls with JSON of another shape
    _OddLabelsCrm.body = body
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OddLabelsCrm)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = CrmClient(f"http://127.0.0.1:{server.server_address[1]}", token="t")

    # when a label is added or removed
    # then the client raises its own error, not a TypeError or AttributeError
    try:
        label_call = client.contact_label_add if call == "add" else client.contact_label_remove
        with pytest.raises(CrmError, match=f"crm label {call}: unexpected labels shape"):
            label_call(str(uuid.uuid4()), "vip")
    finally:
        server.shutdown()
        server.server_close()
