"""The journeys admin: validation messages on the flow, services behind every write."""

from __future__ import annotations

import json
import uuid

import pytest
from django.test import Client

from journeys.models import Contact, Journey, JourneySession, SessionStatus
from tests.core.factories import UserFactory
from tests.journeys.conftest import advance_all
from tests.journeys.factories import ContactFactory, JourneyFactory, bench_flow, linear_flow

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client() -> Client:
    client = Client()
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


def _journey_form(flow) -> dict:
    return {
        "name": "Admin journey",
        "description": "",
        "is_active": "on",
        "flow": json.dumps(flow),
        "triggers": "[]",
        "default_variables": "{}",
    }


def test_an_invalid_flow_shows_readable_errors_and_saves_nothing(admin_client):
    flow = linear_flow(("a", "entry", {}), ("b", "carrier_pigeon", {}))

    response = admin_client.post("/admin/journeys/journey/add/", _journey_form(flow))

    assert response.status_code == 200
    assert "unknown node type &#x27;carrier_pigeon&#x27;" in response.content.decode()
    assert Journey.objects.count() == 0


def test_a_valid_flow_is_created_and_updated_through_the_services(admin_client):
    created = admin_client.post("/admin/journeys/journey/add/", _journey_form(bench_flow()))
    journey = Journey.objects.get()
    form = _journey_form(linear_flow(("a", "exit", {})))
    updated = admin_client.post(f"/admin/journeys/journey/{journey.pk}/change/", form)

    assert created.status_code == updated.status_code == 302
    journey.refresh_from_db()
    assert journey.version == 2  # journey_update bumped it
    assert journey.flow == linear_flow(("a", "exit", {}))


def test_start_a_session_by_hand_and_see_its_timeline(admin_client):
    journey = JourneyFactory()
    contact_id = str(uuid.uuid4())

    bad = admin_client.post(
        "/admin/journeys/journeysession/add/",
        {"journey": journey.pk, "contact_uuid": "nope", "start_variables": "{}"},
    )
    good = admin_client.post(
        "/admin/journeys/journeysession/add/",
        {"journey": journey.pk, "contact_uuid": contact_id, "start_variables": '{"x": 1}'},
    )
    again = admin_client.post(
        "/admin/journeys/journeysession/add/",
        {"journey": journey.pk, "contact_uuid": contact_id, "start_variables": "{}"},
        follow=True,
    )
    advance_all()
    session = JourneySession.objects.get()
    page = admin_client.get(f"/admin/journeys/journeysession/{session.pk}/change/")

    assert bad.status_code == 200
    assert "is not a UUID" in bad.content.decode()
    assert good.status_code == 302
    assert "already has a live session" in again.content.decode()
    assert session.variables == {"x": 1, "greeting": "hi", "done": True}
    assert session.context["source"] == "admin"
    assert page.status_code == 200
    assert "greet" in page.content.decode()
    assert "set_variable" in page.content.decode()


def test_actions_cancel_and_retry_call_the_services(admin_client):
    journey = JourneyFactory(flow=linear_flow(("w", "wait", {"hours": 1}), ("z", "exit", {})))
    contact = str(uuid.uuid4())
    admin_client.post(
        "/admin/journeys/journeysession/add/",
        {"journey": journey.pk, "contact_uuid": contact, "start_variables": "{}"},
    )
    advance_all()
    session = JourneySession.objects.get()

    admin_client.post(
        "/admin/journeys/journeysession/",
        {"action": "cancel_sessions", "_selected_action": [session.pk]},
    )
    admin_client.post(
        "/admin/journeys/journeysession/",
        {"action": "retry_failed_sessions", "_selected_action": [session.pk]},
    )

    session.refresh_from_db()
    assert session.status == SessionStatus.CANCELLED
    assert JourneySession.objects.count() == 1  # a cancelled session is not retried


def test_contacts_stub_filter(admin_client):
    ContactFactory(name="Stubby", crm_synced_at=None)
    ContactFactory(name="Enriched", crm_synced_at="2026-01-01T00:00:00Z")

    stubs = admin_client.get("/admin/journeys/contact/", {"enrichment": "stub"}).content.decode()

    assert "Stubby" in stubs
    assert "Enriched" not in stubs
    assert Contact.objects.count() == 2
