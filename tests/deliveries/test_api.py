"""The deliveries API over HTTP: hosts' events, guest import and linking, messages, D4."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from deliveries.models import EventGuest, MessageDelivery, UserLinkAudit
from deliveries.permissions import LINK_GUEST_PERMISSION
from tests.core.factories import UserFactory, permission_grant, role_user
from tests.deliveries.factories import EventFactory, EventGuestFactory, MessageDeliveryFactory

pytestmark = pytest.mark.django_db


def client_for(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user=user)
    return client


def test_a_host_creates_and_lists_only_their_own_events():
    host, other = role_user("host"), role_user("host")
    EventFactory(host=other, name="Not yours")
    client = client_for(host)

    created = client.post(
        "/api/v1/events/", {"name": "Launch", "starts_at": "2026-12-31T19:00:00Z"}, format="json"
    )
    listed = client.get("/api/v1/events/")

    assert created.status_code == 201
    assert created.json()["name"] == "Launch"
    assert [event["name"] for event in listed.json()["results"]] == ["Launch"]


def test_an_anonymous_request_is_refused():
    response = APIClient().get("/api/v1/me/messages/")

    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("get", "/api/v1/events/{event}/", None),
        ("get", "/api/v1/events/{event}/guests/", None),
        (
            "post",
            "/api/v1/events/{event}/guests/",
            {"guests": [{"name": "X", "phone": "+14155550100"}]},
        ),
        ("get", "/api/v1/events/{event}/messages/", None),
        ("post", "/api/v1/events/{event}/messages/", {"body": "hijack"}),
        ("get", "/api/v1/guests/{guest}/", None),
        ("patch", "/api/v1/guests/{guest}/", {"name": "hijack"}),
    ],
)
def test_a_host_cannot_read_or_touch_another_hosts_event(method, path, body):
    owner, intruder = role_user("host"), role_user("host")
    guest = EventGuestFactory(event=EventFactory(host=owner), name="Original")
    client = client_for(intruder)

    response = getattr(client, method)(
        path.format(event=guest.event_id, guest=guest.pk), body, format="json"
    )

    # Not found, not forbidden: the event's existence does not leak.
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    assert EventGuest.objects.get(pk=guest.pk).name == "Original"
    assert EventGuest.objects.count() == 1
    assert MessageDelivery.objects.count() == 0


def test_bulk_import_normalises_phones():
    event = EventFactory()

    response = client_for(event.host).post(
        f"/api/v1/events/{event.pk}/guests/",
        {
            "guests": [
                {"name": "Ada", "phone": "(415) 555-0101"},
                {"name": "Cleo", "phone": "+44 20 7946 0958"},
            ]
        },
        format="json",
    )

    assert response.status_code == 201
    body = response.json()
    assert body["created"] == 2
    assert [(g["name"], g["phone"], g["phone_e164"]) for g in body["guests"]] == [
        ("Ada", "(415) 555-0101", "+14155550101"),
        ("Cleo", "+44 20 7946 0958", "+442079460958"),
    ]


def test_a_bulk_import_with_one_bad_phone_writes_nothing_and_names_the_row():
    event = EventFactory()

    response = client_for(event.host).post(
        f"/api/v1/events/{event.pk}/guests/",
        {
            "guests": [
                {"name": "Ada", "phone": "+14155550101"},
                {"name": "Ben", "phone": "+14155550102"},
                {"name": "Bad", "phone": "12"},
                {"name": "Dan", "phone": "+14155550104"},
            ]
        },
        format="json",
    )

    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid_guest_rows"
    assert body["detail"].startswith("row 2: phone: ")
    assert [(error["index"], error["field"]) for error in body["errors"]] == [(2, "phone")]
    assert "'12'" in body["errors"][0]["reason"]
    assert EventGuest.objects.count() == 0


def test_a_bulk_import_reports_every_bad_row():
    event = EventFactory()

    response = client_for(event.host).post(
        f"/api/v1/events/{event.pk}/guests/",
        {"guests": [{"name": "", "phone": "+14155550101"}, {"name": "Ok", "phone": "x"}, "nope"]},
        format="json",
    )

    assert response.status_code == 400
    assert [(e["index"], e["field"]) for e in response.json()["errors"]] == [
        (0, "name"),
        (1, "phone"),
        (2, "row"),
    ]
    assert EventGuest.objects.count() == 0


def test_a_name_with_a_null_character_is_a_bad_row_not_a_500():
    event = EventFactory()

    response = client_for(event.host).post(
        f"/api/v1/events/{event.pk}/guests/",
        {
            "guests": [
                {"name": "Ada", "phone": "+14155550101"},
                {"name": "B\u0000b", "phone": "+14155550102"},
            ]
        },
        format="json",
    )

    assert response.status_code == 400
    assert response.json()["errors"] == [
        {"index": 1, "field": "name", "reason": "no null characters"}
    ]
    assert EventGuest.objects.count() == 0


def test_a_bulk_import_without_rows_is_a_400():
    event = EventFactory()

    response = client_for(event.host).post(
        f"/api/v1/events/{event.pk}/guests/", {"guests": []}, format="json"
    )

    assert response.status_code == 400
    assert response.json()["code"] == "invalid_guest_rows"


def test_sending_a_message_creates_one_linked_delivery_per_active_guest():
    event = EventFactory()
    ada = UserFactory()
    EventGuestFactory(event=event, user=ada)
    EventGuestFactory(event=event)

    response = client_for(event.host).post(
        f"/api/v1/events/{event.pk}/messages/", {"body": "Doors at 7"}, format="json"
    )

    assert response.status_code == 201
    body = response.json()
    assert (body["delivery_count"], body["linked_count"], body["body"]) == (2, 1, "Doors at 7")
    assert MessageDelivery.objects.filter(message_id=body["id"], user=ada).count() == 1
    listed = client_for(event.host).get(f"/api/v1/events/{event.pk}/messages/").json()
    assert [(m["id"], m["delivery_count"], m["linked_count"]) for m in listed["results"]] == [
        (body["id"], 2, 1)
    ]


def test_patching_a_guest_with_a_user_backfills_its_deliveries():
    guest = EventGuestFactory()
    deliveries = [MessageDeliveryFactory(guest=guest) for _ in range(3)]
    user = UserFactory()
    # Linking names a user id: the permission operators have.
    linker = permission_grant(guest.event.host, LINK_GUEST_PERMISSION)

    response = client_for(linker).patch(
        f"/api/v1/guests/{guest.pk}/", {"user_id": user.pk}, format="json"
    )

    assert response.status_code == 200
    assert response.json()["user_id"] == user.pk
    assert (
        sorted(MessageDelivery.objects.filter(guest=guest).values_list("user_id", flat=True))
        == [user.pk] * 3
    )
    assert UserLinkAudit.objects.filter(method="guest_backfill", outcome="linked").count() == 3
    assert sorted(
        UserLinkAudit.objects.filter(method="guest_backfill").values_list("delivery_id", flat=True)
    ) == sorted(delivery.pk for delivery in deliveries)


def test_relinking_through_the_api_needs_relink_true():
    old, new = UserFactory(), UserFactory()
    guest = EventGuestFactory(user=old)
    delivery = MessageDeliveryFactory(guest=guest)
    client = client_for(permission_grant(guest.event.host, LINK_GUEST_PERMISSION))

    refused = client.patch(f"/api/v1/guests/{guest.pk}/", {"user_id": new.pk}, format="json")
    moved = client.patch(
        f"/api/v1/guests/{guest.pk}/", {"user_id": new.pk, "relink": True}, format="json"
    )

    assert refused.status_code == 409
    assert refused.json()["code"] == "guest_already_linked"
    assert moved.status_code == 200
    assert MessageDelivery.objects.get(pk=delivery.pk).user_id == new.pk
    assert UserLinkAudit.objects.filter(method="manual", delivery=delivery).count() == 1


def test_patching_with_an_unknown_user_or_bad_phone_is_a_400():
    guest = EventGuestFactory()
    client = client_for(permission_grant(guest.event.host, LINK_GUEST_PERMISSION))

    unknown = client.patch(f"/api/v1/guests/{guest.pk}/", {"user_id": 999_999}, format="json")
    bad_phone = client.patch(f"/api/v1/guests/{guest.pk}/", {"phone": "12"}, format="json")

    assert (unknown.status_code, unknown.json()["code"]) == (400, "unknown_user")
    assert (bad_phone.status_code, bad_phone.json()["code"]) == (400, "invalid_phone")
    assert EventGuest.objects.get(pk=guest.pk).user_id is None


def test_removing_a_guest_through_the_api():
    guest = EventGuestFactory()

    response = client_for(guest.event.host).patch(
        f"/api/v1/guests/{guest.pk}/", {"is_removed": True}, format="json"
    )

    assert response.json()["is_removed"] is True
    assert EventGuest.objects.get(pk=guest.pk).removed_at is not None


# -- D4 ------------------------------------------------------------------------------------------


def test_me_messages_shows_only_the_requesters_deliveries_whatever_the_query_string():
    alice, bob = UserFactory(), UserFactory()
    event = EventFactory()
    alice_guest = EventGuestFactory(event=event, user=alice)
    bob_guest = EventGuestFactory(event=event, user=bob)
    alice_delivery = MessageDeliveryFactory(guest=alice_guest)
    MessageDeliveryFactory(guest=bob_guest)
    MessageDeliveryFactory(guest=EventGuestFactory(event=event))  # nobody's yet
    client = client_for(alice)

    for query in (
        "",
        f"?user={bob.pk}",
        f"?user_id={bob.pk}",
        f"?guest={bob_guest.pk}",
        f"?event={event.pk}",
        "?all=1",
        "?page_size=500",
        "?ordering=id",
    ):
        response = client.get(f"/api/v1/me/messages/{query}")
        assert response.status_code == 200, query
        results = response.json()["results"]
        assert [item["id"] for item in results] == [alice_delivery.pk], query


def test_me_messages_shows_the_message_and_its_event():
    alice = UserFactory()
    delivery = MessageDeliveryFactory(guest=EventGuestFactory(user=alice))

    item = client_for(alice).get("/api/v1/me/messages/").json()["results"][0]

    assert item["message_id"] == delivery.message_id
    assert item["body"] == delivery.message.body
    assert item["event"]["id"] == delivery.message.event_id
    assert item["status"] == "queued"


def test_a_guest_cannot_read_messages_through_the_hosts_endpoints():
    host, guest_user = role_user("host"), UserFactory()
    guest = EventGuestFactory(event=EventFactory(host=host), user=guest_user)
    MessageDeliveryFactory(guest=guest)
    client = client_for(guest_user)

    # A guest holds no permission: the hosts' endpoints refuse it whatever the event.
    for path in (
        f"/api/v1/events/{guest.event_id}/messages/",
        f"/api/v1/events/{guest.event_id}/guests/",
        "/api/v1/events/",
    ):
        response = client.get(path)
        assert (response.status_code, response.json()["code"]) == (403, "permission_denied")


def test_me_messages_follows_a_guest_link():
    guest = EventGuestFactory()
    delivery = MessageDeliveryFactory(guest=guest)
    alice = UserFactory()
    client = client_for(alice)
    assert client.get("/api/v1/me/messages/").json()["results"] == []

    client_for(permission_grant(guest.event.host, LINK_GUEST_PERMISSION)).patch(
        f"/api/v1/guests/{guest.pk}/", {"user_id": alice.pk}, format="json"
    )

    assert [item["id"] for item in client.get("/api/v1/me/messages/").json()["results"]] == [
        delivery.pk
    ]
