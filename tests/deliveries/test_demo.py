"""The deliveries demo seeder: an event with guests and deliveries, some linked, and an
inconsistent backlog the integrity repair fixes; idempotent."""

from __future__ import annotations

import pytest

from deliveries.demo import BACKLOG_EVENT_NAME, BACKLOG_GUESTS, DEMO_EVENT_NAME
from deliveries.models import Event, EventGuest, FeatureFlag, MessageDelivery, UserLinkAudit
from evoflow.demo import demo_seed
from evoflow.integrity.runner import integrity_run

pytestmark = pytest.mark.django_db

SEEDERS = ["evoflow.demo.demo_accounts_seed", "deliveries.demo.seed"]


def snapshot() -> tuple:
    return (
        Event.objects.count(),
        EventGuest.objects.count(),
        sorted(
            MessageDelivery.objects.filter(guest__event__name=DEMO_EVENT_NAME).values_list(
                "guest__name", "user__username"
            )
        ),
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


def test_without_the_backlog_option_the_demo_is_consistent(settings):
    settings.DEBUG = True
    demo_seed(seeders=SEEDERS)

    assert not Event.objects.filter(name=BACKLOG_EVENT_NAME).exists()
    result = integrity_run(check_ids=["deliveries.unlinked_deliveries"]).results.get()
    assert (result.status, result.failing_count) == ("ok", 0)


def test_the_demo_backlog_is_inconsistent_until_the_integrity_repair_runs(settings):
    settings.DEBUG = True
    demo_seed(seeders=SEEDERS, with_backlog=True)
    backlog = MessageDelivery.objects.filter(guest__event__name=BACKLOG_EVENT_NAME)
    assert backlog.count() == BACKLOG_GUESTS
    assert not backlog.filter(user__isnull=False).exists()
    assert not backlog.filter(guest__user__isnull=True).exists()
    # Linking is back on (the seeder switched it off only while it wrote the backlog).
    assert FeatureFlag.objects.get(name=FeatureFlag.LINK_USER_BY_PHONE).enabled

    checked = integrity_run(check_ids=["deliveries.unlinked_deliveries"])
    result = checked.results.get()
    assert (result.status, result.failing_count) == ("error", BACKLOG_GUESTS)

    repaired = integrity_run(check_ids=["deliveries.unlinked_deliveries"], fix=True)
    result = repaired.results.get()
    assert (result.status, result.failing_count, result.repaired_count) == (
        "ok",
        0,
        BACKLOG_GUESTS,
    )
    assert not backlog.filter(user__isnull=True).exists()
