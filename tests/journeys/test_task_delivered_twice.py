"""J4 with the advance task delivered twice at the same time, in the middle of a session.

The queue delivers at least once, so two workers may run the same `sessions_advance_task` at
once. Here the session has already run a step and waited; it is resumed, and two threads (two
database connections, as two workers) run its advance task concurrently: one while the other
is inside a node's call to the CRM, or both released together. Exactly one claims the session;
every step runs once, every call reaches the CRM once per idempotency key.
"""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from journeys.models import JourneySession, JourneyStep, SessionStatus
from journeys.services import session_start, sessions_resume_due
from journeys.services.engine import idempotency_key_for
from journeys.tasks import sessions_advance_task
from tests.helpers import wait_for
from tests.journeys.conftest import advance_all
from tests.journeys.factories import JourneyFactory, linear_flow

pytestmark = pytest.mark.django_db(transaction=True)


def _flow(base_url: str) -> dict[str, Any]:
    return linear_flow(
        ("pause", "wait", {"minutes": 5}),
        ("hello", "send_message", {"conversation_id": "1", "content": "hello"}),
        ("ping", "http_request", {"url": base_url + "/hooks/ping", "body": {"n": 1}}),
        ("bye", "send_message", {"conversation_id": "1", "content": "bye"}),
        ("end", "exit", {}),
    )


class Delivery(threading.Thread):
    """One delivery of the advance task, on its own connection, as a worker would run it."""

    def __init__(self, session_id: int, start: threading.Barrier | None = None) -> None:
        super().__init__(daemon=True)
        self.session_id = session_id
        self.start_together = start
        self.report: dict[str, Any] | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            if self.start_together is not None:
                self.start_together.wait(timeout=10)
            self.report = sessions_advance_task([self.session_id])
        except BaseException as error:  # reported by the test, not lost in the thread
            self.error = error
        finally:
            connection.close()


def _resumed_mid_session(settings, crm_simulator) -> int:
    """A session that ran its first step (a wait) and was woken: active at step 2."""
    settings.JOURNEYS_HTTP_ALLOWED_HOSTS = ["*"]
    journey = JourneyFactory(flow=_flow(settings.CRM_BASE_URL))
    session_id = session_start(journey_id=journey.pk, contact_id=str(uuid.uuid4()))
    advance_all()
    JourneySession.objects.filter(pk=session_id).update(
        wait_until=timezone.now() - timedelta(seconds=1)
    )
    assert sessions_resume_due().resumed == 1
    session = JourneySession.objects.get(pk=session_id)
    assert (session.status, session.step_count) == (SessionStatus.ACTIVE, 1)
    # Every call of the CRM takes long enough for the second delivery to arrive during one.
    crm_simulator.faults.slow_ms = 300
    return session_id


@pytest.mark.parametrize("arrival", ["during_a_call", "at_the_same_time"])
def test_the_advance_task_delivered_twice_concurrently_mid_session_runs_each_step_once(
    settings, crm_simulator, arrival: str
) -> None:
    session_id = _resumed_mid_session(settings, crm_simulator)
    hello_key = idempotency_key_for(session_id, 2)

    if arrival == "during_a_call":
        first, second = Delivery(session_id), Delivery(session_id)
        first.start()

        def hello_in_flight() -> bool:
            keys = crm_simulator.counters.snapshot()["idempotency_keys"]
            return keys.get("conversations.messages.create", {}).get(hello_key) == 1

        assert wait_for(hello_in_flight, timeout=30, interval=0.01)
        second.start()
    else:
        barrier = threading.Barrier(2)
        first, second = Delivery(session_id, barrier), Delivery(session_id, barrier)
        first.start()
        second.start()
    for delivery in (first, second):
        delivery.join(timeout=60)
        assert not delivery.is_alive()
        assert delivery.error is None, delivery.error

    reports = sorted(
        ((report["claimed"], report["steps"]) for report in (first.report, second.report)),
        reverse=True,
    )
    assert reports == [(1, 4), (0, 0)]
    session = JourneySession.objects.get(pk=session_id)
    assert (session.status, session.step_count, session.ended_reason) == (
        SessionStatus.COMPLETED,
        5,
        "exit",
    )
    assert list(
        JourneyStep.objects.filter(session_id=session_id)
        .order_by("step_number")
        .values_list("node_id", "status", "attempt")
    ) == [
        ("pause", "completed", 1),
        ("hello", "completed", 1),
        ("ping", "completed", 1),
        ("bye", "completed", 1),
        ("end", "completed", 1),
    ]
    keys = {step: idempotency_key_for(session_id, step) for step in (2, 3, 4)}
    calls = crm_simulator.counters.snapshot()["idempotency_keys"]
    assert calls["conversations.messages.create"] == {keys[2]: 1, keys[4]: 1}
    assert calls["hooks"] == {keys[3]: 1}
    assert [message["content"] for message in crm_simulator.messages()] == ["hello", "bye"]
