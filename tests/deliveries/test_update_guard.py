"""Deliveries stay with the person their guest is, whatever writes the guest or the delivery.

D1 and D4 on the paths around the services (issue: "A keeps reading B's messages"): a guest
moved to another user, or unlinked, by `QuerySet.update` or raw SQL takes its deliveries with
it (the guest trigger, audited `manual`), and an UPDATE of deliveries that would clear or change
the user of an active, linked guest's delivery, or move a delivery to another guest or message,
is refused by the database. What the previous user reads is checked through the API.
"""

from __future__ import annotations

import pytest
from django.db import DatabaseError, IntegrityError, connection, transaction
from rest_framework.test import APIClient

from deliveries import services
from deliveries.models import EventGuest, MessageDelivery, UserLinkAudit
from evoflow.models import User
from tests.core.factories import UserFactory
from tests.deliveries.conftest import FALLBACK, LINKING, flag_set
from tests.deliveries.factories import (
    EventFactory,
    EventGuestFactory,
    MessageDeliveryFactory,
    MessageFactory,
)

pytestmark = pytest.mark.django_db

GUARD = "a delivery of an active, linked guest carries that guest's user"
FIXED = "a delivery's guest and message never change"


def messages_read_by(user: User) -> list[str]:
    client = APIClient()
    client.force_authenticate(user=user)
    response = client.get("/api/v1/me/messages/")
    assert response.status_code == 200
    return sorted(item["body"] for item in response.json()["results"])


def users_of(guest: EventGuest) -> set[int | None]:
    return set(MessageDelivery.objects.filter(guest=guest).values_list("user_id", flat=True))


def guest_with_two_messages(user: User) -> EventGuest:
    guest = EventGuestFactory(user=user)
    for body in ("first", "second"):
        services.message_send(event=guest.event, sender=guest.event.host, body=body)
    return guest


def raw(statement: str, params: list) -> int:
    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        return cursor.rowcount


# -- a guest moved around guest_relink_user ------------------------------------------------------


@pytest.mark.parametrize("path", ["queryset_update", "raw_sql", "save"])
def test_a_guest_moved_to_another_user_by_any_path_takes_its_deliveries(path: str) -> None:
    user_a, user_b = UserFactory(), UserFactory()
    guest = guest_with_two_messages(user_a)
    assert messages_read_by(user_a) == ["first", "second"]

    if path == "queryset_update":
        EventGuest.objects.filter(pk=guest.pk).update(user=user_b)
    elif path == "raw_sql":
        raw("UPDATE deliveries_eventguest SET user_id = %s WHERE id = %s", [user_b.pk, guest.pk])
    else:
        guest.user = user_b
        guest.save()

    assert messages_read_by(user_a) == []
    assert messages_read_by(user_b) == ["first", "second"]
    moves = UserLinkAudit.objects.filter(method="manual").order_by("id")
    assert [
        (row.user_id, row.outcome, row.details["reason"], row.details["previous_user_id"])
        for row in moves
    ] == [(user_b.pk, "linked", "guest_relinked", user_a.pk)] * 2


def test_a_guest_unlinked_by_raw_sql_takes_its_deliveries_from_the_previous_user() -> None:
    user_a = UserFactory()
    guest = guest_with_two_messages(user_a)

    raw("UPDATE deliveries_eventguest SET user_id = NULL WHERE id = %s", [guest.pk])

    assert messages_read_by(user_a) == []
    assert users_of(guest) == {None}
    unlinks = UserLinkAudit.objects.filter(method="manual")
    assert sorted((row.user_id, row.outcome, row.details["reason"]) for row in unlinks) == [
        (None, "no_match", "guest_unlinked"),
        (None, "no_match", "guest_unlinked"),
    ]
    assert {row.details["previous_user_id"] for row in unlinks} == {user_a.pk}


def test_one_statement_moving_several_guests_names_each_ones_previous_user() -> None:
    user_a, user_b, user_c = UserFactory(), UserFactory(), UserFactory()
    event = EventFactory()
    first = EventGuestFactory(event=event, user=user_a)
    second = EventGuestFactory(event=event, user=user_b)
    services.message_send(event=event, sender=event.host, body="hello")

    EventGuest.objects.filter(pk__in=[first.pk, second.pk]).update(user=user_c)

    assert users_of(first) == users_of(second) == {user_c.pk}
    assert sorted(
        (row.guest_id, row.details["previous_user_id"])
        for row in UserLinkAudit.objects.filter(method="manual")
    ) == sorted([(first.pk, user_a.pk), (second.pk, user_b.pk)])


def test_a_moved_guest_takes_its_deliveries_whatever_the_flags() -> None:
    user_a, user_b = UserFactory(), UserFactory()
    guest = guest_with_two_messages(user_a)
    flag_set(LINKING, False)
    flag_set(FALLBACK, False)

    EventGuest.objects.filter(pk=guest.pk).update(user=user_b)

    assert users_of(guest) == {user_b.pk}
    assert messages_read_by(user_a) == []


def test_the_relink_service_moves_through_the_same_trigger_once() -> None:
    user_a, user_b = UserFactory(), UserFactory()
    guest = guest_with_two_messages(user_a)

    moved = services.guest_relink_user(guest=guest, user=user_b)

    assert moved == 2
    assert UserLinkAudit.objects.filter(method="manual").count() == 2
    assert users_of(guest) == {user_b.pk}


def test_deleting_a_linked_guests_user_leaves_nobody_reading_its_deliveries() -> None:
    user_a = UserFactory()
    guest = guest_with_two_messages(user_a)

    user_a.delete()

    guest.refresh_from_db()
    assert guest.user_id is None
    assert users_of(guest) == {None}


# -- the guard on UPDATE of deliveries -----------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE deliveries_messagedelivery SET user_id = NULL WHERE id = %(id)s",
        "UPDATE deliveries_messagedelivery SET user_id = %(other)s WHERE id = %(id)s",
    ],
    ids=["cleared", "another_user"],
)
def test_raw_sql_cannot_take_a_linked_guests_delivery_from_its_user(statement: str) -> None:
    owner, other = UserFactory(), UserFactory()
    delivery = MessageDeliveryFactory(guest=EventGuestFactory(user=owner))

    with pytest.raises(IntegrityError, match=GUARD), transaction.atomic():
        raw(statement, {"id": delivery.pk, "other": other.pk})  # type: ignore[arg-type]

    assert MessageDelivery.objects.get(pk=delivery.pk).user_id == owner.pk


def test_queryset_update_cannot_hand_a_linked_guests_deliveries_to_someone_else() -> None:
    owner, other = UserFactory(), UserFactory()
    guest = guest_with_two_messages(owner)

    with pytest.raises(IntegrityError, match=GUARD), transaction.atomic():
        MessageDelivery.objects.filter(guest=guest).update(user=other)

    assert messages_read_by(other) == []
    assert messages_read_by(owner) == ["first", "second"]


def test_a_delivery_never_moves_to_another_guest_or_message() -> None:
    owner, other = UserFactory(), UserFactory()
    event = EventFactory()
    guest, stranger = EventGuestFactory(event=event, user=owner), EventGuestFactory(event=event)
    delivery = MessageDeliveryFactory(guest=guest)
    other_message = MessageFactory(event=EventFactory(host=other))

    for statement, value in (
        ("UPDATE deliveries_messagedelivery SET guest_id = %s WHERE id = %s", stranger.pk),
        ("UPDATE deliveries_messagedelivery SET message_id = %s WHERE id = %s", other_message.pk),
    ):
        with pytest.raises(IntegrityError, match=FIXED), transaction.atomic():
            raw(statement, [value, delivery.pk])

    stored = MessageDelivery.objects.get(pk=delivery.pk)
    assert (stored.guest_id, stored.message_id) == (guest.pk, delivery.message_id)


def test_status_changes_and_unlinked_guests_deliveries_stay_writable() -> None:
    flag_set(FALLBACK, True)
    phone_user = UserFactory(phone="+14155550177")
    linked = MessageDeliveryFactory(guest=EventGuestFactory(user=UserFactory()))
    by_phone = MessageDeliveryFactory(guest=EventGuestFactory(phone="+14155550177"))
    assert MessageDelivery.objects.get(pk=by_phone.pk).user_id == phone_user.pk

    changed = MessageDelivery.objects.filter(pk__in=[linked.pk, by_phone.pk]).update(status="sent")
    # A delivery linked by the phone fallback (its guest has no user) may be taken back.
    cleared = raw(
        "UPDATE deliveries_messagedelivery SET user_id = NULL WHERE id = %s", [by_phone.pk]
    )

    assert (changed, cleared) == (2, 1)
    assert MessageDelivery.objects.get(pk=by_phone.pk).user_id is None


def test_an_update_racing_a_guest_move_fails_instead_of_leaving_the_old_user() -> None:
    """The guard reads the guest as committed when it runs: a delivery set to the guest's
    previous user after the guest moved is refused (here the move is already committed)."""
    user_a, user_b = UserFactory(), UserFactory()
    guest = guest_with_two_messages(user_a)
    EventGuest.objects.filter(pk=guest.pk).update(user=user_b)

    with pytest.raises(DatabaseError, match=GUARD), transaction.atomic():
        MessageDelivery.objects.filter(guest=guest).update(user=user_a)

    assert users_of(guest) == {user_b.pk}
