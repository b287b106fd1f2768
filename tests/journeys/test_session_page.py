"""A session's page: the actions that apply to its status as buttons, each asking first (GET)
and acting only on the confirmation's POST through the session services; read-only pages offer
no "Save"; the timeline is a table of steps with times and durations."""

from __future__ import annotations

import uuid

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse
from django.utils.html import strip_tags

from evoflow.permissions import OPERATORS_GROUP
from journeys import services
from journeys.models import JourneySession, JourneyStep, SessionStatus
from tests.core.factories import UserFactory
from tests.journeys.conftest import advance_all
from tests.journeys.factories import ContactFactory, JourneyFactory, linear_flow

pytestmark = pytest.mark.django_db


def _waiting_session() -> JourneySession:
    journey = JourneyFactory(flow=linear_flow(("w", "wait", {"hours": 1}), ("z", "exit", {})))
    session_id = services.session_start(journey_id=journey.pk, contact_id=str(uuid.uuid4()))
    advance_all()
    session = JourneySession.objects.get(pk=session_id)
    assert session.status == SessionStatus.WAITING
    return session


def _page(session: JourneySession) -> str:
    return reverse("admin:journeys_journeysession_change", args=[session.pk])


def _do(session: JourneySession, action: str) -> str:
    return reverse("admin:journeys_journeysession_do", args=[session.pk, action])


def _messages(response) -> list[str]:
    return [strip_tags(str(message)) for message in response.context["messages"]]


@pytest.fixture
def operator_web() -> Client:
    user = UserFactory(is_staff=True)
    user.groups.add(Group.objects.get(name=OPERATORS_GROUP))
    client = Client()
    client.force_login(user)
    return client


def test_the_page_offers_the_actions_of_its_status_and_no_save(operator_web):
    session = _waiting_session()

    page = operator_web.get(_page(session)).content.decode()

    assert 'data-testid="session-pause"' in page
    assert 'data-testid="session-cancel"' in page
    assert 'data-testid="session-resume"' not in page
    assert 'data-testid="session-retry"' not in page
    # Nothing on the page is editable: no Save buttons.
    assert 'name="_save"' not in page
    assert 'name="_addanother"' not in page
    assert 'name="_continue"' not in page
    # The timeline: one row per step, with its time in the admin's format.
    step = JourneyStep.objects.filter(session=session).order_by("step_number").first()
    assert step is not None
    assert step.started_at.strftime("%Y-%m-%d %H:%M:%S UTC") in page


def test_pause_asks_first_then_pauses_and_resume_brings_it_back(operator_web):
    session = _waiting_session()

    asked = operator_web.get(_do(session, "pause"))
    session.refresh_from_db()
    assert asked.status_code == 200
    assert "Pause this session?" in asked.content.decode()
    assert session.status == SessionStatus.WAITING

    paused = operator_web.post(_do(session, "pause"), follow=True)
    session.refresh_from_db()
    assert session.status == SessionStatus.PAUSED
    assert _messages(paused) == [f"Session {session.pk} paused."]
    assert 'data-testid="session-resume"' in paused.content.decode()

    resumed = operator_web.post(_do(session, "resume"), follow=True)
    session.refresh_from_db()
    assert session.status == SessionStatus.WAITING
    assert _messages(resumed) == [f"Session {session.pk} resumed (waiting)."]


def test_an_action_that_does_not_apply_says_why_and_changes_nothing(operator_web):
    session = _waiting_session()
    services.session_cancel(session_id=session.pk)

    asked = operator_web.get(_do(session, "retry"), follow=True)
    posted = operator_web.post(_do(session, "resume"), follow=True)

    assert _messages(asked) == [f"Session {session.pk} is cancelled: it cannot be retried."]
    assert _messages(posted) == [
        f"Not done: session {session.pk} is cancelled; it cannot be resumed"
    ]
    assert JourneySession.objects.count() == 1
    session.refresh_from_db()
    assert session.status == SessionStatus.CANCELLED


@pytest.mark.parametrize("action", ["explode", "delete"])
def test_an_unknown_action_or_session_is_not_found(operator_web, action):
    session = _waiting_session()

    assert operator_web.get(_do(session, action)).status_code == 404
    missing = reverse("admin:journeys_journeysession_do", args=["999999", "pause"])
    assert operator_web.post(missing).status_code == 404
    assert operator_web.post(missing.replace("999999", "²")).status_code == 404


def test_a_viewer_without_the_change_permission_gets_no_buttons_and_a_403():
    session = _waiting_session()
    viewer = UserFactory(is_staff=True)
    viewer.user_permissions.set(
        Group.objects.get(name=OPERATORS_GROUP).permissions.filter(codename="view_journeysession")
    )
    client = Client()
    client.force_login(viewer)

    page = client.get(_page(session)).content.decode()
    refused = client.post(_do(session, "cancel"))

    assert 'data-testid="session-actions"' not in page
    assert refused.status_code == 403
    session.refresh_from_db()
    assert session.status == SessionStatus.WAITING


def test_enriching_contacts_from_the_crm_asks_first(operator_web):
    contact = ContactFactory(name="Stubby", crm_synced_at=None)

    asked = operator_web.post(
        "/admin/journeys/contact/",
        {"action": "enrich_from_crm", "_selected_action": [str(contact.pk)]},
    )

    assert asked.status_code == 200
    assert "Read these contacts from the CRM now" in asked.content.decode()
    contact.refresh_from_db()
    assert contact.crm_synced_at is None
