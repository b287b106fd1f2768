"""The journeys REST API: CRUD with validation errors, start, contact events, sessions."""

from __future__ import annotations

import threading
import uuid

import pytest
from django.db import connection
from rest_framework.test import APIClient

from journeys.models import Contact, Journey, JourneySession, SessionStatus
from tests.journeys.conftest import advance_all
from tests.journeys.factories import JourneyFactory, bench_flow, linear_flow

pytestmark = pytest.mark.django_db


def test_the_api_needs_authentication(api_client):
    assert api_client.get("/api/v1/journeys/").status_code == 401


def test_create_read_and_patch_a_journey(authenticated_client):
    created = authenticated_client.post(
        "/api/v1/journeys/",
        {"name": "Welcome", "flow": bench_flow(), "triggers": [{"event": "signed_up"}]},
        format="json",
    )
    journey_id = created.json()["id"]
    patched = authenticated_client.patch(
        f"/api/v1/journeys/{journey_id}/",
        {"description": "hello", "allow_reentry": True},
        format="json",
    )
    listed = authenticated_client.get("/api/v1/journeys/")

    assert created.status_code == 201
    assert created.json()["triggers"] == [{"event": "signed_up"}]
    assert patched.status_code == 200
    assert (
        patched.json()["description"],
        patched.json()["allow_reentry"],
        patched.json()["version"],
    ) == (
        "hello",
        True,
        1,
    )
    assert [row["id"] for row in listed.json()["results"]] == [journey_id]


def test_an_invalid_flow_is_a_400_with_readable_messages_and_nothing_saved(authenticated_client):
    flow = linear_flow(("a", "entry", {}), ("b", "fax", {}))
    flow["edges"].append({"source": "a", "target": "nowhere"})

    response = authenticated_client.post(
        "/api/v1/journeys/", {"name": "x", "flow": flow}, format="json"
    )

    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid_flow"
    assert body["errors"]["flow"] == [
        "node \"b\": unknown node type 'fax' (known types: add_label, condition, entry, exit, "
        "http_request, remove_label, send_message, set_variable, split, update_contact, wait, "
        "wait_for_event)",
        "edge #2 (a -> nowhere): target node 'nowhere' does not exist",
    ]
    assert Journey.objects.count() == 0


def test_patching_a_journey_with_a_dangling_edge_is_refused(authenticated_client):
    journey = JourneyFactory()
    flow = bench_flow()
    flow["edges"].append({"source": "mark", "target": "ghost"})

    response = authenticated_client.patch(
        f"/api/v1/journeys/{journey.pk}/", {"flow": flow}, format="json"
    )

    assert response.status_code == 400
    assert response.json()["errors"]["flow"] == [
        "edge #7 (mark -> ghost): target node 'ghost' does not exist"
    ]
    journey.refresh_from_db()
    assert journey.flow == bench_flow()


def test_start_returns_the_session_and_a_second_start_is_a_409(authenticated_client):
    journey = JourneyFactory()
    contact_id = str(uuid.uuid4())

    first = authenticated_client.post(
        f"/api/v1/journeys/{journey.pk}/start/",
        {"contact_id": contact_id, "variables": {"a": 1}},
        format="json",
    )
    second = authenticated_client.post(
        f"/api/v1/journeys/{journey.pk}/start/", {"contact_id": contact_id}, format="json"
    )

    assert first.status_code == 201
    session = JourneySession.objects.get(pk=first.json()["session_id"])
    assert session.variables == {"a": 1}
    assert second.status_code == 409
    assert second.json()["code"] == "session_already_live"


def test_start_with_a_non_uuid_contact_is_a_400_and_writes_nothing(authenticated_client):
    journey = JourneyFactory()

    response = authenticated_client.post(
        f"/api/v1/journeys/{journey.pk}/start/", {"contact_id": "12345"}, format="json"
    )

    assert response.status_code == 400
    assert response.json() == {
        "code": "invalid_contact_id",
        "detail": "contact id '12345' is not a UUID",
    }
    assert Contact.objects.count() == 0
    assert JourneySession.objects.count() == 0


def test_start_of_an_unknown_journey_is_a_404(authenticated_client):
    response = authenticated_client.post(
        "/api/v1/journeys/999999/start/", {"contact_id": str(uuid.uuid4())}, format="json"
    )

    assert response.status_code == 404
    assert response.json()["code"] == "journey_not_found"
    assert Contact.objects.count() == 0


def test_contact_events_start_and_dedupe(authenticated_client):
    JourneyFactory(triggers=[{"event": "signed_up"}])
    contact_id = str(uuid.uuid4())
    body = {"name": "signed_up", "contact_id": contact_id, "message_id": "evt-1"}

    first = authenticated_client.post("/api/v1/contact-events/", body, format="json")
    again = authenticated_client.post("/api/v1/contact-events/", body, format="json")
    bad = authenticated_client.post(
        "/api/v1/contact-events/", {"name": "x", "contact_id": "nope"}, format="json"
    )

    assert first.status_code == 200
    assert first.json()["is_duplicate"] is False
    assert len(first.json()["started_session_ids"]) == 1
    assert again.json()["is_duplicate"] is True
    assert again.json()["started_session_ids"] == first.json()["started_session_ids"]
    assert JourneySession.objects.count() == 1
    assert (bad.status_code, bad.json()["code"]) == (400, "invalid_contact_id")


def test_sessions_list_filters_detail_timeline_and_actions(authenticated_client):
    waiting = JourneyFactory(flow=linear_flow(("w", "wait", {"hours": 1}), ("z", "exit", {})))
    done = JourneyFactory()
    contact_id = uuid.uuid4()
    for journey in (waiting, done):
        authenticated_client.post(
            f"/api/v1/journeys/{journey.pk}/start/", {"contact_id": str(contact_id)}, format="json"
        )
    advance_all()
    waiting_session = JourneySession.objects.get(journey=waiting)

    by_status = authenticated_client.get("/api/v1/journey-sessions/", {"status": "waiting"})
    by_journey = authenticated_client.get("/api/v1/journey-sessions/", {"journey": done.pk})
    by_contact = authenticated_client.get("/api/v1/journey-sessions/", {"contact": str(contact_id)})
    bad_filter = authenticated_client.get("/api/v1/journey-sessions/", {"status": "sleeping"})
    detail = authenticated_client.get(
        f"/api/v1/journey-sessions/{by_journey.json()['results'][0]['id']}/"
    )
    paused = authenticated_client.post(f"/api/v1/journey-sessions/{waiting_session.pk}/pause/")
    resumed = authenticated_client.post(f"/api/v1/journey-sessions/{waiting_session.pk}/resume/")
    cancelled = authenticated_client.post(f"/api/v1/journey-sessions/{waiting_session.pk}/cancel/")
    again = authenticated_client.post(f"/api/v1/journey-sessions/{waiting_session.pk}/resume/")
    missing = authenticated_client.post("/api/v1/journey-sessions/999999/cancel/")

    assert [row["id"] for row in by_status.json()["results"]] == [waiting_session.pk]
    assert [row["journey_id"] for row in by_journey.json()["results"]] == [done.pk]
    assert len(by_contact.json()["results"]) == 2
    assert bad_filter.status_code == 400
    assert [step["node_id"] for step in detail.json()["steps"]] == [
        "greet",
        "check",
        "ab",
        "mark",
        "end",
    ]
    assert detail.json()["status"] == "completed"
    assert (paused.json()["status"], resumed.json()["status"], cancelled.json()["status"]) == (
        "paused",
        "waiting",
        "cancelled",
    )
    assert (again.status_code, again.json()["code"]) == (409, "invalid_session_transition")
    assert missing.status_code == 404


@pytest.mark.django_db(transaction=True)
def test_fifty_concurrent_starts_give_one_201_and_49_409s(user):
    journey = JourneyFactory()
    contact_id = str(uuid.uuid4())
    barrier = threading.Barrier(50)
    statuses: list[int] = []
    lock = threading.Lock()

    def start() -> None:
        client = APIClient()
        client.force_authenticate(user=user)
        try:
            barrier.wait()
            response = client.post(
                f"/api/v1/journeys/{journey.pk}/start/", {"contact_id": contact_id}, format="json"
            )
            with lock:
                statuses.append(response.status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=start) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(statuses) == [201] + [409] * 49
    assert JourneySession.objects.filter(journey=journey, status=SessionStatus.ACTIVE).count() == 1
    assert Contact.objects.filter(pk=contact_id).count() == 1


def test_every_journeys_endpoint_is_in_the_openapi_schema(authenticated_client):
    schema = authenticated_client.get("/api/schema/", HTTP_ACCEPT="application/json").json()

    assert {
        "/api/v1/journeys/": {"get", "post"},
        "/api/v1/journeys/{journey_id}/": {"get", "patch"},
        "/api/v1/journeys/{journey_id}/start/": {"post"},
        "/api/v1/contact-events/": {"post"},
        "/api/v1/journey-sessions/": {"get"},
        "/api/v1/journey-sessions/{session_id}/": {"get"},
        "/api/v1/journey-sessions/{session_id}/pause/": {"post"},
        "/api/v1/journey-sessions/{session_id}/resume/": {"post"},
        "/api/v1/journey-sessions/{session_id}/cancel/": {"post"},
    } == {
        path: set(operations) - {"parameters"}
        for path, operations in schema["paths"].items()
        if path.startswith(("/api/v1/journey", "/api/v1/contact-events"))
    }
