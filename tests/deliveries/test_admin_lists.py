"""The deliveries lists the dashboard links to: exact rows, bounded queries, "created since"."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import quote

import pytest
from django.test import Client
from django.utils import timezone

from deliveries import selectors
from deliveries.models import EventGuest, FeatureFlag, MessageDelivery, UserLinkAudit
from tests.core.changelists import assert_exact_and_bounded, changelist_get, listed_pks
from tests.core.factories import UserFactory
from tests.deliveries.conftest import triggers_bypassed
from tests.deliveries.factories import EventFactory, MessageFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client() -> Client:
    client = Client()
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


def deliveries_create(count: int) -> None:
    """`count` deliveries, a third of them inconsistent (no user although the guest is linked),
    written as a restore would, without the linking triggers."""
    event = EventFactory()
    message = MessageFactory(event=event)
    user = UserFactory()
    with triggers_bypassed():
        guests = EventGuest.objects.bulk_create(
            [
                EventGuest(event=event, name=f"Guest {index}", phone="", user=user)
                if index % 3
                else EventGuest(event=event, name=f"Guest {index}", phone="")
                for index in range(count)
            ]
        )
        MessageDelivery.objects.bulk_create(
            [
                MessageDelivery(
                    message=message,
                    guest=guest,
                    user_id=guest.user_id if index % 3 == 1 else None,
                )
                for index, guest in enumerate(guests)
            ]
        )


def audits_create(count: int) -> None:
    now = timezone.now()
    outcomes = UserLinkAudit.Outcome.values
    UserLinkAudit.objects.bulk_create(
        [
            UserLinkAudit(
                outcome=outcomes[index % len(outcomes)],
                method=UserLinkAudit.Method.GUEST,
                # Of each outcome, every other row is older than a day.
                created_at=now - timedelta(hours=1 if index // len(outcomes) % 2 else 30),
            )
            for index in range(count)
        ]
    )


def test_inconsistent_deliveries(admin_client):
    assert_exact_and_bounded(
        admin_client,
        "/admin/deliveries/messagedelivery/?consistency=inconsistent",
        selectors.deliveries_inconsistent,
        deliveries_create,
    )


@pytest.mark.parametrize("outcome", UserLinkAudit.Outcome.values)
def test_audit_outcomes_created_since(admin_client, outcome):
    since = (timezone.now() - timedelta(hours=24)).replace(microsecond=0)
    url = (
        "/admin/deliveries/userlinkaudit/"
        f"?outcome__exact={outcome}&created_since={quote(since.isoformat())}"
    )
    assert_exact_and_bounded(
        admin_client,
        url,
        lambda: UserLinkAudit.objects.filter(outcome=outcome, created_at__gte=since),
        audits_create,
    )


def test_a_bad_created_since_is_the_admin_error_page(admin_client):
    response = admin_client.get("/admin/deliveries/userlinkaudit/?created_since=last+week")

    assert response.status_code == 302
    assert response["Location"].endswith("?e=1")


def test_feature_flags_guests_and_deliveries_lists_are_bounded(admin_client):
    urls = [
        "/admin/deliveries/featureflag/",
        "/admin/deliveries/eventguest/",
        "/admin/deliveries/messagedelivery/",
        "/admin/deliveries/userlinkaudit/",
    ]
    FeatureFlag.objects.filter(name=FeatureFlag.LINK_USER_BY_PHONE).update(updated_by=UserFactory())

    def create(count: int) -> None:
        deliveries_create(count)
        audits_create(count)

    create(10)
    counts_10 = [changelist_get(admin_client, url)[1] for url in urls]
    create(990)
    results = [changelist_get(admin_client, url) for url in urls]

    assert [queries for _, queries in results] == counts_10
    assert [len(changelist.result_list) for changelist, _ in results[1:]] == [100] * 3
    assert listed_pks(results[0][0]) == set(FeatureFlag.objects.values_list("pk", flat=True))
