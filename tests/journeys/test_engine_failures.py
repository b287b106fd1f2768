"""The engine under errors nobody planned for: each one fails its own session (with a failed
step, never retried), never the batch, and never leaves a session active to be re-sent."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.db.models import F
from django.utils import timezone

from journeys.flows.flow import MAX_WAIT_SECONDS, RetryPolicy
from journeys.models import Journey, JourneySession, JourneyStep, SessionStatus
from journeys.services import (
    journey_update,
    session_retry,
    session_start,
    sessions_advance,
    sessions_resume_due,
)
from journeys.services.engine import runner, steps
from tests.journeys.factories import ContactFactory, JourneyFactory, linear_flow

pytestmark = pytest.mark.django_db


def _start(flow, *, contact_id=None, variables=None):
    journey = JourneyFactory(flow=flow)
    return session_start(
        journey_id=journey.pk, contact_id=str(contact_id or uuid.uuid4()), variables=variables
    )


def _hook_flow(url, **config):
    return linear_flow(("call", "http_request", {"url": url, **config}), ("end", "exit", {}))


def _make_due(session_id):
    JourneySession.objects.filter(pk=session_id).update(
        wait_until=timezone.now() - timedelta(seconds=1)
    )


def _expire_lease(session_id):
    JourneySession.objects.filter(pk=session_id).update(
        lease_until=timezone.now() - timedelta(seconds=1)
    )


class _NanHook(BaseHTTPRequestHandler):
    """A hook outside the system that answers a JSON body jsonb cannot store."""

    calls: list[str] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        _NanHook.calls.append(self.headers.get("Idempotency-Key") or "")
        body = b'{"v": NaN, "w": 1e400, "z": "a\\u0000b"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass


@pytest.fixture
def nan_hook(settings) -> Iterator[str]:
    _NanHook.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NanHook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    settings.JOURNEYS_HTTP_ALLOWED_HOSTS = ["127.0.0.1"]
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()
    server.server_close()


def test_a_wait_saved_beyond_the_bound_fails_its_session_and_the_batch_goes_on():
    # given a legacy flow (saved before waits were bounded) and a good session in the same batch
    bad = _start(linear_flow(("a", "wait", {"days": 1}), ("b", "exit", {})))
    Journey.objects.filter(sessions__pk=bad).update(
        flow=linear_flow(("a", "wait", {"days": 1e7}), ("b", "exit", {})), version=F("version") + 1
    )
    good = _start(linear_flow(("a", "set_variable", {"name": "x", "value": 1}), ("b", "exit", {})))

    # when one worker advances both
    report = sessions_advance(session_ids=[bad, good])

    # then the bad one failed (no lease left), the good one completed
    assert (report.claimed, report.completed, report.failed) == (2, 1, 1)
    bad_session = JourneySession.objects.get(pk=bad)
    assert (bad_session.status, bad_session.lease_until) == (SessionStatus.FAILED, None)
    assert bad_session.error["message"] == (
        'invalid flow: node "a" (wait): config: Value error, '
        "the wait must not last more than 365 days"
    )
    assert JourneySession.objects.get(pk=good).status == SessionStatus.COMPLETED


@pytest.mark.parametrize(
    ("variables", "contact_name", "header"),
    [
        ({"token": "secret\nvalue"}, "Ada", "{{variables.token}}"),
        ({}, "Zoë €", "{{contact.name}}"),
    ],
    ids=["newline", "not-latin-1"],
)
def test_a_header_that_cannot_be_sent_fails_its_session_without_quoting_it(
    crm_simulator, settings, variables, contact_name, header
):
    # given a session whose rendered header cannot be sent, first in a batch with a good one
    contact = ContactFactory(name=contact_name)
    url = settings.CRM_BASE_URL + "/hooks/h"
    bad = _start(
        _hook_flow(url, headers={"X-Secret": header}), contact_id=contact.pk, variables=variables
    )
    good = _start(_hook_flow(url))

    # when one worker advances both
    report = sessions_advance(session_ids=[bad, good])

    # then the bad one failed at once (not retried), the good one made its call
    assert (report.completed, report.failed) == (1, 1)
    session = JourneySession.objects.get(pk=bad)
    assert session.status == SessionStatus.FAILED
    step = JourneyStep.objects.get(session_id=bad)
    assert (step.status, step.attempt) == ("failed", 1)
    assert session.error["message"] == step.error
    assert step.error.startswith("the request could not be sent (")
    assert "secret" not in step.error
    assert "€" not in step.error
    assert JourneySession.objects.get(pk=good).status == SessionStatus.COMPLETED
    assert crm_simulator.counters.snapshot()["idempotency_keys"]["hooks"] == {
        f"journey-session-{good}-step-1": 1
    }


def test_a_mapped_answer_jsonb_cannot_store_fails_the_session_once(nan_hook):
    # given a hook answering NaN, mapped into a variable
    session_id = _start(_hook_flow(nan_hook, response_mapping={"v": "v"}))

    # when the worker runs the call, and the schedule later looks for stalled sessions
    report = sessions_advance(session_ids=[session_id])
    _expire_lease(session_id)
    resumed = sessions_resume_due()
    again = sessions_advance(session_ids=[session_id])

    # then the session failed with its step, and the hook was called exactly once
    assert (report.failed, resumed.restarted_stalled, again.claimed) == (1, 0, 0)
    session = JourneySession.objects.get(pk=session_id)
    assert session.status == SessionStatus.FAILED
    assert session.variables == {}
    message = "unexpected error: UnstorableValue: a number is not finite (NaN or an infinity)"
    assert session.error["message"] == message
    step = JourneyStep.objects.get(session_id=session_id)
    assert (step.status, step.attempt, step.error) == ("failed", 1, message)
    assert _NanHook.calls == [f"journey-session-{session_id}-step-1"]


@pytest.mark.parametrize("path", ["w", "z"])
def test_an_infinity_or_a_nul_in_a_mapped_answer_fails_the_session(nan_hook, path):
    # given a hook answering 1e400 (an infinity once parsed) or a NUL character
    session_id = _start(_hook_flow(nan_hook, response_mapping={"v": path}))

    # when the worker runs the call
    report = sessions_advance(session_ids=[session_id])

    # then the session failed instead of staying active
    assert report.failed == 1
    session = JourneySession.objects.get(pk=session_id)
    assert (session.status, session.lease_until) == (SessionStatus.FAILED, None)
    assert session.error["message"].startswith("unexpected error: UnstorableValue: ")


def test_an_unexpected_error_in_a_node_fails_only_its_session(monkeypatch):
    # given a node whose evaluation raises (a bug), in a batch with a good session
    bad = _start(linear_flow(("boom", "set_variable", {"name": "x", "value": 1})))
    good = _start(linear_flow(("a", "set_variable", {"name": "x", "value": 1}), ("b", "exit", {})))
    evaluate = steps.node_evaluate

    def evaluate_or_crash(node, state):
        if node.id == "boom":
            raise KeyError("boom")
        return evaluate(node, state)

    monkeypatch.setattr(steps, "node_evaluate", evaluate_or_crash)

    # when one worker advances both
    report = sessions_advance(session_ids=[bad, good])

    # then only the bad one failed, with a failed step
    assert (report.completed, report.failed) == (1, 1)
    session = JourneySession.objects.get(pk=bad)
    assert session.status == SessionStatus.FAILED
    assert session.error["message"] == "unexpected error: KeyError: 'boom'"
    step = JourneyStep.objects.get(session_id=bad)
    assert (step.node_id, step.status) == ("boom", "failed")
    assert JourneySession.objects.get(pk=good).status == SessionStatus.COMPLETED


def test_a_retry_backoff_past_datetimes_range_is_clamped(crm_simulator, settings):
    # given a failing call retried 20 times, 3600 s * 10^(attempt-1) apart
    crm_simulator.faults.fault_rate = 1.0
    flow = {
        "nodes": [
            {
                "id": "call",
                "type": "http_request",
                "config": {"url": settings.CRM_BASE_URL + "/hooks/x"},
                "retry": {"attempts": 20, "backoff_seconds": 3600, "backoff_multiplier": 10},
            },
            {"id": "end", "type": "exit"},
        ],
        "edges": [{"source": "call", "target": "end"}],
    }
    session_id = _start(flow)

    # when it fails ten times (the ninth backoff would be 3.6e11 seconds)
    sessions_advance(session_ids=[session_id])
    for _ in range(9):
        _make_due(session_id)
        sessions_resume_due()
        sessions_advance(session_ids=[session_id])

    # then it still waits, at most 365 days
    session = JourneySession.objects.get(pk=session_id)
    assert session.status == SessionStatus.WAITING
    assert session.context["retry"] == {"attempt": 10}
    assert session.wait_until - timezone.now() <= timedelta(seconds=MAX_WAIT_SECONDS)
    assert session.wait_until - timezone.now() > timedelta(days=364)
    assert RetryPolicy(attempts=20, backoff_seconds=3600, backoff_multiplier=10).delay_after(
        400
    ) == (MAX_WAIT_SECONDS)


def test_a_step_restarted_after_its_last_attempt_fails_without_a_call(crm_simulator, settings):
    # given a call whose worker died during each of its 3 attempts (the step stays started)
    session_id = _start(_hook_flow(settings.CRM_BASE_URL + "/hooks/x"))
    JourneyStep.objects.create(
        session_id=session_id,
        step_number=1,
        node_id="call",
        node_type="http_request",
        status="started",
        attempt=3,
        idempotency_key=f"journey-session-{session_id}-step-1",
    )

    # when a worker restarts the session
    report = sessions_advance(session_ids=[session_id])

    # then it gives up instead of sending a fourth time
    assert report.failed == 1
    session = JourneySession.objects.get(pk=session_id)
    assert session.status == SessionStatus.FAILED
    message = "gave up after 3 attempts (the worker stopped during the call)"
    assert session.error["message"] == message
    step = JourneyStep.objects.get(session_id=session_id)
    assert (step.status, step.attempt, step.error) == ("failed", 3, message)
    assert crm_simulator.counters.calls("hooks") == 0


def test_a_flow_edited_between_claim_and_load_runs_the_flow_read(monkeypatch):
    # given a journey whose flow is edited right after a worker claimed its session
    journey = JourneyFactory(
        flow=linear_flow(("a", "set_variable", {"name": "x", "value": 1}), ("b", "exit", {}))
    )
    session_id = session_start(journey_id=journey.pk, contact_id=str(uuid.uuid4()))
    claim = runner.sessions_claim

    def claim_then_edit(session_ids, token):
        claimed = claim(session_ids, token)
        journey_update(
            journey_id=journey.pk,
            flow=linear_flow(("a", "set_variable", {"name": "x", "value": 2}), ("b", "exit", {})),
        )
        return claimed

    monkeypatch.setattr(runner, "sessions_claim", claim_then_edit)

    # when the worker advances it
    report = sessions_advance(session_ids=[session_id])

    # then the session ran the flow it read, to the end
    assert (report.claimed, report.completed) == (1, 1)
    session = JourneySession.objects.get(pk=session_id)
    assert (session.status, session.variables) == (SessionStatus.COMPLETED, {"x": 2})


def test_the_time_budget_is_checked_before_each_call(crm_simulator, settings, monkeypatch):
    # given two sessions with a slow call each, and a budget shorter than one call
    crm_simulator.faults.slow_ms = 400
    monkeypatch.setattr(runner, "TASK_TIME_BUDGET_SECONDS", 0.2)
    flow = linear_flow(("call", "http_request", {"url": settings.CRM_BASE_URL + "/hooks/slow"}))
    first = _start(flow)
    second = _start(flow)

    # when one worker advances both
    report = sessions_advance(session_ids=[first, second])

    # then it made the first call only and handed the second session over
    assert (report.completed, report.handed_over) == (1, 1)
    assert JourneySession.objects.get(pk=first).status == SessionStatus.COMPLETED
    assert report.session_ids_handed_over == [second]
    assert crm_simulator.counters.calls("hooks") == 1
    handed = JourneySession.objects.get(pk=second)
    assert (handed.status, handed.step_count, handed.lease_until) == ("active", 0, None)


def test_a_task_hands_over_before_its_sessions_leases_run_out(crm_simulator, settings):
    # given a session lease of one second (the budget is then half of it, not 60 s), and two
    # sessions whose call takes longer than that half
    settings.JOURNEYS_SESSION_LEASE_SECONDS = 1
    crm_simulator.faults.slow_ms = 800
    flow = linear_flow(("call", "http_request", {"url": settings.CRM_BASE_URL + "/hooks/slow"}))
    first = _start(flow)
    second = _start(flow)

    # when one worker advances both
    report = sessions_advance(session_ids=[first, second])

    # then it handed the second over with its lease released, instead of calling for it after
    # its lease had run out (when another worker may already have claimed it)
    assert runner.task_time_budget() == 0.5
    assert (report.completed, report.handed_over) == (1, 1)
    assert report.session_ids_handed_over == [second]
    assert crm_simulator.counters.calls("hooks") == 1
    handed = JourneySession.objects.get(pk=second)
    assert (handed.status, handed.step_count, handed.lease_until) == ("active", 0, None)


def test_json_values_jsonb_refuses_are_caught_before_the_database():
    # given variables holding a NUL character
    # when a session starts with them through the service
    # then nothing reaches the database and the error names the problem
    from journeys.services.funnel import UnstorableValue

    with pytest.raises(UnstorableValue, match="NUL"):
        _start(linear_flow(("a", "exit", {})), variables={"x": "a\x00b"})
    assert JourneySession.objects.count() == 0
    # a literal backslash followed by "u0000" is an ordinary string
    session_id = _start(linear_flow(("a", "exit", {})), variables={"x": "\\u0000"})
    assert JourneySession.objects.get(pk=session_id).variables == {"x": "\\u0000"}


def test_a_retried_session_sends_its_failed_call_again_under_the_same_key(crm_simulator, settings):
    # given a session whose call failed for good (one attempt, the hook answering 503)
    crm_simulator.faults.fault_rate = 1.0
    flow = {
        "nodes": [
            {
                "id": "call",
                "type": "http_request",
                "config": {"url": settings.CRM_BASE_URL + "/hooks/x"},
                "retry": {"attempts": 1},
            },
            {"id": "end", "type": "exit"},
        ],
        "edges": [{"source": "call", "target": "end"}],
    }
    failed_id = _start(flow)
    sessions_advance(session_ids=[failed_id])
    assert JourneySession.objects.get(pk=failed_id).status == SessionStatus.FAILED

    # when it is retried and the hook works again
    crm_simulator.faults.fault_rate = 0.0
    retry_id = session_retry(session_id=failed_id)
    sessions_advance(session_ids=[retry_id])

    # then the new session made the call under the failed step's key
    key = f"journey-session-{failed_id}-step-1"
    assert JourneySession.objects.get(pk=retry_id).status == SessionStatus.COMPLETED
    assert JourneyStep.objects.get(session_id=retry_id, step_number=1).idempotency_key == key
    assert crm_simulator.counters.snapshot()["idempotency_keys"]["hooks"] == {key: 2}


def test_a_stored_call_error_never_shows_the_urls_query(crm_simulator, settings):
    # given a call whose URL carries a token in its query, answered 503
    crm_simulator.faults.fault_rate = 1.0
    url = settings.CRM_BASE_URL + "/hooks/x?sig=s3cr3t&user=ada"
    flow = {
        "nodes": [{"id": "call", "type": "http_request", "config": {"url": url}}],
        "edges": [],
    }
    flow["nodes"][0]["retry"] = {"attempts": 1}
    session_id = _start(flow)

    # when the call fails
    sessions_advance(session_ids=[session_id])

    # then the stored messages show the URL without its query
    session = JourneySession.objects.get(pk=session_id)
    shown = settings.CRM_BASE_URL + "/hooks/x?***"
    assert session.error["message"] == f"http POST {shown} failed after 1 attempts (HTTP 503)"
    assert JourneyStep.objects.get(session_id=session_id).error == session.error["message"]
