"""The journeys admin: validation messages on the flow, services behind every write."""

from __future__ import annotations

import json
import uuid

import pytest
from django.contrib.admin.models import ADDITION, LogEntry
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django_q.models import OrmQ

from journeys.admin import JourneySessionAdmin
from journeys.models import Contact, Journey, JourneySession, SessionStatus
from journeys.services import SessionAlreadyLive
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


def test_values_jsonb_cannot_store_are_form_errors_not_a_500(admin_client):
    # A NUL in a node's text and an infinite default variable, as an operator could paste them
    flow = linear_flow(("a", "entry", {}), ("b", "set_variable", {"name": "x", "value": "a\x00b"}))
    form = {**_journey_form(flow), "default_variables": '{"limit": 1e400}'}

    response = admin_client.post("/admin/journeys/journey/add/", form)

    assert response.status_code == 200
    page = response.content.decode()
    assert "strings must not contain NUL" in page
    assert "numbers must be finite" in page
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

    # The action asks first: without the confirmation nothing changes.
    asked = admin_client.post(
        "/admin/journeys/journeysession/",
        {"action": "cancel_sessions", "_selected_action": [session.pk]},
    )
    assert asked.status_code == 200
    assert 'data-testid="bulk-confirm"' in asked.content.decode()
    session.refresh_from_db()
    assert session.status == SessionStatus.WAITING
    admin_client.post(
        "/admin/journeys/journeysession/",
        {"action": "cancel_sessions", "_selected_action": [session.pk], "confirm": "yes"},
    )
    retried = admin_client.post(
        "/admin/journeys/journeysession/",
        {"action": "retry_failed_sessions", "_selected_action": [session.pk], "confirm": "yes"},
        follow=True,
    )

    # Retrying a session that has not failed says why nothing happened.
    assert "Retried nothing: none of the selected sessions has failed" in (retried.content.decode())
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


def test_a_flow_calling_a_host_not_allowed_shows_the_error_on_the_field(admin_client, settings):
    settings.JOURNEYS_HTTP_ALLOWED_HOSTS = ["hooks.example.com"]
    flow = linear_flow(("call", "http_request", {"url": "http://10.0.0.7/internal"}))

    response = admin_client.post("/admin/journeys/journey/add/", _journey_form(flow))

    assert response.status_code == 200
    assert (
        "node &quot;call&quot; (http_request): config.url: the host &#x27;10.0.0.7&#x27; "
        "is not in JOURNEYS_HTTP_ALLOWED_HOSTS" in response.content.decode()
    )
    assert Journey.objects.count() == 0


def test_a_journey_whose_host_was_since_refused_can_still_be_deactivated(admin_client, settings):
    flow = linear_flow(("call", "http_request", {"url": "http://127.0.0.1:8011/hooks/a"}))
    admin_client.post("/admin/journeys/journey/add/", _journey_form(flow))
    journey = Journey.objects.get()
    settings.JOURNEYS_HTTP_ALLOWED_HOSTS = ["hooks.example.com"]
    # what a browser posts: the form plus the hidden initial values of the JSON fields
    form = {
        **_journey_form(flow),
        "is_active": "",
        "initial-flow": json.dumps(journey.flow),
        "initial-triggers": "[]",
        "initial-default_variables": "{}",
    }

    response = admin_client.post(f"/admin/journeys/journey/{journey.pk}/change/", form)

    assert response.status_code == 302
    journey.refresh_from_db()
    assert (journey.is_active, journey.version) == (False, 1)


def test_admin_saves_are_logged_in_the_history(admin_client):
    admin_client.post("/admin/journeys/journey/add/", _journey_form(bench_flow()))
    journey = Journey.objects.get()

    entry = LogEntry.objects.get()

    assert (entry.object_id, entry.object_repr, entry.action_flag) == (
        str(journey.pk),
        "Admin journey",
        ADDITION,
    )


def test_a_session_started_in_the_admin_commits_with_the_admin_transaction(
    admin_client, monkeypatch
):
    # The service runs inside the change form's atomic block: when a later step of the same
    # request fails, the session and its queued advance task are rolled back with it.
    journey = JourneyFactory()
    queued_before = OrmQ.objects.count()

    def failing_log(*args, **kwargs):
        raise SessionAlreadyLive("history unavailable")

    monkeypatch.setattr(JourneySessionAdmin, "log_addition", failing_log)
    response = admin_client.post(
        "/admin/journeys/journeysession/add/",
        {"journey": journey.pk, "contact_uuid": str(uuid.uuid4()), "start_variables": "{}"},
        follow=True,
    )

    assert "Not started: history unavailable" in response.content.decode()
    assert JourneySession.objects.count() == 0
    assert Contact.objects.count() == 0
    assert OrmQ.objects.count() == queued_before


def test_the_retry_action_starts_a_new_session_from_the_failed_node(admin_client, settings):
    settings.JOURNEYS_HTTP_ALLOWED_HOSTS = ["hooks.example.com"]
    journey = JourneyFactory(
        flow=linear_flow(
            ("call", "http_request", {"url": "http://127.0.0.1:9/hooks/x"}), ("end", "exit", {})
        )
    )
    admin_client.post(
        "/admin/journeys/journeysession/add/",
        {"journey": journey.pk, "contact_uuid": str(uuid.uuid4()), "start_variables": "{}"},
    )
    advance_all()
    failed = JourneySession.objects.get()

    response = admin_client.post(
        "/admin/journeys/journeysession/",
        {"action": "retry_failed_sessions", "_selected_action": [failed.pk], "confirm": "yes"},
        follow=True,
    )

    assert failed.status == SessionStatus.FAILED
    retried = JourneySession.objects.exclude(pk=failed.pk).get()
    assert (retried.current_node_id, retried.context["retry_of"]) == ("call", failed.pk)
    page = response.content.decode()
    assert "Retried 1 session." in page
    # The message names the new session and links to it.
    new_page = reverse("admin:journeys_journeysession_change", args=[retried.pk])
    assert f'Session {failed.pk} retried as <a href="{new_page}">session {retried.pk}</a>' in page


def _journeys_with_sessions(count: int) -> None:
    for _ in range(count):
        journey = JourneyFactory()
        for status in (SessionStatus.ACTIVE, SessionStatus.WAITING, SessionStatus.COMPLETED):
            JourneySession.objects.create(journey=journey, contact=ContactFactory(), status=status)


def test_the_journey_changelist_query_count_does_not_grow_with_the_journeys(admin_client):
    _journeys_with_sessions(2)
    with CaptureQueriesContext(connection) as few:
        first = admin_client.get("/admin/journeys/journey/")
    _journeys_with_sessions(10)

    with CaptureQueriesContext(connection) as many:
        second = admin_client.get("/admin/journeys/journey/")

    assert first.status_code == second.status_code == 200
    assert len(many) == len(few)
    # two live sessions (active, waiting) per journey; the completed one is not counted
    assert second.content.decode().count('<td class="field-live_sessions">2</td>') == 12
