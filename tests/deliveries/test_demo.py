"""The deliveries demo seeder: an event with guests and deliveries, some linked; idempotent."""

from __future__ import annotations

import pytest

from deliveries.demo import DEMO_EVENT_NAME
from deliveries.models import Event, EventGuest, MessageDelivery, UserLinkAudit
from evoflow.services import demo_seed

pytestmark = pytest.mark.django_db

SEEDERS = ["evoflow.services.demo_accounts_seed", "deliveries.demo.seed"]


def snapshot() -> tuple:
    return (
        Event.objects.count(),
        EventGuest.objects.count(),
        sorted(MessageDelivery.objects.values_list("guest__name", "user__username")),
        UserLinkAudit.objects.count(),
    )


def test_the_demo_event_has_linked_and_unlinked_deliveries_and_seeding_twice_changes_nothing(
    settings,
):
    # Demo seeding runs with DEBUG on (`make run`); Django's test set-up turns it off.
    settings.DEBUG = True
    context = demo_seed(seeders=SEEDERS)
    first = snapshot()

    demo_seed(seeders=SEEDERS)

    assert snapshot() == first
    event = Event.objects.get(name=DEMO_EVENT_NAME)
    assert event.host.username == "operator"
    assert first[2] == [
        ("Ada Guest", "guest-ada"),
        ("Ada Guest", "guest-ada"),
        # Ben was linked after the first message: the backfill gave it to him.
        ("Ben Guest", "guest-ben"),
        ("Ben Guest", "guest-ben"),
        ("Cleo Guest", None),
        ("Cleo Guest", None),
    ]
    assert UserLinkAudit.objects.filter(method="guest_backfill", outcome="linked").count() == 1
    assert any(line.startswith("deliveries: event") for line in context.summary)
