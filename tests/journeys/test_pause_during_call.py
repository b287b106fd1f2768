"""Pause then resume while a worker waits for a node's answer: no second worker sends the same
step meanwhile. Real threads, separate connections, the CRM simulator over HTTP."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from django.db import connection

from journeys.models import JourneySession, JourneyStep, SessionStatus
from journeys.services import session_pause, session_resume, session_start, sessions_advance
from tests.journeys.factories import JourneyFactory, linear_flow


@pytest.mark.django_db(transaction=True)
def test_a_resumed_session_is_not_claimed_while_its_call_is_in_flight(crm_simulator, settings):
    # given a session whose only node is a slow call, advanced by worker A
    crm_simulator.faults.slow_ms = 1500
    journey = JourneyFactory(
        flow=linear_flow(("call", "http_request", {"url": settings.CRM_BASE_URL + "/hooks/s"}))
    )
    session_id = session_start(journey_id=journey.pk, contact_id=str(uuid.uuid4()))
    reports = {}

    def worker_a() -> None:
        try:
            reports["a"] = sessions_advance(session_ids=[session_id])
        finally:
            connection.close()

    thread = threading.Thread(target=worker_a)
    thread.start()
    deadline = time.monotonic() + 5
    while not JourneyStep.objects.filter(session_id=session_id).exists():
        assert time.monotonic() < deadline, "worker A never started its call"
        time.sleep(0.02)

    # when the session is paused and resumed during the call, and worker B runs the resume's task
    session_pause(session_id=session_id)
    session_resume(session_id=session_id)
    report_b = sessions_advance(session_ids=[session_id])
    thread.join()

    # then B claimed nothing, the hook got one request, and A finished the session
    assert report_b.claimed == 0
    key = f"journey-session-{session_id}-step-1"
    assert crm_simulator.counters.snapshot()["idempotency_keys"]["hooks"] == {key: 1}
    assert (reports["a"].claimed, reports["a"].completed) == (1, 1)
    session = JourneySession.objects.get(pk=session_id)
    assert (session.status, session.step_count) == (SessionStatus.COMPLETED, 1)
    assert list(JourneyStep.objects.filter(session_id=session_id).values_list("status")) == [
        ("completed",)
    ]


@pytest.mark.django_db(transaction=True)
def test_a_paused_session_keeps_its_lease_and_the_worker_drops_it(crm_simulator, settings):
    # given a worker in the middle of a slow call
    crm_simulator.faults.slow_ms = 1000
    journey = JourneyFactory(
        flow=linear_flow(("call", "http_request", {"url": settings.CRM_BASE_URL + "/hooks/s"}))
    )
    session_id = session_start(journey_id=journey.pk, contact_id=str(uuid.uuid4()))
    reports = {}

    def worker() -> None:
        try:
            reports["a"] = sessions_advance(session_ids=[session_id])
        finally:
            connection.close()

    thread = threading.Thread(target=worker)
    thread.start()
    deadline = time.monotonic() + 5
    while not JourneyStep.objects.filter(session_id=session_id).exists():
        assert time.monotonic() < deadline, "the worker never started its call"
        time.sleep(0.02)
    lease_until = JourneySession.objects.get(pk=session_id).lease_until

    # when the session is paused during the call and stays paused
    session_pause(session_id=session_id)
    thread.join()

    # then the worker dropped it; the lease it held is unchanged, the step still started
    assert reports["a"].lost == 1
    session = JourneySession.objects.get(pk=session_id)
    assert (session.status, session.lease_until) == (SessionStatus.PAUSED, lease_until)
    assert list(JourneyStep.objects.filter(session_id=session_id).values_list("status")) == [
        ("started",)
    ]
