"""The journeys demo seeder is idempotent."""

from __future__ import annotations

import pytest

from evoflow.demo import DemoSeedContext
from journeys import demo
from journeys.models import Contact, Journey, JourneySession


@pytest.mark.django_db
def test_seed_twice_gives_one_journey_and_one_session_per_demo_contact():
    first, second = (
        DemoSeedContext(password="x", is_password_printable=False),
        DemoSeedContext(password="x", is_password_printable=False),
    )

    demo.seed(first)
    demo.seed(second)

    journey = Journey.objects.get(name=demo.DEMO_JOURNEY_NAME)
    assert JourneySession.objects.filter(journey=journey).count() == 5
    assert set(map(str, Contact.objects.values_list("id", flat=True))) == set(demo.DEMO_CONTACT_IDS)
    assert "5 sessions started, 0 already enrolled" in first.summary[0]
    assert "0 sessions started, 5 already enrolled" in second.summary[0]
