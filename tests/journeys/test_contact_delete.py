"""A contact's deletion, by the ORM or by raw SQL, takes its sessions and their steps with it:
the database's foreign keys say what the models say (`on_delete=CASCADE`)."""

from __future__ import annotations

import pytest
from django.db import connection

from journeys.models import Contact, JourneySession, JourneyStep
from tests.journeys.conftest import advance_all
from tests.journeys.factories import ContactFactory, JourneyFactory, linear_flow

pytestmark = pytest.mark.django_db

# The foreign keys whose ON DELETE the models declare CASCADE (migration 0003).
CASCADING = {
    ("journeys_journeysession", "contact_id"): JourneySession._meta.get_field("contact"),
    ("journeys_journeystep", "session_id"): JourneyStep._meta.get_field("session"),
}


def contact_with_history() -> Contact:
    from journeys.services import session_start

    contact = ContactFactory()
    for _ in range(2):
        journey = JourneyFactory(
            flow=linear_flow(
                ("a", "set_variable", {"name": "x", "value": 1}),
                ("z", "exit", {}),
            )
        )
        session_start(journey_id=journey.pk, contact_id=str(contact.pk))
    advance_all()
    assert JourneyStep.objects.filter(session__contact=contact).count() >= 2
    return contact


def on_delete_in_database(table: str, column: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT con.confdeltype FROM pg_constraint AS con"
            " JOIN pg_attribute AS att"
            "   ON att.attrelid = con.conrelid AND att.attnum = con.conkey[1]"
            " WHERE con.conrelid = %s::regclass AND con.contype = 'f' AND att.attname = %s",
            [table, column],
        )
        return str(cursor.fetchone()[0])


def test_the_database_cascades_where_the_models_do() -> None:
    for (table, column), field in CASCADING.items():
        assert field.remote_field.on_delete.__name__ == "CASCADE"
        # 'c': ON DELETE CASCADE (PostgreSQL's pg_constraint.confdeltype).
        assert on_delete_in_database(table, column) == "c", (table, column)


def test_a_contact_deleted_by_raw_sql_takes_its_sessions_and_steps() -> None:
    contact, other = contact_with_history(), contact_with_history()

    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM journeys_contact WHERE id = %s", [contact.pk])

    assert not JourneySession.objects.filter(contact_id=contact.pk).exists()
    assert not JourneyStep.objects.filter(session__contact_id=contact.pk).exists()
    assert JourneySession.objects.filter(contact=other).count() == 2


def test_a_contact_deleted_by_the_orm_does_the_same() -> None:
    contact = contact_with_history()

    contact.delete()

    assert not JourneySession.objects.filter(contact_id=contact.pk).exists()
    assert JourneyStep.objects.count() == 0
