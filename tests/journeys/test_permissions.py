"""Who may use journeys (docs/permissions.md): the holes a guest account once walked through,
the http_request node permission, and sessions visible only with the journey."""

from __future__ import annotations

import json

import pytest
from django.test import Client
from rest_framework.test import APIClient

from journeys.models import Journey, JourneySession, SessionStatus
from journeys.permissions import HTTP_REQUEST_NODE_PERMISSION
from journeys.services import session_start
from tests.core.factories import UserFactory, permission_grant, role_user
from tests.journeys.factories import ContactFactory, JourneyFactory, linear_flow

pytestmark = pytest.mark.django_db

EDITOR_PERMISSIONS = ("journeys.view_journey", "journeys.add_journey", "journeys.change_journey")


def client_for(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user=user)
    return client


def _http_flow(url: str) -> dict:
    return linear_flow(("call", "http_request", {"url": url}), ("end", "exit", {}))


def _live_session() -> JourneySession:
    journey = JourneyFactory()
    session_id = session_start(journey_id=journey.pk, contact_id=ContactFactory().id)
    return JourneySession.objects.get(pk=session_id)


def test_a_guest_account_cannot_read_change_or_run_journeys():
    # Given a journey with a live session, and a logged-in account with no permission
    session = _live_session()
    journey = session.journey
    client = client_for(UserFactory())

    # When it tries what a guest account once could
    answers = {
        "patch journey": client.patch(
            f"/api/v1/journeys/{journey.pk}/", {"name": "Owned"}, format="json"
        ),
        "cancel session": client.post(f"/api/v1/journey-sessions/{session.pk}/cancel/"),
        "list sessions": client.get("/api/v1/journey-sessions/"),
        "session detail": client.get(f"/api/v1/journey-sessions/{session.pk}/"),
        "create http journey": client.post(
            "/api/v1/journeys/",
            {"name": "SSRF", "flow": _http_flow("http://127.0.0.1:8011/hooks/x")},
            format="json",
        ),
        "list journeys": client.get("/api/v1/journeys/"),
        "start": client.post(
            f"/api/v1/journeys/{journey.pk}/start/",
            {"contact_id": str(ContactFactory().id)},
            format="json",
        ),
        "contact event": client.post(
            "/api/v1/contact-events/",
            {"name": "signed_up", "contact_id": str(ContactFactory().id)},
            format="json",
        ),
    }

    # Then every one is 403 and nothing changed
    statuses = {name: response.status_code for name, response in answers.items()}
    assert statuses == dict.fromkeys(answers, 403)
    assert {response.json()["code"] for response in answers.values()} == {"permission_denied"}
    journey.refresh_from_db()
    session.refresh_from_db()
    assert journey.name != "Owned"
    assert session.status == SessionStatus.ACTIVE
    assert Journey.objects.count() == 1
    assert JourneySession.objects.count() == 1


def test_the_403_names_the_permission_that_is_missing():
    viewer = permission_grant(UserFactory(), "journeys.view_journey")

    response = client_for(viewer).patch("/api/v1/journeys/1/", {"name": "x"}, format="json")

    assert response.status_code == 403
    assert "journeys.change_journey" in response.json()["detail"]


def test_an_http_request_node_needs_its_own_permission_to_be_created():
    # Given an editor of journeys without the http_request permission
    editor = permission_grant(UserFactory(), *EDITOR_PERMISSIONS)
    body = {"name": "Call out", "flow": _http_flow("http://127.0.0.1:8011/hooks/x")}

    # When they create a journey with an http_request node, then one without
    refused = client_for(editor).post("/api/v1/journeys/", body, format="json")
    plain = client_for(editor).post(
        "/api/v1/journeys/",
        {"name": "Plain", "flow": linear_flow(("a", "exit", {}))},
        format="json",
    )

    # Then the first is refused with its own code and nothing is saved; the second is created
    assert refused.status_code == 403
    assert refused.json()["code"] == "http_request_permission_required"
    assert '"call"' in refused.json()["detail"]
    assert plain.status_code == 201
    assert list(Journey.objects.values_list("name", flat=True)) == ["Plain"]

    # And with the permission, the same request is accepted
    allowed = permission_grant(editor, HTTP_REQUEST_NODE_PERMISSION)
    assert client_for(allowed).post("/api/v1/journeys/", body, format="json").status_code == 201


def test_an_existing_http_request_node_may_be_kept_but_not_changed_without_the_permission():
    # Given a journey with an http_request node, and an editor without the permission
    flow = _http_flow("http://127.0.0.1:8011/hooks/x")
    journey = JourneyFactory(flow=flow)
    client = client_for(permission_grant(UserFactory(), *EDITOR_PERMISSIONS))
    changed_url = _http_flow("http://127.0.0.1:8011/hooks/other")
    more_nodes = linear_flow(
        ("call", "http_request", {"url": "http://127.0.0.1:8011/hooks/x"}),
        ("note", "set_variable", {"name": "seen", "value": "yes"}),
        ("end", "exit", {}),
    )

    # When they rename it, add a node around the kept one, then change the node's URL
    renamed = client.patch(f"/api/v1/journeys/{journey.pk}/", {"name": "Renamed"}, format="json")
    extended = client.patch(f"/api/v1/journeys/{journey.pk}/", {"flow": more_nodes}, format="json")
    repointed = client.patch(
        f"/api/v1/journeys/{journey.pk}/", {"flow": changed_url}, format="json"
    )

    # Then only the change of the http_request node itself is refused
    assert (renamed.status_code, extended.status_code) == (200, 200)
    assert repointed.status_code == 403
    assert repointed.json()["code"] == "http_request_permission_required"
    journey.refresh_from_db()
    assert journey.flow == more_nodes


def test_a_session_and_its_stored_answers_need_the_permission_to_view_the_journey():
    # Given a session, and a user who may view sessions but not journeys
    session = _live_session()
    session_viewer = permission_grant(UserFactory(), "journeys.view_journeysession")
    both = permission_grant(UserFactory(), "journeys.view_journeysession", "journeys.view_journey")

    # When each reads the session and the list
    refused = client_for(session_viewer).get(f"/api/v1/journey-sessions/{session.pk}/")
    refused_list = client_for(session_viewer).get("/api/v1/journey-sessions/")
    allowed = client_for(both).get(f"/api/v1/journey-sessions/{session.pk}/")

    # Then only the one who may see the journey gets the variables and steps
    assert (refused.status_code, refused_list.status_code) == (403, 403)
    assert "variables" not in refused.json()
    assert allowed.status_code == 200
    assert "variables" in allowed.json()
    assert "steps" in allowed.json()


def test_the_admin_refuses_an_http_request_node_without_the_permission():
    # Given staff who may add journeys in the admin, without the http_request permission
    staff = permission_grant(UserFactory(is_staff=True), *EDITOR_PERMISSIONS)
    client = Client()
    client.force_login(staff)
    form = {
        "name": "Admin call",
        "description": "",
        "is_active": "on",
        "flow": json.dumps(_http_flow("http://127.0.0.1:8011/hooks/x")),
        "triggers": "[]",
        "default_variables": "{}",
    }

    # When they save a journey with an http_request node
    response = client.post("/admin/journeys/journey/add/", form)

    # Then the form shows why, and nothing is saved; an operator may
    assert response.status_code == 200
    assert "journeys.run_http_request_nodes" in response.content.decode()
    assert Journey.objects.count() == 0
    operator = Client()
    operator.force_login(role_user("operator"))
    assert operator.post("/admin/journeys/journey/add/", form).status_code == 302
    assert Journey.objects.count() == 1


def test_admin_session_actions_need_the_change_permission():
    # Given staff who may only view sessions, and a live session
    session = _live_session()
    viewer = permission_grant(
        UserFactory(is_staff=True), "journeys.view_journeysession", "journeys.view_journey"
    )
    client = Client()
    client.force_login(viewer)

    # When they post the cancel action anyway
    listed = client.get("/admin/journeys/journeysession/")
    posted = client.post(
        "/admin/journeys/journeysession/",
        {"action": "cancel_sessions", "_selected_action": [session.pk]},
    )

    # Then the action is not offered, not run, and the session still runs
    # (no action at all for them: the changelist has no action form)
    assert listed.status_code == 200
    assert listed.context["action_form"] is None
    assert posted.status_code in (200, 302)
    session.refresh_from_db()
    assert session.status == SessionStatus.ACTIVE
