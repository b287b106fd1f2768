"""J3 in the database: status moves only along allowed transitions, on every write path."""

from __future__ import annotations

import uuid

import pytest
from django.db import IntegrityError, ProgrammingError, connection, transaction

from journeys.models import JourneySession, SessionStatus
from journeys.services import (
    InvalidSessionTransition,
    session_cancel,
    session_persist_many,
    session_resume,
    session_start,
    sessions_advance,
    sessions_resume_due,
)
from tests.journeys.conftest import advance_all
from tests.journeys.factories import JourneyFactory, linear_flow

pytestmark = pytest.mark.django_db


def _session(status: str) -> JourneySession:
    journey = JourneyFactory()
    session_id = session_start(journey_id=journey.pk, contact_id=str(uuid.uuid4()))
    if status != SessionStatus.ACTIVE:
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE journeys_journeysession SET status = %s WHERE id = %s", [status, session_id]
            )
    return JourneySession.objects.get(pk=session_id)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("cancelled", "completed"),
        ("cancelled", "active"),
        ("completed", "active"),
        ("failed", "waiting"),
        ("paused", "completed"),
    ],
)
def test_the_database_refuses_an_invalid_transition_through_raw_sql_and_update(old, new):
    session = _session(old)

    with (
        pytest.raises(ProgrammingError, match='Invalid transition of field "status"'),
        transaction.atomic(),
    ):
        JourneySession.objects.filter(pk=session.pk).update(status=new)
    with (
        pytest.raises(ProgrammingError, match="Invalid transition"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(
            "UPDATE journeys_journeysession SET status = %s WHERE id = %s", [new, session.pk]
        )

    session.refresh_from_db()
    assert session.status == old


def test_cancel_during_a_wait_stays_cancelled():
    journey = JourneyFactory(flow=linear_flow(("w", "wait", {"seconds": 1}), ("z", "exit", {})))
    session_id = session_start(journey_id=journey.pk, contact_id=str(uuid.uuid4()))
    advance_all()
    assert JourneySession.objects.get(pk=session_id).status == SessionStatus.WAITING

    session_cancel(session_id=session_id)
    JourneySession.objects.filter(pk=session_id).update(wait_until="2000-01-01T00:00:00Z")
    report = sessions_resume_due()
    advanced = sessions_advance(session_ids=[session_id])

    session = JourneySession.objects.get(pk=session_id)
    assert (report.resumed, advanced.claimed) == (0, 0)
    assert (session.status, session.ended_reason) == (SessionStatus.CANCELLED, "cancelled")
    assert session.finished_at is not None
    with pytest.raises(InvalidSessionTransition):
        session_resume(session_id=session_id)
    with pytest.raises(InvalidSessionTransition):
        session_cancel(session_id=session_id)


def test_a_worker_holding_a_cancelled_session_cannot_complete_it():
    journey = JourneyFactory()
    session_id = session_start(journey_id=journey.pk, contact_id=str(uuid.uuid4()))
    # The worker claims the session, then an operator cancels it before the worker writes.
    from journeys.services.engine.claim import sessions_claim
    from journeys.services.engine.context import AdvanceRun
    from journeys.services.engine.steps import base_write

    token = uuid.uuid4()
    [claimed] = sessions_claim([session_id], token)
    session_cancel(session_id=session_id)
    write = base_write(AdvanceRun(token=token), claimed)
    write.status = SessionStatus.COMPLETED

    result = session_persist_many(writes=[write])

    assert result.updated_session_ids == set()
    assert JourneySession.objects.get(pk=session_id).status == SessionStatus.CANCELLED


def test_the_step_log_refuses_a_second_row_for_one_step():
    journey = JourneyFactory()
    session_id = session_start(journey_id=journey.pk, contact_id=str(uuid.uuid4()))
    advance_all()

    with (
        pytest.raises(IntegrityError, match="journeys_one_row_per_step"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(
            "INSERT INTO journeys_journeystep (session_id, step_number, node_id, node_type,"
            " status) VALUES (%s, 1, 'greet', 'set_variable', 'completed')",
            [session_id],
        )
