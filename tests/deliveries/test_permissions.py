"""Who may link guests to users (docs/permissions.md): an operator permission. A host may not
address user ids at all, and every id gets the same refusal, so none can be enumerated."""

from __future__ import annotations

import pytest
from django.test import Client
from rest_framework.test import APIClient

from deliveries.models import EventGuest, MessageDelivery
from deliveries.permissions import LINK_GUEST_PERMISSION
from tests.core.factories import UserFactory, permission_grant, role_user
from tests.deliveries.factories import EventFactory, EventGuestFactory, MessageDeliveryFactory

pytestmark = pytest.mark.django_db


def client_for(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user=user)
    return client


def test_a_host_cannot_put_messages_in_another_users_inbox():
    # Given a host's guest with a delivery, and some other user's account
    host = role_user("host")
    guest = EventGuestFactory(event=EventFactory(host=host))
    MessageDeliveryFactory(guest=guest)
    victim = UserFactory()
    client = client_for(host)

    # When the host links the guest to that user, with and without relink, then sends a message
    answers = [
        client.patch(f"/api/v1/guests/{guest.pk}/", {"user_id": victim.pk}, format="json"),
        client.patch(
            f"/api/v1/guests/{guest.pk}/", {"user_id": victim.pk, "relink": True}, format="json"
        ),
    ]
    sent = client.post(f"/api/v1/events/{guest.event_id}/messages/", {"body": "hi"}, format="json")

    # Then the links are refused and nothing reaches the user's inbox
    assert [(answer.status_code, answer.json()["code"]) for answer in answers] == [
        (403, "guest_link_not_allowed")
    ] * 2
    assert sent.status_code == 201
    assert EventGuest.objects.get(pk=guest.pk).user_id is None
    assert client_for(victim).get("/api/v1/me/messages/").json()["results"] == []
    assert not MessageDelivery.objects.filter(user=victim).exists()


def test_existing_and_unknown_user_ids_get_the_same_answer():
    # Given a host's guest, one user id that exists and one beyond every user
    host = role_user("host")
    guest = EventGuestFactory(event=EventFactory(host=host))
    existing = UserFactory().pk
    client = client_for(host)

    # When the host names each
    answers = [
        client.patch(f"/api/v1/guests/{guest.pk}/", {"user_id": user_id}, format="json")
        for user_id in (existing, existing + 10_000, host.pk)
    ]

    # Then the answers are identical: the ids cannot be told apart
    assert len({(answer.status_code, answer.content) for answer in answers}) == 1
    assert answers[0].status_code == 403


def test_a_host_still_edits_and_removes_their_guests():
    guest = EventGuestFactory(event=EventFactory(host=role_user("host")))

    response = client_for(guest.event.host).patch(
        f"/api/v1/guests/{guest.pk}/", {"name": "Renamed", "is_removed": True}, format="json"
    )

    assert response.status_code == 200
    assert (response.json()["name"], response.json()["is_removed"]) == ("Renamed", True)


def test_with_the_permission_a_guest_is_linked_and_unknown_ids_are_named():
    # Given the event's host holding the operator permission
    guest = EventGuestFactory()
    MessageDeliveryFactory(guest=guest)
    linker = permission_grant(guest.event.host, LINK_GUEST_PERMISSION)
    user = UserFactory()

    unknown = client_for(linker).patch(
        f"/api/v1/guests/{guest.pk}/", {"user_id": user.pk + 10_000}, format="json"
    )
    linked = client_for(linker).patch(
        f"/api/v1/guests/{guest.pk}/", {"user_id": user.pk}, format="json"
    )

    assert (unknown.status_code, unknown.json()["code"]) == (400, "unknown_user")
    assert linked.status_code == 200
    assert [item["body"] for item in client_for(user).get("/api/v1/me/messages/").json()["results"]]


def test_the_admin_link_action_needs_the_link_permission():
    # Given staff who may change guests but not link them, and an operator
    guest = EventGuestFactory()
    staff = permission_grant(
        UserFactory(is_staff=True), "deliveries.view_eventguest", "deliveries.change_eventguest"
    )
    staff_client, operator_client = Client(), Client()
    staff_client.force_login(staff)
    operator_client.force_login(role_user("operator"))

    def offered(client: Client) -> list[str]:
        form = client.get("/admin/deliveries/eventguest/").context["action_form"]
        return [] if form is None else [name for name, _ in form.fields["action"].choices if name]

    # Then only the operator is offered "link to user"
    assert "link_to_user" not in offered(staff_client)
    assert "link_to_user" in offered(operator_client)
    target = UserFactory()
    staff_client.post(
        "/admin/deliveries/eventguest/",
        {
            "action": "link_to_user",
            "_selected_action": [guest.pk],
            "confirm": "1",
            "user": target.pk,
        },
    )
    assert EventGuest.objects.get(pk=guest.pk).user_id is None


def test_migrate_creates_the_hosts_group_and_grants_the_roles_their_permissions():
    # The groups as `migrate` left them (no test helper creates them here)
    from django.contrib.auth.models import Group

    from deliveries.permissions import HOST_PERMISSIONS, HOSTS_GROUP
    from journeys.permissions import HTTP_REQUEST_NODE_PERMISSION

    def names(group: str) -> set[str]:
        return {
            f"{app_label}.{codename}"
            for app_label, codename in Group.objects.get(name=group).permissions.values_list(
                "content_type__app_label", "codename"
            )
        }

    assert names(HOSTS_GROUP) == set(HOST_PERMISSIONS)
    assert {LINK_GUEST_PERMISSION, HTTP_REQUEST_NODE_PERMISSION} <= names("operators")
