"""The engine: node types, interpolation, branches, retries and endings, against the CRM
simulator over real HTTP."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from journeys.flows.nodes import split_bucket
from journeys.models import Contact, JourneySession, JourneyStep, SessionStatus
from journeys.services import contact_event_ingest, session_start, sessions_resume_due
from tests.journeys.conftest import advance_all
from tests.journeys.factories import ContactFactory, JourneyFactory, linear_flow

pytestmark = pytest.mark.django_db


def _start(flow, contact_id=None, **journey_fields):
    journey = JourneyFactory(flow=flow, **journey_fields)
    contact_id = contact_id or uuid.uuid4()
    session_id = session_start(journey_id=journey.pk, contact_id=str(contact_id))
    return JourneySession.objects.get(pk=session_id)


def _make_due(session):
    JourneySession.objects.filter(pk=session.pk).update(
        wait_until=timezone.now() - timedelta(seconds=1)
    )


def test_set_variable_interpolates_contact_and_variables():
    contact = ContactFactory(name="Ada", custom_attributes={"plan": "pro"})
    session = _start(
        linear_flow(
            ("a", "set_variable", {"name": "first", "value": "Hello {{contact.name}}"}),
            (
                "b",
                "set_variable",
                {
                    "name": "second",
                    "value": "{{variables.first}} on {{contact.custom_attributes.plan}}",
                },
            ),
            ("c", "set_variable", {"name": "raw", "value": "{{contact.custom_attributes}}"}),
        ),
        contact_id=contact.pk,
    )

    advance_all()

    session.refresh_from_db()
    assert session.variables == {
        "first": "Hello Ada",
        "second": "Hello Ada on pro",
        "raw": {"plan": "pro"},
    }
    assert session.status == SessionStatus.COMPLETED
    assert session.ended_reason == 'no outgoing edge from node "c"'


@pytest.mark.parametrize(
    ("field", "operator", "value", "expected"),
    [
        ("contact.name", "equals", "Ada", "yes"),
        ("contact.name", "not_equals", "Ada", "no"),
        ("contact.name", "contains", "ad", "yes"),
        ("contact.custom_attributes.score", "greater_than", 10, "yes"),
        ("contact.custom_attributes.score", "less_than", 10, "no"),
        ("contact.custom_attributes.score", "exists", None, "yes"),
        ("contact.custom_attributes.missing", "exists", None, "no"),
        ("variables.count", "equals", 3, "yes"),
    ],
)
def test_condition_operators(field, operator, value, expected):
    contact = ContactFactory(name="Ada", custom_attributes={"score": 42})
    flow = {
        "nodes": [
            {"id": "count", "type": "set_variable", "config": {"name": "count", "value": 3}},
            {
                "id": "if",
                "type": "condition",
                "config": {"field": field, "operator": operator, "value": value},
            },
            {"id": "yes", "type": "exit", "config": {"reason": "yes"}},
            {"id": "no", "type": "exit", "config": {"reason": "no"}},
        ],
        "edges": [
            {"source": "count", "target": "if"},
            {"source": "if", "target": "yes", "handle": "true"},
            {"source": "if", "target": "no", "handle": "false"},
        ],
    }
    session = _start(flow, contact_id=contact.pk)

    advance_all()

    session.refresh_from_db()
    assert (session.status, session.ended_reason) == (SessionStatus.COMPLETED, expected)


def test_split_is_stable_per_contact_and_follows_the_percentages():
    flow = {
        "nodes": [
            {
                "id": "ab",
                "type": "split",
                "config": {
                    "branches": [
                        {"handle": "a", "percentage": 30},
                        {"handle": "b", "percentage": 70},
                    ]
                },
            },
            {"id": "a", "type": "exit", "config": {"reason": "a"}},
            {"id": "b", "type": "exit", "config": {"reason": "b"}},
        ],
        "edges": [
            {"source": "ab", "target": "a", "handle": "a"},
            {"source": "ab", "target": "b", "handle": "b"},
        ],
    }
    journey = JourneyFactory(flow=flow)
    contacts = [uuid.uuid4() for _ in range(60)]
    for contact_id in contacts:
        session_start(journey_id=journey.pk, contact_id=str(contact_id))

    advance_all()

    for contact_id in contacts:
        expected = "a" if split_bucket(str(contact_id), "ab") < 30 else "b"
        session = JourneySession.objects.get(contact_id=contact_id)
        assert session.ended_reason == expected
    assert split_bucket(str(contacts[0]), "ab") == split_bucket(str(contacts[0]), "ab")


def test_a_wait_frees_the_worker_and_resumes_when_due():
    session = _start(linear_flow(("w", "wait", {"minutes": 5}), ("z", "exit", {})))

    advance_all()
    session.refresh_from_db()
    assert session.status == SessionStatus.WAITING
    assert session.lease_token is None
    assert timedelta(minutes=4) < session.wait_until - timezone.now() <= timedelta(minutes=5)

    assert sessions_resume_due().resumed == 0
    _make_due(session)
    assert sessions_resume_due().resumed == 1
    advance_all()

    session.refresh_from_db()
    assert (session.status, session.ended_reason) == (SessionStatus.COMPLETED, "exit")
    assert list(session.steps.order_by("step_number").values_list("node_id", "status")) == [
        ("w", "completed"),
        ("z", "completed"),
    ]


def _event_flow():
    return {
        "nodes": [
            {
                "id": "wait",
                "type": "wait_for_event",
                "config": {"event": "paid", "filters": {"plan": "pro"}, "timeout_seconds": 3600},
            },
            {"id": "thanks", "type": "exit", "config": {"reason": "paid"}},
            {"id": "late", "type": "exit", "config": {"reason": "timed out"}},
        ],
        "edges": [
            {"source": "wait", "target": "thanks", "handle": "event"},
            {"source": "wait", "target": "late", "handle": "timeout"},
        ],
    }


def test_wait_for_event_resumes_on_a_matching_event_only():
    contact_id = uuid.uuid4()
    session = _start(_event_flow(), contact_id=contact_id)
    advance_all()

    other_plan = contact_event_ingest(
        name="paid", contact_id=str(contact_id), properties={"plan": "free"}
    )
    other_event = contact_event_ingest(
        name="refunded", contact_id=str(contact_id), properties={"plan": "pro"}
    )
    matching = contact_event_ingest(
        name="paid", contact_id=str(contact_id), properties={"plan": "pro", "amount": 5}
    )
    advance_all()

    assert other_plan.resumed_session_ids == other_event.resumed_session_ids == []
    assert matching.resumed_session_ids == [session.pk]
    session.refresh_from_db()
    assert (session.status, session.ended_reason) == (SessionStatus.COMPLETED, "paid")
    assert session.variables["event"] == {
        "name": "paid",
        "properties": {"plan": "pro", "amount": 5},
    }


def test_wait_for_event_takes_the_timeout_branch_when_nothing_comes():
    session = _start(_event_flow())
    advance_all()
    _make_due(session)

    sessions_resume_due()
    advance_all()

    session.refresh_from_db()
    assert (session.status, session.ended_reason) == (SessionStatus.COMPLETED, "timed out")


def test_a_repeated_message_id_is_a_no_op():
    journey = JourneyFactory(
        triggers=[{"type": "event", "event": "signed_up", "filters": {"source": "web"}}],
        allow_reentry=True,
    )
    contact_id = str(uuid.uuid4())

    first = contact_event_ingest(
        name="signed_up", contact_id=contact_id, properties={"source": "web"}, message_id="m-1"
    )
    advance_all()
    again = contact_event_ingest(
        name="signed_up", contact_id=contact_id, properties={"source": "web"}, message_id="m-1"
    )
    unmatched = contact_event_ingest(
        name="signed_up", contact_id=contact_id, properties={"source": "app"}, message_id="m-2"
    )

    assert len(first.started_session_ids) == 1
    assert not first.is_duplicate
    assert again.is_duplicate
    assert again.started_session_ids == first.started_session_ids
    assert unmatched.started_session_ids == []
    assert JourneySession.objects.filter(journey=journey).count() == 1


def test_reentry_after_a_terminal_state_only_when_the_journey_allows_it():
    closed = JourneyFactory(triggers=[{"type": "event", "event": "visit"}])
    open_ = JourneyFactory(triggers=[{"type": "event", "event": "visit"}], allow_reentry=True)
    contact_id = str(uuid.uuid4())

    contact_event_ingest(name="visit", contact_id=contact_id)
    advance_all()
    second = contact_event_ingest(name="visit", contact_id=contact_id)

    assert JourneySession.objects.filter(journey=closed).count() == 1
    assert JourneySession.objects.filter(journey=open_).count() == 2
    assert second.skipped == [{"journey_id": closed.pk, "code": "reentry_not_allowed"}]


def test_side_effect_nodes_reach_the_crm_with_read_merge_write(crm_simulator):
    contact_id = uuid.uuid4()
    ContactFactory(id=contact_id, name="Local")
    flow = linear_flow(
        (
            "hello",
            "send_message",
            {"conversation_id": "c-{{variables.conv}}", "content": "Hi {{contact.name}}"},
        ),
        ("attrs", "update_contact", {"custom_attributes": {"stage": "{{variables.conv}}"}}),
        ("tag", "add_label", {"label": "vip"}),
        ("untag", "remove_label", {"label": "vip"}),
        ("tag2", "add_label", {"label": "journey"}),
    )
    journey = JourneyFactory(flow=flow, default_variables={"conv": "42"})

    session_id = session_start(journey_id=journey.pk, contact_id=str(contact_id))
    advance_all()

    session = JourneySession.objects.get(pk=session_id)
    assert session.status == SessionStatus.COMPLETED, session.error
    [message] = crm_simulator.messages()
    assert (message["conversation_id"], message["content"]) == ("c-42", "Hi Local")
    assert message["idempotency_key"] == f"journey-session-{session_id}-step-1"
    crm_contact = crm_simulator.contact(str(contact_id))
    # The generated "plan" attribute survived the PATCH: the client read, merged, then wrote.
    assert crm_contact["custom_attributes"] == {
        "plan": crm_simulator.generated_contact(str(contact_id))["custom_attributes"]["plan"],
        "stage": "42",
    }
    assert crm_contact["labels"] == ["journey"]
    local = Contact.objects.get(pk=contact_id)
    assert local.labels == ["journey"]
    assert local.custom_attributes["stage"] == "42"


def test_http_request_maps_response_fields_into_variables(crm_simulator, settings):
    flow = linear_flow(
        (
            "call",
            "http_request",
            {
                "method": "POST",
                "url": settings.CRM_BASE_URL + "/hooks/score",
                "headers": {"X-Contact": "{{contact.id}}"},
                "body": {"who": "{{contact.id}}", "n": 7},
                "response_mapping": {"hook_id": "id", "echoed": "echo.n"},
            },
        ),
        ("end", "exit", {}),
    )
    contact_id = uuid.uuid4()
    session = _start(flow, contact_id=contact_id)

    advance_all()

    session.refresh_from_db()
    assert session.status == SessionStatus.COMPLETED
    assert session.variables == {"hook_id": 1, "echoed": 7}
    step = JourneyStep.objects.get(session=session, step_number=1)
    assert (step.status, step.attempt, step.idempotency_key) == (
        "completed",
        1,
        f"journey-session-{session.pk}-step-1",
    )


def test_a_failing_node_is_retried_with_backoff_then_fails_the_session(crm_simulator, settings):
    crm_simulator.faults.fault_rate = 1.0
    flow = {
        "nodes": [
            {
                "id": "call",
                "type": "http_request",
                "config": {"url": settings.CRM_BASE_URL + "/hooks/x"},
                "retry": {"attempts": 3, "backoff_seconds": 10, "backoff_multiplier": 3},
            },
            {"id": "end", "type": "exit"},
        ],
        "edges": [{"source": "call", "target": "end"}],
    }
    session = _start(flow)

    advance_all()
    session.refresh_from_db()
    first_wait = session.wait_until - timezone.now()
    _make_due(session)
    sessions_resume_due()
    advance_all()
    session.refresh_from_db()
    second_wait = session.wait_until - timezone.now()
    _make_due(session)
    sessions_resume_due()
    advance_all()

    assert timedelta(seconds=8) < first_wait <= timedelta(seconds=10)
    assert timedelta(seconds=28) < second_wait <= timedelta(seconds=30)
    session.refresh_from_db()
    assert session.status == SessionStatus.FAILED
    assert session.error["attempts"] == 3
    assert "HTTP 503" in session.error["message"] or "503" in session.error["message"]
    step = JourneyStep.objects.get(session=session)
    assert (step.status, step.attempt) == ("failed", 3)
    key = f"journey-session-{session.pk}-step-1"
    assert crm_simulator.counters.snapshot()["idempotency_keys"]["hooks"] == {key: 3}
    assert crm_simulator.effects()["effects"] == {}


def test_a_retried_node_that_then_succeeds_continues(crm_simulator, settings):
    crm_simulator.faults.fault_rate = 1.0
    flow = {
        "nodes": [
            {
                "id": "call",
                "type": "http_request",
                "config": {"url": settings.CRM_BASE_URL + "/hooks/x"},
                "retry": {"attempts": 2, "backoff_seconds": 1},
            },
            {"id": "end", "type": "exit"},
        ],
        "edges": [{"source": "call", "target": "end"}],
    }
    session = _start(flow)
    advance_all()
    crm_simulator.faults.fault_rate = 0.0
    _make_due(session)

    sessions_resume_due()
    advance_all()

    session.refresh_from_db()
    assert session.status == SessionStatus.COMPLETED
    assert JourneyStep.objects.get(session=session, step_number=1).attempt == 2


def test_a_loop_without_waits_is_stopped_by_the_step_limit(settings):
    settings.JOURNEYS_MAX_STEPS_PER_SESSION = 25
    flow = {
        "nodes": [
            {"id": "a", "type": "entry"},
            {"id": "b", "type": "set_variable", "config": {"name": "x", "value": 1}},
            {"id": "c", "type": "set_variable", "config": {"name": "y", "value": 2}},
        ],
        "edges": [
            {"source": "a", "target": "b"},
            {"source": "b", "target": "c"},
            {"source": "c", "target": "b"},
        ],
    }
    session = _start(flow)

    advance_all()

    session.refresh_from_db()
    assert session.status == SessionStatus.FAILED
    assert session.error["message"] == "step limit of 25 reached (a loop without a wait?)"
    assert session.step_count == 25


def test_wait_for_event_filters_are_rendered_with_the_session_state():
    # given a wait for the "paid" event of the order the session holds in a variable
    journey = JourneyFactory(
        flow={
            "nodes": [
                {
                    "id": "wait",
                    "type": "wait_for_event",
                    "config": {
                        "event": "paid",
                        "filters": {"order": "{{variables.order}}"},
                        "timeout_seconds": 3600,
                    },
                },
                {"id": "ok", "type": "exit", "config": {"reason": "paid"}},
            ],
            "edges": [{"source": "wait", "target": "ok", "handle": "event"}],
        }
    )
    contact_id = str(uuid.uuid4())
    session_id = session_start(
        journey_id=journey.pk, contact_id=contact_id, variables={"order": "A1"}
    )
    advance_all()
    assert JourneySession.objects.get(pk=session_id).wait_filters == {"order": "A1"}

    # when another order's event comes, then this order's
    other = contact_event_ingest(name="paid", contact_id=contact_id, properties={"order": "B2"})
    this = contact_event_ingest(name="paid", contact_id=contact_id, properties={"order": "A1"})
    advance_all()

    # then only this order's event resumed the session
    assert (other.resumed_session_ids, this.resumed_session_ids) == ([], [session_id])
    session = JourneySession.objects.get(pk=session_id)
    assert (session.status, session.ended_reason) == (SessionStatus.COMPLETED, "paid")


def test_a_repeated_message_id_returns_what_the_first_call_did():
    # given a contact already in a journey the event triggers (which does not allow re-entry)
    journey = JourneyFactory(triggers=[{"type": "event", "event": "visit"}])
    contact_id = str(uuid.uuid4())
    session_start(journey_id=journey.pk, contact_id=contact_id)

    # when the same event is delivered twice
    first = contact_event_ingest(name="visit", contact_id=contact_id, message_id="m-9")
    again = contact_event_ingest(name="visit", contact_id=contact_id, message_id="m-9")

    # then the repeat says it is one, with the first call's outcome, skipped journeys included
    skipped = [{"journey_id": journey.pk, "code": "session_already_live"}]
    assert (first.is_duplicate, first.started_session_ids, first.skipped) == (False, [], skipped)
    assert (again.is_duplicate, again.started_session_ids, again.skipped) == (True, [], skipped)
    assert again.resumed_session_ids == first.resumed_session_ids == []
