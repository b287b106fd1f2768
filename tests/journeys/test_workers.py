"""Acceptance with real `manage.py qcluster` subprocesses: a SIGKILL mid-journey, and two
clusters sharing 1,000 sessions. Every step happens once; every call once per key."""

from __future__ import annotations

import os
import signal
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest
from django.db.models import Count

from journeys.models import JourneySession, JourneyStep, SessionStatus
from journeys.services import session_start, sessions_resume_due, sessions_start_many
from journeys.services.engine import idempotency_key_for
from journeys.simulator import CrmSimulator
from tests.helpers import qcluster, wait_for
from tests.journeys.factories import JourneyFactory, linear_flow


@pytest.fixture
def simulator() -> Iterator[tuple[CrmSimulator, str]]:
    sim = CrmSimulator(seed=11)
    with sim.running() as base_url:
        yield sim, base_url


@pytest.fixture
def worker_env(subprocess_env, simulator) -> dict[str, str]:
    _, base_url = simulator
    return {
        **subprocess_env,
        "CRM_BASE_URL": base_url,
        "JOURNEYS_SESSION_LEASE_SECONDS": "3",
        "JOURNEYS_ENRICH_CONTACTS": "0",
        "Q_WORKERS": "1",
    }


def _effect_flow(base_url: str) -> dict:
    return linear_flow(
        ("hello", "send_message", {"conversation_id": "1", "content": "hello"}),
        ("ping", "http_request", {"url": base_url + "/hooks/ping", "body": {"n": 1}}),
        ("bye", "send_message", {"conversation_id": "1", "content": "bye"}),
        ("pong", "http_request", {"url": base_url + "/hooks/pong", "body": {"n": 2}}),
        ("end", "exit", {}),
    )


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_mid_journey_resumes_with_exactly_one_effect_per_key(simulator, worker_env):
    sim, base_url = simulator
    sim.faults.slow_ms = 800  # every call takes long enough to kill the worker inside one
    journey = JourneyFactory(flow=_effect_flow(base_url))
    session_id = session_start(journey_id=journey.pk, contact_id=str(uuid.uuid4()))

    ping_key = idempotency_key_for(session_id, 2)

    def ping_received() -> bool:
        return sim.counters.snapshot()["idempotency_keys"].get("hooks", {}).get(ping_key) == 1

    # A worker runs until the second side effect (the first HTTP request) has reached the
    # simulator, which takes 800 ms to answer...
    with qcluster(worker_env) as worker:
        assert wait_for(ping_received, timeout=60, interval=0.02)
        # ...and dies inside that call, without any chance to clean up.
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
    assert JourneyStep.objects.get(session_id=session_id, step_number=2).status == "started"
    killed_at = JourneySession.objects.get(pk=session_id)
    assert killed_at.status == SessionStatus.ACTIVE
    assert killed_at.step_count == 1
    # The call the dead worker made still reaches the simulator, which applies it once.
    assert wait_for(lambda: sim.effects()["effects"].get("hooks") == 1, timeout=10)

    # A new worker; the schedule's job finds the session stalled once its lease is over.
    with qcluster(worker_env):
        assert wait_for(
            lambda: sessions_resume_due().restarted_stalled == 1, timeout=30, interval=0.5
        )
        done = wait_for(
            lambda: JourneySession.objects.get(pk=session_id).status == SessionStatus.COMPLETED,
            timeout=60,
        )

    session = JourneySession.objects.get(pk=session_id)
    assert done, (session.status, session.error)
    steps = list(
        JourneyStep.objects.filter(session=session)
        .order_by("step_number")
        .values_list("node_id", "status", "attempt")
    )
    assert steps == [
        ("hello", "completed", 1),
        ("ping", "completed", 2),  # re-sent once after the kill
        ("bye", "completed", 1),
        ("pong", "completed", 1),
        ("end", "completed", 1),
    ]
    keys = {step: idempotency_key_for(session_id, step) for step in (1, 2, 3, 4)}
    calls = sim.counters.snapshot()["idempotency_keys"]
    effects = sim.effects()["idempotency_keys"]
    # Calls received: the killed step's key twice (the re-send), every other key once.
    assert calls["conversations.messages.create"] == {keys[1]: 1, keys[3]: 1}
    assert calls["hooks"] == {keys[2]: 2, keys[4]: 1}
    # Distinct effects: exactly one per key, the re-send was replayed, not applied again.
    assert effects["conversations.messages.create"] == {keys[1]: 1, keys[3]: 1}
    assert effects["hooks"] == {keys[2]: 1, keys[4]: 1}
    assert [m["content"] for m in sim.messages()] == ["hello", "bye"]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_two_clusters_run_a_thousand_sessions_with_every_step_once(simulator, worker_env):
    sim, _ = simulator
    flow = linear_flow(
        ("start", "entry", {}),
        ("hello", "send_message", {"conversation_id": "{{contact.id}}", "content": "hi"}),
        ("mark", "set_variable", {"name": "greeted", "value": True}),
        ("check", "condition", {"field": "variables.greeted", "operator": "equals", "value": True}),
        ("end", "exit", {}),
    )
    flow["edges"][-1]["handle"] = "true"
    journey = JourneyFactory(flow=flow)
    contacts = [str(uuid.uuid4()) for _ in range(1000)]
    env = {**worker_env, "Q_WORKERS": "2"}

    with qcluster(env), qcluster(env):
        started = sessions_start_many(journey_id=journey.pk, contact_ids=contacts)
        finished = wait_for(
            lambda: (
                not JourneySession.objects.filter(journey=journey)
                .exclude(status=SessionStatus.COMPLETED)
                .exists()
            ),
            timeout=180,
            interval=0.5,
        )

    assert len(started.session_ids) == 1000
    assert finished, Counter(JourneySession.objects.values_list("status", flat=True))
    assert JourneySession.objects.filter(journey=journey, step_count=5).count() == 1000
    assert JourneyStep.objects.filter(session__journey=journey).count() == 5000
    assert not JourneyStep.objects.exclude(status="completed").exists()
    per_node = dict(JourneyStep.objects.values_list("node_id").annotate(n=Count("id")).order_by())
    assert per_node == {"start": 1000, "hello": 1000, "mark": 1000, "check": 1000, "end": 1000}
    calls = sim.counters.snapshot()["idempotency_keys"]["conversations.messages.create"]
    assert len(calls) == 1000
    assert set(calls.values()) == {1}
    assert sim.effects()["effects"]["conversations.messages.create"] == 1000
