"""The exact boundaries of the integrity thresholds: 0, just above 0, exactly 1%, just above 1%.

`deliveries.unlinked_deliveries` (the inconsistency rate: any is a warning, above 1% an error)
is run by `manage.py integrity` on 1,000 real deliveries of which 0, 1, 10 and 11 have no user
although their guest is linked (written around the triggers, as a restore could leave them).
The status rule itself is then pinned at exactly 1% for every population where 1% is a whole
number of rows, so a float rounding can never tip one of them into an error.
"""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import call_command

from deliveries.integrity import UNLINKED_DELIVERIES
from deliveries.models import MessageDelivery
from evoflow.integrity.registry import CheckOutcome, IntegrityCheck
from tests.core.factories import UserFactory
from tests.deliveries.conftest import triggers_bypassed
from tests.deliveries.factories import EventFactory, EventGuestFactory, MessageFactory

DELIVERIES = 1_000


def backlog(*, inconsistent: int) -> None:
    event = EventFactory()
    users = UserFactory.create_batch(2)
    with triggers_bypassed():
        guests = EventGuestFactory.create_batch(10, event=event, user=users[0]) + (
            EventGuestFactory.create_batch(10, event=event, user=users[1])
        )
        messages = MessageFactory.create_batch(DELIVERIES // len(guests), event=event)
        MessageDelivery.objects.bulk_create(
            MessageDelivery(
                message=message,
                guest=guest,
                user_id=None if index < inconsistent else guest.user_id,
            )
            for index, (message, guest) in enumerate(
                (message, guest) for message in messages for guest in guests
            )
        )
    assert MessageDelivery.objects.count() == DELIVERIES


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("inconsistent", "status", "exit_code"),
    [
        (0, "ok", 0),
        (1, "warning", 1),  # just above 0
        (10, "warning", 1),  # exactly 1%: not above it
        (11, "error", 2),  # just above 1%
    ],
    ids=["zero", "just_above_zero", "exactly_one_percent", "just_above_one_percent"],
)
def test_the_inconsistency_rate_at_its_boundaries(
    inconsistent: int, status: str, exit_code: int
) -> None:
    backlog(inconsistent=inconsistent)
    out = StringIO()

    try:
        call_command(
            "integrity", "--check", UNLINKED_DELIVERIES.id, "--json", stdout=out, stderr=StringIO()
        )
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)

    (result,) = json.loads(out.getvalue())["checks"]
    assert (result["failing_count"], result["population"]) == (inconsistent, DELIVERIES)
    assert result["ratio"] == inconsistent / DELIVERIES
    assert (result["status"], code) == (status, exit_code)


@pytest.mark.parametrize("population", [100, 200, 300, 700, 1_000, 2_900, 100_000, 10_000_000])
def test_exactly_one_percent_is_never_an_error_and_one_row_more_always_is(population: int) -> None:
    check = IntegrityCheck(id="t.rate", description="", sql="", warning_count=1, error_ratio=0.01)
    exact = population // 100

    def status(failing: int) -> str:
        return check.status_for(CheckOutcome(failing, population, []))

    assert [status(0), status(1), status(exact), status(exact + 1)] == [
        "ok",
        "warning",
        "warning",
        "error",
    ]


def test_every_whole_one_percent_up_to_a_million_rows_sits_on_the_warning_side() -> None:
    check = IntegrityCheck(id="t.rate", description="", sql="", warning_count=1, error_ratio=0.01)

    tipped = [
        population
        for population in range(100, 1_000_001, 100)
        if check.status_for(CheckOutcome(population // 100, population, [])) != "warning"
    ]

    assert tipped == []
