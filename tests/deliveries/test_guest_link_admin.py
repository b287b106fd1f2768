"""Linking a guest from the admin: the user is found by name, email or phone (no typed id),
the deliveries to be filled in are shown before confirming, the audit rows after; the guest
page, read-only, offers no Save; the action needs the link permission."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import Group, Permission
from django.test import Client
from django.utils.html import strip_tags

from deliveries.models import EventGuest, MessageDelivery, UserLinkAudit
from evoflow.permissions import OPERATORS_GROUP
from tests.core.factories import UserFactory
from tests.deliveries.factories import EventGuestFactory, MessageDeliveryFactory

pytestmark = pytest.mark.django_db

GUESTS = "/admin/deliveries/eventguest/"


@pytest.fixture
def operator_web() -> Client:
    user = UserFactory(is_staff=True)
    user.groups.add(Group.objects.get(name=OPERATORS_GROUP))
    client = Client()
    client.force_login(user)
    return client


def _autocomplete(client: Client, term: str) -> list[dict[str, str]]:
    response = client.get(
        "/admin/autocomplete/",
        {"app_label": "deliveries", "model_name": "eventguest", "field_name": "user", "term": term},
    )
    assert response.status_code == 200
    return response.json()["results"]


def test_the_user_is_found_by_name_email_or_phone_and_named_in_full(operator_web):
    grace = UserFactory(
        username="ghopper",
        first_name="Grace",
        last_name="Hopper",
        email="grace@example.com",
        phone="+1 415 555 0199",
    )
    UserFactory(username="someone-else", first_name="Ada", email="ada@example.com")
    shown = f"ghopper (Grace Hopper, grace@example.com, {grace.phone_e164})"

    for term in ("Hopper", "grace@", "ghop", grace.phone_e164):
        assert _autocomplete(operator_web, term) == [{"id": str(grace.pk), "text": shown}], term


def test_the_confirmation_previews_the_backfill_and_the_message_links_the_audit(operator_web):
    guest = EventGuestFactory(name="Grace Guest")
    unlinked = [MessageDeliveryFactory(guest=guest) for _ in range(3)]
    user = UserFactory(username="ghopper")

    asked = operator_web.post(GUESTS, {"action": "link_to_user", ACTION_CHECKBOX_NAME: [guest.pk]})
    page = asked.content.decode()
    assert "3 deliveries of these guests have no user yet" in strip_tags(page)
    for delivery in unlinked:
        assert f"<td>{delivery.pk}</td>" in page
    assert "admin/js/autocomplete.js" in page  # the search widget, not a number field
    assert MessageDelivery.objects.filter(user__isnull=True).count() == 3

    done = operator_web.post(
        GUESTS,
        {
            "action": "link_to_user",
            ACTION_CHECKBOX_NAME: [guest.pk],
            "confirm": "yes",
            "user": user.pk,
        },
        follow=True,
    )

    (message,) = [str(message) for message in done.context["messages"]]
    assert strip_tags(message).startswith(f"1 guest linked to ghopper (user {user.pk}).")
    audit_url = message.split('href="')[1].split('"')[0].replace("&amp;", "&")
    assert parse_qs(urlsplit(audit_url).query)["guest__id__in"] == [str(guest.pk)]
    audit = operator_web.get(audit_url)
    listed = {row.pk for row in audit.context["cl"].result_list}
    assert listed == set(
        UserLinkAudit.objects.filter(guest=guest, user=user).values_list("pk", flat=True)
    )
    assert len(listed) == 3


def test_a_user_that_does_not_exist_is_said_plainly(operator_web):
    guest = EventGuestFactory()

    asked = operator_web.post(
        GUESTS,
        {
            "action": "link_to_user",
            ACTION_CHECKBOX_NAME: [guest.pk],
            "confirm": "yes",
            "user": 987654,
        },
    )

    assert asked.status_code == 200
    assert "That user does not exist or is not active." in asked.content.decode()
    assert EventGuest.objects.get(pk=guest.pk).user_id is None


def test_the_guest_page_offers_no_save(operator_web):
    guest = EventGuestFactory()

    page = operator_web.get(f"{GUESTS}{guest.pk}/change/").content.decode()

    assert 'name="_save"' not in page
    assert 'name="_addanother"' not in page


def test_without_the_link_permission_the_action_is_not_offered_nor_run():
    guest = EventGuestFactory()
    user = UserFactory()
    viewer = UserFactory(is_staff=True)
    viewer.user_permissions.set(Permission.objects.filter(codename="view_eventguest"))
    client = Client()
    client.force_login(viewer)

    page = client.get(GUESTS).content.decode()
    posted = client.post(
        GUESTS,
        {
            "action": "link_to_user",
            ACTION_CHECKBOX_NAME: [guest.pk],
            "confirm": "yes",
            "user": user.pk,
        },
    )

    assert 'value="link_to_user"' not in page
    assert posted.status_code in (200, 302)
    assert EventGuest.objects.get(pk=guest.pk).user_id is None
