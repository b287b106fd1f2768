"""J1: every session write goes through one funnel that ensures the contact row first."""

from __future__ import annotations

import uuid

import pytest
from django.db import DataError, IntegrityError, connection, transaction

from journeys.models import Contact, JourneySession, JourneyStep, SessionStatus
from journeys.services import (
    InvalidContactId,
    SessionAlreadyLive,
    contact_event_ingest,
    session_cancel,
    session_pause,
    session_resume,
    session_retry,
    session_start,
    sessions_start_many,
)
from journeys.services.funnel import NewSession, session_insert
from tests.journeys.conftest import advance_all
from tests.journeys.factories import ContactFactory, JourneyFactory, linear_flow

pytestmark = pytest.mark.django_db


def test_start_for_a_contact_without_a_local_row_creates_a_stub_and_the_session():
    journey = JourneyFactory()
    contact_id = uuid.uuid4()

    session_id = session_start(journey_id=journey.pk, contact_id=str(contact_id))

    session = JourneySession.objects.get(pk=session_id)
    assert session.contact_id == contact_id
    assert session.status == SessionStatus.ACTIVE
    assert session.current_node_id == "greet"
    stub = Contact.objects.get(pk=contact_id)
    assert (stub.name, stub.email, stub.custom_attributes, stub.labels) == ("", "", {}, [])
    assert stub.crm_synced_at is None


def test_the_stub_insert_never_overwrites_an_enriched_contact():
    contact = ContactFactory(name="Grace Hopper", email="grace@example.com")
    journey = JourneyFactory()

    session_start(journey_id=journey.pk, contact_id=str(contact.pk))

    contact.refresh_from_db()
    assert (contact.name, contact.email) == ("Grace Hopper", "grace@example.com")
    assert Contact.objects.count() == 1


@pytest.mark.parametrize("bad", ["not-a-uuid", "", "123", "00000000-0000-0000-0000-00000000000g"])
def test_a_non_uuid_contact_id_fails_loudly_and_writes_nothing(bad):
    journey = JourneyFactory()

    with pytest.raises(InvalidContactId):
        session_start(journey_id=journey.pk, contact_id=bad)

    assert Contact.objects.count() == 0
    assert JourneySession.objects.count() == 0


def test_a_session_write_that_fails_leaves_no_stub_row():
    contact_id = uuid.uuid4()

    # A node id longer than the column allows: the session insert fails in the statement.
    with pytest.raises(DataError):
        session_insert(
            new=NewSession(
                journey_id=JourneyFactory().pk,
                contact_id=contact_id,
                current_node_id="x" * 101,
                variables={},
            )
        )

    assert not Contact.objects.filter(pk=contact_id).exists()


@pytest.mark.django_db(transaction=True)
def test_a_session_write_failing_at_commit_rolls_its_stub_back():
    contact_id = uuid.uuid4()

    # Foreign keys are checked at commit: a journey that does not exist fails the commit.
    with pytest.raises(IntegrityError), transaction.atomic():
        session_insert(
            new=NewSession(
                journey_id=987654, contact_id=contact_id, current_node_id="a", variables={}
            )
        )

    assert not Contact.objects.filter(pk=contact_id).exists()
    assert JourneySession.objects.count() == 0


def test_a_second_live_session_is_refused_and_its_write_leaves_nothing_behind():
    journey = JourneyFactory()
    contact_id = uuid.uuid4()
    session_start(journey_id=journey.pk, contact_id=str(contact_id))

    with pytest.raises(SessionAlreadyLive):
        session_start(journey_id=journey.pk, contact_id=str(contact_id))

    assert JourneySession.objects.filter(journey=journey).count() == 1
    assert Contact.objects.count() == 1


def test_every_entry_point_works_when_the_contact_row_is_absent():
    journey = JourneyFactory(triggers=[{"type": "event", "event": "signed_up"}])
    other = JourneyFactory()
    manual, by_event, bulk = uuid.uuid4(), uuid.uuid4(), [uuid.uuid4(), uuid.uuid4()]

    manual_id = session_start(journey_id=journey.pk, contact_id=str(manual))
    event = contact_event_ingest(name="signed_up", contact_id=str(by_event))
    started = sessions_start_many(journey_id=other.pk, contact_ids=[str(c) for c in bulk])
    steps = advance_all()

    assert len(event.started_session_ids) == 1
    assert len(started.session_ids) == 2
    assert steps == 4 * 5  # every session ran its five nodes, each step persisted
    assert set(JourneySession.objects.values_list("status", flat=True)) == {"completed"}
    assert Contact.objects.count() == 4
    assert JourneyStep.objects.filter(session_id=manual_id).count() == 5

    # Status changes go through the funnel too: pause, resume, cancel, retry.
    waiting_journey = JourneyFactory(
        flow=linear_flow(("w", "wait", {"seconds": 60}), ("z", "exit", {}))
    )
    fresh = uuid.uuid4()
    session_id = session_start(journey_id=waiting_journey.pk, contact_id=str(fresh))
    advance_all()
    assert session_pause(session_id=session_id).status == SessionStatus.PAUSED
    assert session_resume(session_id=session_id).status == SessionStatus.WAITING
    assert session_cancel(session_id=session_id).status == SessionStatus.CANCELLED


def test_retry_of_a_failed_session_starts_a_new_one_at_the_failed_node():
    journey = JourneyFactory(
        flow=linear_flow(("a", "set_variable", {"name": "x", "value": 1}), ("b", "exit", {}))
    )
    contact_id = uuid.uuid4()
    session_id = session_start(journey_id=journey.pk, contact_id=str(contact_id))
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE journeys_journeysession SET status = 'failed', current_node_id = 'b', "
            "variables = '{\"x\": 1}' WHERE id = %s",
            [session_id],
        )

    new_id = session_retry(session_id=session_id)
    advance_all()

    new = JourneySession.objects.get(pk=new_id)
    assert (new.status, new.ended_reason, new.context["retry_of"]) == (
        SessionStatus.COMPLETED,
        "exit",
        session_id,
    )
    assert new.variables == {"x": 1}
    assert JourneySession.objects.get(pk=session_id).status == SessionStatus.FAILED
