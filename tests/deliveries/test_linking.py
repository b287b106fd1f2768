"""D1-D3 on every write path: the database links and audits, whoever writes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from deliveries import services
from deliveries.models import (
    LINK_REASONS,
    EventGuest,
    LinkMethod,
    LinkOutcome,
    Message,
    MessageDelivery,
    UserLinkAudit,
)
from tests.core.factories import UserFactory
from tests.deliveries.conftest import FALLBACK, LINKING, audit_rows, flag_set
from tests.deliveries.factories import (
    EventFactory,
    EventGuestFactory,
    MessageDeliveryFactory,
    MessageFactory,
)

pytestmark = pytest.mark.django_db


def stored_user_id(delivery_id: int) -> int | None:
    return MessageDelivery.objects.values_list("user_id", flat=True).get(pk=delivery_id)


# -- D1 at creation, path by path ---------------------------------------------------------------


def test_orm_save_links_the_delivery_to_its_guests_user():
    user = UserFactory()
    guest = EventGuestFactory(user=user)

    delivery = MessageDeliveryFactory(guest=guest)

    assert stored_user_id(delivery.pk) == user.pk
    # The signal reads the link back, so the instance in memory agrees with the database.
    assert delivery.user_id == user.pk
    assert audit_rows() == [(delivery.pk, "linked", "guest")]
    audit = UserLinkAudit.objects.get()
    assert (audit.guest_id, audit.user_id, audit.details) == (
        guest.pk,
        user.pk,
        {"reason": "guest_user"},
    )


def test_bulk_create_links_every_delivery_in_one_statement():
    ada, ben = UserFactory(), UserFactory()
    event = EventFactory()
    guests = [
        EventGuestFactory(event=event, user=ada),
        EventGuestFactory(event=event, user=ben),
        EventGuestFactory(event=event),
    ]
    message = MessageFactory(event=event)

    created = MessageDelivery.objects.bulk_create(
        [MessageDelivery(message=message, guest=guest) for guest in guests]
    )

    ids = [delivery.pk for delivery in created]
    assert [stored_user_id(pk) for pk in ids] == [ada.pk, ben.pk, None]
    assert audit_rows() == [
        (ids[0], "linked", "guest"),
        (ids[1], "linked", "guest"),
        (ids[2], "no_match", "guest"),
    ]


def test_raw_sql_insert_links():
    user = UserFactory()
    guest = EventGuestFactory(user=user)
    message = MessageFactory(event=guest.event)

    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO deliveries_messagedelivery (message_id, guest_id) VALUES (%s, %s)"
            " RETURNING id",
            [message.pk, guest.pk],
        )
        (delivery_id,) = cursor.fetchone()

    assert stored_user_id(delivery_id) == user.pk
    assert audit_rows() == [(delivery_id, "linked", "guest")]


def test_message_send_creates_one_linked_delivery_per_active_guest():
    ada = UserFactory()
    event = EventFactory()
    linked = EventGuestFactory(event=event, user=ada)
    unlinked = EventGuestFactory(event=event)
    EventGuestFactory(event=event, user=UserFactory(), removed_at=timezone.now())

    result = services.message_send(event=event, sender=event.host, body="Doors at 7")

    assert (result.delivery_count, result.linked_count) == (2, 1)
    rows = list(
        MessageDelivery.objects.filter(message=result.message)
        .order_by("guest_id")
        .values_list("guest_id", "user_id", "phone", "phone_e164")
    )
    assert rows == [
        (linked.pk, ada.pk, linked.phone, linked.phone_e164),
        (unlinked.pk, None, unlinked.phone, unlinked.phone_e164),
    ]
    assert sorted(outcome for _, outcome, _ in audit_rows()) == ["linked", "no_match"]
    # The audit rows know who sent the message.
    assert {row.details.get("actor_id") for row in UserLinkAudit.objects.all()} == {event.host_id}


def test_a_user_given_at_insert_is_replaced_by_the_linked_guests_user():
    rightful, wrong = UserFactory(), UserFactory()
    guest = EventGuestFactory(user=rightful)

    delivery = MessageDeliveryFactory(guest=guest, user=wrong)

    assert stored_user_id(delivery.pk) == rightful.pk
    audit = UserLinkAudit.objects.get()
    assert (audit.outcome, audit.user_id, audit.details["previous_user_id"]) == (
        "linked",
        rightful.pk,
        wrong.pk,
    )


def test_a_user_given_for_an_unlinked_guest_is_kept_as_already_linked():
    user = UserFactory()
    guest = EventGuestFactory()

    delivery = MessageDeliveryFactory(guest=guest, user=user)

    assert stored_user_id(delivery.pk) == user.pk
    assert audit_rows() == [(delivery.pk, "already_linked", "guest")]


# -- D1 when a guest is linked, path by path -----------------------------------------------------


def unlinked_guest_with_deliveries(count: int = 2) -> tuple[EventGuest, list[int]]:
    guest = EventGuestFactory()
    ids = [MessageDeliveryFactory(guest=guest).pk for _ in range(count)]
    assert [stored_user_id(pk) for pk in ids] == [None] * count
    return guest, ids


def assert_backfilled(guest_id: int, user_id: int, ids: list[int]) -> None:
    assert [stored_user_id(pk) for pk in ids] == [user_id] * len(ids)
    assert audit_rows(method="guest_backfill") == [(pk, "linked", "guest_backfill") for pk in ids]
    assert audit_rows(method="guest") == [(pk, "no_match", "guest") for pk in ids]


def test_guest_linked_by_save_backfills_its_deliveries():
    guest, ids = unlinked_guest_with_deliveries()
    user = UserFactory()

    guest.user = user
    guest.save()

    assert_backfilled(guest.pk, user.pk, ids)


def test_guest_linked_by_queryset_update_backfills_its_deliveries():
    guest, ids = unlinked_guest_with_deliveries()
    user = UserFactory()

    EventGuest.objects.filter(pk=guest.pk).update(user=user)

    assert_backfilled(guest.pk, user.pk, ids)


def test_guest_linked_by_raw_sql_update_backfills_its_deliveries():
    guest, ids = unlinked_guest_with_deliveries(3)
    user = UserFactory()

    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE deliveries_eventguest SET user_id = %s WHERE id = %s", [user.pk, guest.pk]
        )

    assert_backfilled(guest.pk, user.pk, ids)


def test_guest_linked_by_the_service_backfills_and_names_the_actor():
    guest, ids = unlinked_guest_with_deliveries()
    user, operator = UserFactory(), UserFactory()

    services.guest_link_user(guest=guest, user=user, actor=operator)

    assert_backfilled(guest.pk, user.pk, ids)
    details = UserLinkAudit.objects.filter(method="guest_backfill").values_list(
        "details", flat=True
    )
    assert [detail["actor_id"] for detail in details] == [operator.pk, operator.pk]


def test_backfill_leaves_other_guests_and_already_linked_deliveries_alone():
    guest, ids = unlinked_guest_with_deliveries(1)
    other_guest, other_ids = unlinked_guest_with_deliveries(1)
    explicit = UserFactory()
    given = MessageDeliveryFactory(guest=guest, user=explicit)
    user = UserFactory()

    services.guest_link_user(guest=guest, user=user)

    assert stored_user_id(ids[0]) == user.pk
    assert stored_user_id(given.pk) == explicit.pk
    assert stored_user_id(other_ids[0]) is None
    assert audit_rows(method="guest_backfill") == [(ids[0], "linked", "guest_backfill")]


def test_an_update_that_does_not_link_writes_no_audit():
    user = UserFactory()
    guest = EventGuestFactory(user=user)
    MessageDeliveryFactory(guest=guest)
    before = UserLinkAudit.objects.count()

    EventGuest.objects.filter(pk=guest.pk).update(name="Renamed")

    assert UserLinkAudit.objects.count() == before == 1


def test_linking_the_same_user_again_changes_nothing():
    guest, ids = unlinked_guest_with_deliveries(1)
    user = UserFactory()
    services.guest_link_user(guest=guest, user=user)

    services.guest_link_user(guest=guest, user=user)

    assert UserLinkAudit.objects.filter(method="guest_backfill").count() == 1


def test_linking_a_guest_linked_to_someone_else_is_refused():
    guest = EventGuestFactory(user=UserFactory())

    with pytest.raises(services.GuestAlreadyLinked):
        services.guest_link_user(guest=guest, user=UserFactory())


def test_a_removed_guest_never_links_and_restoring_it_backfills():
    user = UserFactory(phone="+1 415 555 7777")
    flag_set(FALLBACK, True)
    guest = EventGuestFactory(user=user, phone="+1 415 555 7777", removed_at=timezone.now())

    delivery = MessageDeliveryFactory(guest=guest)

    assert stored_user_id(delivery.pk) is None
    audit = UserLinkAudit.objects.get()
    assert (audit.outcome, audit.method, audit.details) == (
        "no_match",
        "guest",
        {"reason": "guest_removed"},
    )

    services.guest_update(guest=guest, is_removed=False)

    assert stored_user_id(delivery.pk) == user.pk
    assert audit_rows(method="guest_backfill") == [(delivery.pk, "linked", "guest_backfill")]


# -- relinking -----------------------------------------------------------------------------------


def test_guest_relink_user_moves_the_deliveries_and_audits_it_as_manual():
    old, new, operator = UserFactory(), UserFactory(), UserFactory()
    guest = EventGuestFactory(user=old)
    ids = [MessageDeliveryFactory(guest=guest).pk for _ in range(2)]

    moved = services.guest_relink_user(guest=guest, user=new, actor=operator)

    assert moved == 2
    assert [stored_user_id(pk) for pk in ids] == [new.pk, new.pk]
    assert EventGuest.objects.get(pk=guest.pk).user_id == new.pk
    manual = list(UserLinkAudit.objects.filter(method="manual").order_by("delivery_id"))
    assert [(row.delivery_id, row.outcome, row.user_id) for row in manual] == [
        (ids[0], "linked", new.pk),
        (ids[1], "linked", new.pk),
    ]
    assert manual[0].details == {
        "reason": "guest_relinked",
        "previous_user_id": old.pk,
        "actor_id": operator.pk,
    }


# -- D2: the phone fallback and its flags --------------------------------------------------------


def test_fallback_flag_off_never_links_by_phone():
    UserFactory(phone="+1 415 555 0101")
    guest = EventGuestFactory(phone="415-555-0101")

    delivery = MessageDeliveryFactory(guest=guest)

    assert stored_user_id(delivery.pk) is None
    audit = UserLinkAudit.objects.get()
    assert (audit.outcome, audit.method, audit.details) == (
        "no_match",
        "guest",
        {"reason": "guest_not_linked"},
    )


def test_fallback_flag_on_links_the_single_user_with_the_phone():
    flag_set(FALLBACK, True)
    user = UserFactory(phone="+1 (415) 555-0101")
    UserFactory(phone="+1 415 555 0199")
    guest = EventGuestFactory(phone="415 555 0101")

    delivery = MessageDeliveryFactory(guest=guest)

    assert stored_user_id(delivery.pk) == user.pk
    audit = UserLinkAudit.objects.get()
    assert (audit.outcome, audit.method, audit.user_id) == ("linked", "phone_fallback", user.pk)
    assert audit.details == {
        "reason": "unique_user_with_phone",
        "phone_e164": "+14155550101",
        "guests_with_phone": 1,
        "users_with_phone": 1,
    }


def test_fallback_with_two_users_with_the_phone_is_no_match_ambiguous_users():
    flag_set(FALLBACK, True)
    UserFactory(phone="+14155550101")
    UserFactory(phone="(415) 555-0101")
    guest = EventGuestFactory(phone="+1 415 555 0101")

    delivery = MessageDeliveryFactory(guest=guest)

    assert stored_user_id(delivery.pk) is None
    audit = UserLinkAudit.objects.get()
    assert (audit.outcome, audit.method, audit.user_id) == ("no_match", "phone_fallback", None)
    assert audit.details["reason"] == "ambiguous_users"
    assert audit.details["users_with_phone"] == 2


def test_fallback_with_two_active_guests_with_the_phone_is_no_match_ambiguous_guests():
    flag_set(FALLBACK, True)
    UserFactory(phone="+14155550101")
    event = EventFactory()
    guest = EventGuestFactory(event=event, phone="+14155550101")
    EventGuestFactory(event=event, phone="415 555 0101")

    delivery = MessageDeliveryFactory(guest=guest)

    assert stored_user_id(delivery.pk) is None
    audit = UserLinkAudit.objects.get()
    assert (audit.outcome, audit.details["reason"], audit.details["guests_with_phone"]) == (
        "no_match",
        "ambiguous_guests",
        2,
    )


def test_a_removed_guest_with_the_same_phone_does_not_make_it_ambiguous():
    flag_set(FALLBACK, True)
    user = UserFactory(phone="+14155550101")
    event = EventFactory()
    guest = EventGuestFactory(event=event, phone="+14155550101")
    EventGuestFactory(event=event, phone="+14155550101", removed_at=timezone.now())

    delivery = MessageDeliveryFactory(guest=guest)

    assert stored_user_id(delivery.pk) == user.pk


def test_an_inactive_user_is_never_matched_by_phone():
    flag_set(FALLBACK, True)
    UserFactory(phone="+14155550101", is_active=False)
    guest = EventGuestFactory(phone="+14155550101")

    delivery = MessageDeliveryFactory(guest=guest)

    assert stored_user_id(delivery.pk) is None
    assert UserLinkAudit.objects.get().details["reason"] == "no_user_with_phone"


def test_linking_flag_off_skips_every_attempt():
    flag_set(LINKING, False)
    flag_set(FALLBACK, True)
    user = UserFactory(phone="+14155550101")
    linked_guest = EventGuestFactory(user=user)
    phone_guest = EventGuestFactory(event=linked_guest.event, phone="+14155550101")
    message = MessageFactory(event=linked_guest.event)

    created = MessageDelivery.objects.bulk_create(
        [MessageDelivery(message=message, guest=guest) for guest in (linked_guest, phone_guest)]
    )

    assert [stored_user_id(delivery.pk) for delivery in created] == [None, None]
    assert sorted(outcome for _, outcome, _ in audit_rows()) == ["skipped", "skipped"]
    assert {row.details["reason"] for row in UserLinkAudit.objects.all()} == {"flag_off"}


def test_linking_a_guest_with_the_linking_flag_off_backfills_nothing():
    guest, ids = unlinked_guest_with_deliveries(1)
    flag_set(LINKING, False)

    services.guest_link_user(guest=guest, user=UserFactory())

    assert stored_user_id(ids[0]) is None
    assert audit_rows(method="guest_backfill") == [(ids[0], "skipped", "guest_backfill")]


def test_a_flag_flip_is_seen_by_the_very_next_delivery():
    user = UserFactory(phone="+14155550101")
    guest = EventGuestFactory(phone="+14155550101")
    first = MessageDeliveryFactory(guest=guest)

    services_flag = services.feature_flag_set(name=FALLBACK, enabled=True, actor=user)
    second = MessageDeliveryFactory(guest=guest)
    flag_set(LINKING, False)
    third = MessageDeliveryFactory(guest=guest)

    assert services_flag.updated_by_id == user.pk
    assert [stored_user_id(d.pk) for d in (first, second, third)] == [None, user.pk, None]
    assert [outcome for _, outcome, _ in audit_rows()] == ["no_match", "linked", "skipped"]


# -- D3: the audit table -------------------------------------------------------------------------


def test_exactly_one_audit_row_per_delivery_attempted():
    flag_set(FALLBACK, True)
    event = EventFactory()
    linked_user = UserFactory()
    phone_user = UserFactory(phone="+14155550155")
    UserFactory(phone="+14155550166")
    UserFactory(phone="+14155550166")
    EventGuestFactory(event=event, user=linked_user)
    EventGuestFactory(event=event, phone="+14155550155")
    EventGuestFactory(event=event, phone="+14155550166")
    EventGuestFactory(event=event, phone="+14155550177")

    result = services.message_send(event=event, sender=event.host, body="hello")

    deliveries = MessageDelivery.objects.filter(message=result.message)
    audits = UserLinkAudit.objects.filter(delivery__in=deliveries)
    assert audits.count() == deliveries.count() == 4
    assert sorted(audits.values_list("delivery_id", flat=True)) == sorted(
        deliveries.values_list("id", flat=True)
    )
    assert sorted(audits.values_list("outcome", "method", "details__reason")) == [
        ("linked", "guest", "guest_user"),
        ("linked", "phone_fallback", "unique_user_with_phone"),
        ("no_match", "phone_fallback", "ambiguous_users"),
        ("no_match", "phone_fallback", "no_user_with_phone"),
    ]
    assert set(deliveries.exclude(user=None).values_list("user_id", flat=True)) == {
        linked_user.pk,
        phone_user.pk,
    }


def test_the_audit_table_refuses_update_and_delete():
    delivery = MessageDeliveryFactory(guest=EventGuestFactory(user=UserFactory()))
    audit = UserLinkAudit.objects.get(delivery=delivery)

    for statement in (
        "UPDATE deliveries_userlinkaudit SET outcome = 'no_match' WHERE id = %s",
        "DELETE FROM deliveries_userlinkaudit WHERE id = %s",
    ):
        with (
            pytest.raises(DatabaseError, match="Cannot update or delete"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(statement, [audit.pk])
    with pytest.raises(DatabaseError), transaction.atomic():
        UserLinkAudit.objects.filter(pk=audit.pk).update(outcome="skipped")
    with pytest.raises(DatabaseError), transaction.atomic():
        audit.delete()

    assert UserLinkAudit.objects.values_list("outcome", flat=True).get(pk=audit.pk) == "linked"


def test_the_audit_table_refuses_truncate():
    MessageDeliveryFactory(guest=EventGuestFactory(user=UserFactory()))

    for statement in (
        "TRUNCATE deliveries_userlinkaudit",
        "TRUNCATE deliveries_userlinkaudit RESTART IDENTITY CASCADE",
    ):
        with (
            pytest.raises(DatabaseError, match="Cannot truncate deliveries_userlinkaudit"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(statement)

    assert UserLinkAudit.objects.count() == 1


def test_the_rule_writes_only_the_documented_outcomes_and_reasons():
    sql = (Path(__file__).resolve().parents[2] / "deliveries/sql/link_rule.sql").read_text()
    written = set(re.findall(r"'([a-z_]+)'", sql))
    outcome_literals = written & {"linked", "no_match", "skipped", "already_linked", "ambiguous"}

    assert outcome_literals == set(LinkOutcome.values)
    reasons = written - set(LinkOutcome.values) - set(LinkMethod.values)
    reasons -= {
        "phone",
        "reason",
        "phone_e164",
        "guests_with_phone",
        "users_with_phone",
        "previous_user_id",
        "actor_id",
        "request_id",
        "link_user_by_phone",
        "link_user_by_phone_fallback_to_users",
    }
    assert reasons == set(LINK_REASONS)


def test_the_audit_outlives_the_delivery_it_describes():
    delivery = MessageDeliveryFactory(guest=EventGuestFactory(user=UserFactory()))
    delivery_id = delivery.pk

    Message.objects.filter(pk=delivery.message_id).delete()

    assert not MessageDelivery.objects.filter(pk=delivery_id).exists()
    assert audit_rows() == [(delivery_id, "linked", "guest")]
