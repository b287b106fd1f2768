"""The deliveries admin through the test client, as an operator uses it."""

from __future__ import annotations

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import Group
from django.test import Client

from deliveries.models import EventGuest, FeatureFlag, MessageDelivery, UserLinkAudit
from evoflow.permissions import OPERATORS_GROUP
from tests.core.factories import UserFactory
from tests.deliveries.conftest import FALLBACK, LINKING, flag_set, triggers_bypassed
from tests.deliveries.factories import (
    EventFactory,
    EventGuestFactory,
    MessageDeliveryFactory,
    MessageFactory,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator():
    user = UserFactory(is_staff=True)
    user.groups.add(Group.objects.get(name=OPERATORS_GROUP))
    return user


@pytest.fixture
def admin_client(operator) -> Client:
    client = Client()
    client.force_login(operator)
    return client


def test_every_deliveries_admin_page_renders(admin_client):
    delivery = MessageDeliveryFactory(guest=EventGuestFactory(user=UserFactory()))
    audit = UserLinkAudit.objects.get()
    flag = FeatureFlag.objects.get(name=LINKING)

    for url in (
        "/admin/deliveries/event/",
        f"/admin/deliveries/event/{delivery.message.event_id}/change/",
        "/admin/deliveries/eventguest/",
        "/admin/deliveries/eventguest/?link_state=linked",
        "/admin/deliveries/eventguest/?link_state=unlinked",
        "/admin/deliveries/eventguest/?link_state=removed",
        f"/admin/deliveries/eventguest/{delivery.guest_id}/change/",
        "/admin/deliveries/message/",
        "/admin/deliveries/messagedelivery/",
        "/admin/deliveries/messagedelivery/?consistency=inconsistent",
        f"/admin/deliveries/messagedelivery/{delivery.pk}/change/",
        "/admin/deliveries/userlinkaudit/?outcome=linked&method=guest",
        f"/admin/deliveries/userlinkaudit/{audit.pk}/change/",
        "/admin/deliveries/featureflag/",
        f"/admin/deliveries/featureflag/{flag.pk}/change/",
    ):
        assert admin_client.get(url).status_code == 200, url


def test_the_link_to_user_action_asks_then_links_and_backfills(admin_client, operator):
    guest = EventGuestFactory()
    deliveries = [MessageDeliveryFactory(guest=guest) for _ in range(2)]
    user = UserFactory()
    url = "/admin/deliveries/eventguest/"

    asked = admin_client.post(url, {"action": "link_to_user", ACTION_CHECKBOX_NAME: [guest.pk]})
    assert asked.status_code == 200
    assert b"Link guests to a user" in asked.content
    assert EventGuest.objects.get(pk=guest.pk).user_id is None

    done = admin_client.post(
        url,
        {
            "action": "link_to_user",
            ACTION_CHECKBOX_NAME: [guest.pk],
            "confirm": "yes",
            "user": user.pk,
        },
    )

    assert done.status_code == 302
    assert EventGuest.objects.get(pk=guest.pk).user_id == user.pk
    assert set(
        MessageDelivery.objects.filter(pk__in=[d.pk for d in deliveries]).values_list(
            "user_id", flat=True
        )
    ) == {user.pk}
    backfill = UserLinkAudit.objects.filter(method="guest_backfill")
    assert backfill.count() == 2
    assert {row.details["actor_id"] for row in backfill} == {operator.pk}


def test_the_link_action_leaves_guests_linked_to_someone_else_unless_relink(admin_client):
    old, new = UserFactory(), UserFactory()
    guest = EventGuestFactory(user=old)
    delivery = MessageDeliveryFactory(guest=guest)
    url = "/admin/deliveries/eventguest/"
    form = {"action": "link_to_user", ACTION_CHECKBOX_NAME: [guest.pk], "confirm": "yes"}

    admin_client.post(url, {**form, "user": new.pk})
    assert EventGuest.objects.get(pk=guest.pk).user_id == old.pk

    admin_client.post(url, {**form, "user": new.pk, "relink": "on"})

    assert EventGuest.objects.get(pk=guest.pk).user_id == new.pk
    assert MessageDelivery.objects.get(pk=delivery.pk).user_id == new.pk
    assert UserLinkAudit.objects.filter(method="manual").count() == 1


def test_the_inconsistent_filter_and_backfill_selected_action(admin_client):
    event = EventFactory()
    message = MessageFactory(event=event)
    user = UserFactory()
    with triggers_bypassed():
        linked_guest = EventGuestFactory(event=event, user=user)
        broken = MessageDelivery.objects.create(message=message, guest=linked_guest)
        fine = MessageDelivery.objects.create(message=message, guest=EventGuestFactory(event=event))
    url = "/admin/deliveries/messagedelivery/"

    listed = admin_client.get(url + "?consistency=inconsistent")
    assert [row.pk for row in listed.context["cl"].result_list] == [broken.pk]

    asked = admin_client.post(
        url, {"action": "backfill_selected", ACTION_CHECKBOX_NAME: [broken.pk, fine.pk]}
    )
    assert asked.status_code == 200  # the confirmation: nothing changed yet
    assert MessageDelivery.objects.get(pk=broken.pk).user_id is None
    response = admin_client.post(
        url,
        {
            "action": "backfill_selected",
            ACTION_CHECKBOX_NAME: [broken.pk, fine.pk],
            "confirm": "yes",
        },
    )

    assert response.status_code == 302
    assert MessageDelivery.objects.get(pk=broken.pk).user_id == user.pk
    assert MessageDelivery.objects.get(pk=fine.pk).user_id is None
    assert sorted(UserLinkAudit.objects.values_list("delivery_id", "outcome", "method")) == [
        (broken.pk, "linked", "historical"),
        (fine.pk, "no_match", "historical"),
    ]
    assert admin_client.get(url + "?consistency=inconsistent").context["cl"].result_count == 0


def test_the_audit_log_is_read_only_and_counts_outcomes_of_the_last_24_hours(admin_client):
    MessageDeliveryFactory(guest=EventGuestFactory(user=UserFactory()))
    MessageDeliveryFactory(guest=EventGuestFactory(user=UserFactory()))
    MessageDeliveryFactory(guest=EventGuestFactory())
    audit = UserLinkAudit.objects.first()

    page = admin_client.get("/admin/deliveries/userlinkaudit/")

    assert page.context["outcome_counts_24h"] == {
        "linked": 2,
        "no_match": 1,
        "skipped": 0,
        "already_linked": 0,
    }
    assert b'data-outcome="linked">2<' in page.content
    assert admin_client.get("/admin/deliveries/userlinkaudit/add/").status_code == 403
    assert (
        admin_client.post(
            f"/admin/deliveries/userlinkaudit/{audit.pk}/delete/", {"post": "yes"}
        ).status_code
        == 403
    )
    assert UserLinkAudit.objects.count() == 3


def test_a_flag_change_asks_for_confirmation_and_records_who_and_when(admin_client, operator):
    flag = FeatureFlag.objects.get(name=LINKING)
    assert flag.enabled is True
    url = "/admin/deliveries/featureflag/"

    asked = admin_client.post(url, {"action": "turn_off", ACTION_CHECKBOX_NAME: [flag.pk]})
    assert asked.status_code == 200
    assert b"Turn feature flags off" in asked.content
    assert FeatureFlag.objects.get(pk=flag.pk).enabled is True

    done = admin_client.post(
        url, {"action": "turn_off", ACTION_CHECKBOX_NAME: [flag.pk], "confirm": "yes"}
    )

    assert done.status_code == 302
    flag.refresh_from_db()
    assert (flag.enabled, flag.updated_by_id) == (False, operator.pk)
    assert flag.updated_at is not None
    # And the very next delivery is skipped.
    delivery = MessageDeliveryFactory(guest=EventGuestFactory(user=UserFactory()))
    assert UserLinkAudit.objects.get(delivery=delivery).outcome == "skipped"


def test_a_guest_cannot_be_edited_around_the_services_in_the_admin(admin_client):
    guest = EventGuestFactory(name="Old")

    admin_client.post(f"/admin/deliveries/eventguest/{guest.pk}/change/", {"name": "New"})

    assert EventGuest.objects.get(pk=guest.pk).name == "Old"


def test_the_audit_log_filters_by_the_reason_an_operator_searches_for(admin_client):
    flag_set(FALLBACK, True)
    UserFactory(phone="+14155550101")
    UserFactory(phone="+1 415 555 0101")
    ambiguous = MessageDeliveryFactory(guest=EventGuestFactory(phone="+14155550101"))
    MessageDeliveryFactory(guest=EventGuestFactory(user=UserFactory()))

    page = admin_client.get("/admin/deliveries/userlinkaudit/?reason=ambiguous_users")
    everything = admin_client.get("/admin/deliveries/userlinkaudit/?reason=not_a_reason")

    assert page.status_code == 200
    assert [audit.delivery_id for audit in page.context["cl"].result_list] == [ambiguous.pk]
    assert b"ambiguous_users" in page.content
    assert everything.status_code == 200
    assert everything.context["cl"].result_count == 2
