"""The journeys integrity checks, on real rows."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from evoflow.integrity.registry import get_check
from evoflow.integrity.runner import evaluate_check
from journeys.models import Contact, JourneySession, JourneyStep
from journeys.services import session_start
from tests.journeys.conftest import advance_all
from tests.journeys.factories import ContactFactory, JourneyFactory, linear_flow

pytestmark = pytest.mark.django_db


def _outcome(check_id):
    evaluation = evaluate_check(get_check(check_id))
    return evaluation.status, evaluation.outcome


def test_sessions_missing_contact_is_zero_and_an_error_when_not():
    journey = JourneyFactory()
    session_id = session_start(journey_id=journey.pk, contact_id=str(uuid.uuid4()))

    healthy = _outcome("journeys.sessions_missing_contact")
    with connection.cursor() as cursor:
        # Only possible with the foreign key bypassed: what the check exists to catch.
        cursor.execute("SET session_replication_role = replica")
        cursor.execute("DELETE FROM journeys_contact")
        cursor.execute("SET session_replication_role = DEFAULT")
    broken = _outcome("journeys.sessions_missing_contact")
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM journeys_journeysession")  # leave the test database sound

    assert healthy[0] == "ok"
    assert healthy[1].failing_count == 0
    assert healthy[1].population == 1
    assert broken[0] == "error"
    assert (broken[1].failing_count, broken[1].sample_ids) == (1, [str(session_id)])


def test_overdue_sessions_and_their_repair():
    journey = JourneyFactory(flow=linear_flow(("w", "wait", {"seconds": 5}), ("z", "exit", {})))
    session_id = session_start(journey_id=journey.pk, contact_id=str(uuid.uuid4()))
    advance_all()
    JourneySession.objects.filter(pk=session_id).update(
        wait_until=timezone.now() - timedelta(minutes=6)
    )

    status, outcome = _outcome("journeys.sessions_overdue")
    repaired = get_check("journeys.sessions_overdue").repair(dry_run=False)

    assert (status, outcome.failing_count, outcome.sample_ids) == ("warning", 1, [str(session_id)])
    assert repaired == 1
    assert JourneySession.objects.get(pk=session_id).status == "active"


def test_stub_contacts_not_enriched_after_an_hour(crm_simulator):
    stale = ContactFactory(name="")
    fresh = ContactFactory(name="")
    ContactFactory(name="Synced", crm_synced_at=timezone.now())
    Contact.objects.filter(pk=stale.pk).update(created_at=timezone.now() - timedelta(hours=2))

    status, outcome = _outcome("journeys.stub_contacts_not_enriched")
    check = get_check("journeys.stub_contacts_not_enriched")
    would = check.repair(dry_run=True)
    did = check.repair(dry_run=False)

    assert (status, outcome.failing_count, outcome.population) == ("warning", 1, 3)
    assert outcome.sample_ids == [str(stale.pk)]
    assert (would, did) == (1, 1)
    assert Contact.objects.get(pk=stale.pk).crm_synced_at is not None
    assert Contact.objects.get(pk=fresh.pk).crm_synced_at is None


def test_steps_started_but_never_finished():
    journey = JourneyFactory()
    session_id = session_start(journey_id=journey.pk, contact_id=str(uuid.uuid4()))
    advance_all()
    JourneyStep.objects.filter(session_id=session_id, step_number=2).update(
        status="started", started_at=timezone.now() - timedelta(minutes=11)
    )

    status, outcome = _outcome("journeys.steps_started_not_finished")

    assert (status, outcome.failing_count, outcome.sample_ids) == ("warning", 1, [str(session_id)])
