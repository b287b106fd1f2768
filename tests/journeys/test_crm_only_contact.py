"""Acceptance: a contact that exists only in the CRM goes through a whole journey."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
import requests
from django.conf import settings as django_settings
from django.utils import timezone

from journeys import crm
from journeys.crm import CrmContact
from journeys.models import Contact, JourneySession, JourneyStep, SessionStatus
from journeys.services import (
    contact_enrich,
    contacts_enrich,
    session_start,
    sessions_resume_due,
)
from journeys.services.contacts import contact_changes_from_crm
from tests.journeys.conftest import advance_all
from tests.journeys.factories import ContactFactory, JourneyFactory, linear_flow

pytestmark = pytest.mark.django_db


def _flow():
    return {
        "nodes": [
            {
                "id": "hello",
                "type": "send_message",
                "config": {"conversation_id": "77", "content": "Welcome {{contact.name}}"},
            },
            {"id": "pause", "type": "wait", "config": {"seconds": 30}},
            {
                "id": "order",
                "type": "wait_for_event",
                "config": {"event": "ordered", "timeout_seconds": 86400},
            },
            {
                "id": "big",
                "type": "condition",
                "config": {
                    "field": "variables.event.properties.total",
                    "operator": "greater_than",
                    "value": 100,
                },
            },
            {"id": "vip", "type": "exit", "config": {"reason": "big order"}},
            {"id": "small", "type": "exit", "config": {"reason": "small order"}},
            {"id": "late", "type": "exit", "config": {"reason": "no order"}},
        ],
        "edges": [
            {"source": "hello", "target": "pause"},
            {"source": "pause", "target": "order"},
            {"source": "order", "target": "big", "handle": "event"},
            {"source": "order", "target": "late", "handle": "timeout"},
            {"source": "big", "target": "vip", "handle": "true"},
            {"source": "big", "target": "small", "handle": "false"},
        ],
    }


def _run_to_completion(authenticated_client, session_id, contact_id, total):
    advance_all()
    session = JourneySession.objects.get(pk=session_id)
    assert session.status == SessionStatus.WAITING
    assert session.wait_event == ""
    JourneySession.objects.filter(pk=session_id).update(
        wait_until=timezone.now() - timedelta(seconds=1)
    )
    sessions_resume_due()
    advance_all()
    assert JourneySession.objects.get(pk=session_id).wait_event == "ordered"
    response = authenticated_client.post(
        "/api/v1/contact-events/",
        {"name": "ordered", "contact_id": contact_id, "properties": {"total": total}},
        format="json",
    )
    assert response.json()["resumed_session_ids"] == [session_id]
    advance_all()
    return JourneySession.objects.get(pk=session_id)


@pytest.mark.parametrize("entry", ["api", "event"])
def test_a_crm_only_contact_runs_a_journey_to_the_end_and_is_enriched(
    entry, authenticated_client, crm_simulator, settings
):
    settings.JOURNEYS_ENRICH_CONTACTS = True
    journey = JourneyFactory(
        flow=_flow(), triggers=[{"event": "signed_up", "filters": {"via": "web"}}]
    )
    contact_id = str(uuid.uuid4())
    crm_name = crm_simulator.generated_contact(contact_id)["name"]
    assert not Contact.objects.filter(pk=contact_id).exists()

    if entry == "api":
        response = authenticated_client.post(
            f"/api/v1/journeys/{journey.pk}/start/", {"contact_id": contact_id}, format="json"
        )
        session_id = response.json()["session_id"]
    else:
        response = authenticated_client.post(
            "/api/v1/contact-events/",
            {"name": "signed_up", "contact_id": contact_id, "properties": {"via": "web"}},
            format="json",
        )
        [session_id] = response.json()["started_session_ids"]
    session = _run_to_completion(authenticated_client, session_id, contact_id, total=250)

    assert (session.status, session.ended_reason) == (SessionStatus.COMPLETED, "big order")
    assert list(
        JourneyStep.objects.filter(session=session)
        .order_by("step_number")
        .values_list("node_id", "status")
    ) == [
        ("hello", "completed"),
        ("pause", "completed"),
        ("order", "completed"),
        ("big", "completed"),
        ("vip", "completed"),
    ]
    # The first node reads contact.name: the engine enriched the stub from the CRM first.
    assert [m["content"] for m in crm_simulator.messages()] == [f"Welcome {crm_name}"]
    assert Contact.objects.filter(pk=contact_id).count() == 1
    contact = Contact.objects.get(pk=contact_id)
    assert contact.name == crm_name
    assert contact.crm_synced_at is not None
    assert contact.phone_e164 == crm_simulator.generated_contact(contact_id)["phone_number"]

    # ...and a later stub upsert (another session write for the contact) leaves it intact.
    other = JourneyFactory()
    authenticated_client.post(
        f"/api/v1/journeys/{other.pk}/start/", {"contact_id": contact_id}, format="json"
    )
    advance_all()
    assert Contact.objects.get(pk=contact_id).name == crm_name
    assert Contact.objects.count() == 1


def test_enrichment_never_overwrites_newer_local_data(crm_simulator):
    contact = ContactFactory(name="Local Name", email="", custom_attributes={"plan": "local"})
    older = CrmContact(
        id=str(contact.pk),
        name="CRM Name",
        email="crm@example.com",
        custom_attributes={"plan": "crm", "extra": 1},
        updated_at=contact.updated_at - timedelta(days=1),
    )
    newer = older.model_copy(update={"updated_at": contact.updated_at + timedelta(seconds=5)})

    # An older CRM copy only fills what is empty locally.
    assert contact_changes_from_crm(contact, older) == {
        "email": "crm@example.com",
        "custom_attributes": {"plan": "local", "extra": 1},
    }
    assert contact_changes_from_crm(contact, newer)["name"] == "CRM Name"
    assert contact_changes_from_crm(contact, newer)["custom_attributes"] == {
        "plan": "crm",
        "extra": 1,
    }


def test_enrichment_of_a_contact_unknown_to_the_crm_leaves_the_stub(crm_simulator):
    contact_id = "00000000-0000-4000-8000-00000000abcd"
    ContactFactory(id=contact_id, name="")

    assert contact_enrich(contact_id=contact_id) is False
    assert Contact.objects.get(pk=contact_id).crm_synced_at is None


@pytest.mark.parametrize("crm_state", ["unknown contact", "crm down"])
def test_a_stub_the_crm_cannot_enrich_runs_with_its_empty_fields(
    crm_simulator, settings, crm_state
):
    # given enrichment on, and a contact the CRM does not know, or a CRM answering 503
    settings.JOURNEYS_ENRICH_CONTACTS = True
    settings.CRM_ATTEMPTS = 1
    crm._client_for.cache_clear()
    contact_id = str(uuid.uuid4())
    if crm_state == "unknown contact":
        contact_id = "00000000-0000-4000-8000-00000000beef"  # the simulator's 404s
    else:
        crm_simulator.faults.fault_rate = 1.0
    journey = JourneyFactory(
        flow=linear_flow(
            ("hi", "set_variable", {"name": "greeting", "value": "Hi {{contact.name}}"}),
            ("end", "exit", {}),
        )
    )
    session_id = session_start(journey_id=journey.pk, contact_id=contact_id)

    # when the session runs its first node, which reads contact.name
    advance_all()

    # then the CRM was asked once, and the session went on with the stub
    assert crm_simulator.counters.calls("contacts.get") == 1
    session = JourneySession.objects.get(pk=session_id)
    assert (session.status, session.variables) == (SessionStatus.COMPLETED, {"greeting": "Hi "})
    assert Contact.objects.get(pk=contact_id).crm_synced_at is None
    crm._client_for.cache_clear()


def test_a_crm_timestamp_without_offset_is_taken_as_utc(crm_simulator):
    # given a stub the CRM holds with an updated_at that has no offset
    contact = ContactFactory(name="")
    crm_simulator.contact(str(contact.pk))["updated_at"] = "2030-01-02T03:04:05"

    # when it is enriched
    found = contact_enrich(contact_id=contact.pk)

    # then the CRM's copy counts as newer and fills the contact
    assert found is True
    contact.refresh_from_db()
    assert contact.name == crm_simulator.generated_contact(str(contact.pk))["name"]
    assert contact.crm_synced_at is not None


def test_one_contact_failing_does_not_stop_the_others_enrichment(crm_simulator):
    # given two stubs, the first of which the CRM answers with an unexpected shape
    broken, fine = ContactFactory(name=""), ContactFactory(name="")
    crm_simulator.contact(str(broken.pk))["custom_attributes"] = "not a map"

    # when both are enriched in one batch
    found = contacts_enrich(contact_ids=[broken.pk, fine.pk])

    # then the second one still was
    assert found == 1
    assert Contact.objects.get(pk=broken.pk).crm_synced_at is None
    assert Contact.objects.get(pk=fine.pk).crm_synced_at is not None


def crm_contact_put(simulator, contact_id: str, fields: dict) -> None:
    """Set a contact's fields in the running CRM simulator (its control API, real HTTP)."""
    response = requests.put(
        f"{django_settings.CRM_BASE_URL}/_control/contacts/{contact_id}", json=fields, timeout=5
    )
    assert response.status_code == 200


def test_a_contact_blocked_in_the_crm_before_its_stub_existed_is_marked_blocked(
    authenticated_client, crm_simulator
):
    journey = JourneyFactory()
    contact_id = str(uuid.uuid4())
    # Blocked in the CRM a day ago: older than the stub the session start is about to create.
    crm_contact_put(
        crm_simulator,
        contact_id,
        {"blocked": True, "updated_at": (timezone.now() - timedelta(days=1)).isoformat()},
    )
    response = authenticated_client.post(
        f"/api/v1/journeys/{journey.pk}/start/", {"contact_id": contact_id}, format="json"
    )
    assert response.status_code == 201
    stub = Contact.objects.get(pk=contact_id)
    assert (stub.is_stub, stub.is_blocked) == (True, False)

    assert contact_enrich(contact_id=contact_id) is True

    enriched = Contact.objects.get(pk=contact_id)
    assert (enriched.is_stub, enriched.is_blocked) == (False, True)


def test_an_older_crm_copy_never_unblocks_a_contact_nor_blocks_an_enriched_one(crm_simulator):
    blocked_stub = ContactFactory(is_blocked=True)
    enriched = ContactFactory(crm_synced_at=timezone.now())
    for contact, blocked in ((blocked_stub, False), (enriched, True)):
        crm_contact_put(
            crm_simulator,
            str(contact.pk),
            {"blocked": blocked, "updated_at": (timezone.now() - timedelta(days=1)).isoformat()},
        )

        assert contact_enrich(contact_id=contact.pk) is True

        assert Contact.objects.get(pk=contact.pk).is_blocked is not blocked
