"""The deliveries figures on /metrics: the created-deliveries counter on every service path
(message_send's INSERT ... SELECT included), and the requirements' link figures computed from
the audit at scrape time (attempts, the triggers' success rate, backfill activity)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from deliveries import services
from deliveries.metrics import LINK_ACTIVITY
from deliveries.models import EventGuest, MessageDelivery
from tests.core.factories import UserFactory
from tests.deliveries.conftest import LINKING, flag_set, triggers_bypassed
from tests.deliveries.factories import (
    EventFactory,
    EventGuestFactory,
    MessageDeliveryFactory,
    MessageFactory,
)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fresh_figures() -> Iterator[None]:
    LINK_ACTIVITY.cache_clear()
    yield
    LINK_ACTIVITY.cache_clear()


def scrape(client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    LINK_ACTIVITY.cache_clear()
    response = client.get("/metrics")
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }


def created(figures: dict, linked: str) -> float:
    return figures.get(("evoflow_deliveries_saved_total", (("linked", linked),)), 0.0)


def attempts(figures: dict, method: str, outcome: str) -> float:
    key = ("evoflow_deliveries_link_attempts_24h", (("method", method), ("outcome", outcome)))
    return figures[key]


def test_message_send_counts_its_deliveries_by_whether_they_were_linked(client) -> None:
    event = EventFactory()
    EventGuestFactory(event=event, user=UserFactory())
    EventGuestFactory(event=event, user=UserFactory())
    EventGuestFactory(event=event)
    before = scrape(client)

    services.message_send(event=event, sender=event.host, body="hello")
    MessageDeliveryFactory(guest=EventGuestFactory(user=UserFactory()))
    after = scrape(client)

    assert created(after, "yes") - created(before, "yes") == 3
    assert created(after, "no") - created(before, "no") == 1


def test_the_link_figures_come_from_every_path_and_rate_the_triggers(client) -> None:
    event = EventFactory()
    EventGuestFactory(event=event, user=UserFactory())
    later_guest = EventGuestFactory(event=event)
    EventGuestFactory(event=event)
    services.message_send(event=event, sender=event.host, body="one")  # 1 linked, 2 no_match
    # Linked by raw SQL: an automatic backfill of one delivery.
    EventGuest.objects.filter(pk=later_guest.pk).update(user=UserFactory())
    # A historical backfill, with something for it to link: a delivery written around the
    # triggers for a linked guest.
    with triggers_bypassed():
        stray_guest = EventGuestFactory(event=event, user=UserFactory())
        MessageDelivery.objects.create(message=MessageFactory(event=event), guest=stray_guest)
    services.deliveries_backfill()

    figures = scrape(client)

    assert attempts(figures, "guest", "linked") == 1
    assert attempts(figures, "guest", "no_match") == 2
    assert attempts(figures, "guest_backfill", "linked") == 1
    # The historical backfill tried every delivery without a user: the stray one, and the one of
    # the guest that still has no user.
    assert attempts(figures, "historical", "linked") == 1
    assert attempts(figures, "historical", "no_match") == 1
    assert attempts(figures, "phone_fallback", "linked") == 0
    # Trigger methods only: 1 + 1 successes out of 2 + 1 attempts.
    assert figures[("evoflow_deliveries_trigger_success_ratio_24h", ())] == pytest.approx(2 / 4)
    operations = "evoflow_deliveries_backfill_operations_24h"
    assert figures[(operations, (("method", "guest_backfill"),))] == 1
    assert figures[(operations, (("method", "historical"),))] == 1


def test_linking_switched_off_shows_as_a_zero_success_rate(client) -> None:
    flag_set(LINKING, False)
    event = EventFactory()
    EventGuestFactory(event=event, user=UserFactory())

    services.message_send(event=event, sender=event.host, body="hello")
    figures = scrape(client)

    assert attempts(figures, "guest", "skipped") == 1
    assert figures[("evoflow_deliveries_trigger_success_ratio_24h", ())] == 0.0


def test_without_attempts_the_rate_is_absent_not_zero(client) -> None:
    figures = scrape(client)

    assert ("evoflow_deliveries_trigger_success_ratio_24h", ()) not in figures
    assert attempts(figures, "guest", "linked") == 0


def test_the_figures_are_on_the_multiprocess_exposition_too(client, tmp_path, monkeypatch) -> None:
    event = EventFactory()
    EventGuestFactory(event=event, user=UserFactory())
    services.message_send(event=event, sender=event.host, body="hello")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))

    figures = scrape(client)

    assert attempts(figures, "guest", "linked") == 1
