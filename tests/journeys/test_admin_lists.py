"""The session and contact lists the dashboard links to: exact rows, bounded queries."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import pytest
from django.db import connection
from django.test import Client
from django.utils import timezone

from evoflow.integrity import get_check
from journeys import selectors
from journeys.models import Contact, Journey, JourneySession, SessionStatus
from tests.core.changelists import assert_exact_and_bounded, changelist_get, listed_pks
from tests.core.factories import UserFactory
from tests.journeys.factories import JourneyFactory, linear_flow

pytestmark = pytest.mark.django_db

SESSIONS = "/admin/journeys/journeysession/"
CONTACTS = "/admin/journeys/contact/"


@pytest.fixture
def admin_client() -> Client:
    client = Client()
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


@pytest.fixture
def journey() -> Journey:
    return JourneyFactory(flow=linear_flow(("start", "entry", {}), ("end", "end", {})))


def _session_kinds(now: datetime) -> list[dict]:
    """One session of each kind the overdue rule tells apart, far from its boundary."""
    long_ago, recently, later = (
        now - timedelta(minutes=30),
        now - timedelta(minutes=1),
        now + timedelta(hours=1),
    )
    return [
        {"status": SessionStatus.WAITING, "wait_until": long_ago},  # overdue
        {"status": SessionStatus.WAITING, "wait_until": recently},  # due, not overdue yet
        {"status": SessionStatus.WAITING, "wait_until": later},
        {"status": SessionStatus.WAITING, "wait_until": None},  # waits for an event only
        {"status": SessionStatus.ACTIVE, "lease_until": long_ago},  # stalled: overdue
        {"status": SessionStatus.ACTIVE, "lease_until": later},
        {"status": SessionStatus.ACTIVE, "lease_until": None, "updated_at": long_ago},  # overdue
        {"status": SessionStatus.ACTIVE, "lease_until": None, "updated_at": recently},
        {"status": SessionStatus.PAUSED, "wait_until": long_ago},
        {"status": SessionStatus.COMPLETED, "lease_until": long_ago},
        {"status": SessionStatus.FAILED, "wait_until": long_ago},
        {"status": SessionStatus.CANCELLED},
    ]


def sessions_create(*, journey: Journey, count: int) -> None:
    """`count` sessions cycling through every kind, each with its own contact (one live session
    per contact and journey)."""
    now = timezone.now()
    kinds = _session_kinds(now)
    contacts = Contact.objects.bulk_create(
        [Contact(id=uuid.uuid4(), crm_synced_at=now if n % 3 else None) for n in range(count)]
    )
    JourneySession.objects.bulk_create(
        [
            JourneySession(
                journey=journey,
                contact=contact,
                **{"updated_at": now, **kinds[index % len(kinds)]},
            )
            for index, contact in enumerate(contacts)
        ]
    )


@pytest.mark.parametrize("status", SessionStatus.values)
def test_sessions_by_status_list_exactly_those_sessions(admin_client, journey, status):
    assert_exact_and_bounded(
        admin_client,
        f"{SESSIONS}?status__exact={status}",
        lambda: JourneySession.objects.filter(status=status),
        lambda count: sessions_create(journey=journey, count=count),
    )


def test_overdue_sessions_list_exactly_what_the_selector_returns(admin_client, journey):
    assert_exact_and_bounded(
        admin_client,
        f"{SESSIONS}?overdue=yes",
        selectors.sessions_overdue,
        lambda count: sessions_create(journey=journey, count=count),
    )


def test_overdue_composes_with_the_status_filter(admin_client, journey):
    sessions_create(journey=journey, count=24)

    changelist, _ = changelist_get(admin_client, f"{SESSIONS}?overdue=yes&status__exact=active")

    expected = selectors.sessions_overdue().filter(status=SessionStatus.ACTIVE)
    assert listed_pks(changelist) == set(expected.values_list("pk", flat=True))
    assert len(listed_pks(changelist)) == 4


def test_the_overdue_selector_and_the_integrity_check_agree(journey):
    # Given a mixed set of sessions, two of each kind
    sessions_create(journey=journey, count=24)

    # When the check's own SQL runs
    with connection.cursor() as cursor:
        cursor.execute(get_check("journeys.sessions_overdue").render_sql(), {"sample_limit": 100})
        failing, population, samples = cursor.fetchone()

    # Then it counts the selector's rows, and samples only them
    overdue_ids = set(selectors.sessions_overdue().values_list("id", flat=True))
    assert failing == len(overdue_ids) == 6
    assert {int(sample) for sample in samples} == overdue_ids
    assert (
        population
        == JourneySession.objects.filter(
            status__in=[SessionStatus.ACTIVE, SessionStatus.WAITING]
        ).count()
    )


def test_stub_contacts_list_exactly_the_stubs(admin_client, journey):
    assert_exact_and_bounded(
        admin_client,
        f"{CONTACTS}?enrichment=stub",
        lambda: Contact.objects.filter(crm_synced_at__isnull=True),
        lambda count: sessions_create(journey=journey, count=count),
    )
