"""Every link audit row is written by `deliveries_link_apply`, the manual relink included.

The relink used to insert its own audit rows; it now goes through the SQL function with the
method `manual`. These tests pin what that path writes: the same rows, details and counts as
before, whatever the flags or the guest's state, and no other writer in the code.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from deliveries import services
from deliveries.models import MessageDelivery, UserLinkAudit
from evoflow.requestid import bound_request_id
from tests.core.factories import UserFactory
from tests.deliveries.conftest import FALLBACK, LINKING, flag_set, triggers_bypassed
from tests.deliveries.factories import EventGuestFactory, MessageDeliveryFactory
from tests.deliveries.test_linking import stored_user_id

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.django_db
def test_a_relink_moves_the_unlinked_and_the_previous_users_deliveries_only() -> None:
    old, new, other, operator = UserFactory(), UserFactory(), UserFactory(), UserFactory()
    guest = EventGuestFactory(user=old)
    on_old, on_other, unlinked = (MessageDeliveryFactory(guest=guest).pk for _ in range(3))
    # Deliveries moved around the rule and its guard (as a restore could leave them): one on a
    # third user, one on none.
    with triggers_bypassed():
        MessageDelivery.objects.filter(pk=on_other).update(user=other)
        MessageDelivery.objects.filter(pk=unlinked).update(user=None)
    before = UserLinkAudit.objects.count()

    with bound_request_id("req-relink"):
        moved = services.guest_relink_user(guest=guest, user=new, actor=operator)

    assert moved == 2
    assert stored_user_id(on_old) == new.pk
    assert stored_user_id(unlinked) == new.pk
    assert stored_user_id(on_other) == other.pk
    rows = list(UserLinkAudit.objects.order_by("id")[before:])
    assert [
        (row.delivery_id, row.guest_id, row.user_id, row.outcome, row.method) for row in rows
    ] == [
        (on_old, guest.pk, new.pk, "linked", "manual"),
        (unlinked, guest.pk, new.pk, "linked", "manual"),
    ]
    # The previous user is named on every moved delivery, the one that had none included.
    assert {tuple(sorted(row.details.items())) for row in rows} == {
        (
            ("actor_id", operator.pk),
            ("previous_user_id", old.pk),
            ("reason", "guest_relinked"),
            ("request_id", "req-relink"),
        )
    }


@pytest.mark.django_db
def test_a_relink_is_a_persons_decision_flags_and_removal_do_not_stop_it() -> None:
    old, new = UserFactory(), UserFactory()
    guest = EventGuestFactory(user=old)
    delivery = MessageDeliveryFactory(guest=guest).pk
    services.guest_update(guest=guest, is_removed=True)
    flag_set(LINKING, False)
    flag_set(FALLBACK, True)

    assert services.guest_relink_user(guest=guest, user=new) == 1

    assert stored_user_id(delivery) == new.pk
    row = UserLinkAudit.objects.filter(method="manual").get()
    assert (row.outcome, row.details) == (
        "linked",
        {"reason": "guest_relinked", "previous_user_id": old.pk},
    )


def test_no_code_writes_audit_rows_but_the_link_function() -> None:
    writers = re.compile(
        r"INSERT\s+INTO\s+deliveries_userlinkaudit|UserLinkAudit\.objects\.(?:create|bulk_create)",
        re.IGNORECASE,
    )
    found = []
    for app in ("deliveries", "conversations", "journeys", "evoflow"):
        for path in (ROOT / app).rglob("*"):
            if path.suffix not in (".py", ".sql") or "migrations" in path.parts:
                continue
            if path.relative_to(ROOT).as_posix() == "deliveries/sql/link_rule.sql":
                continue
            if writers.search(path.read_text(encoding="utf-8")):
                found.append(path.relative_to(ROOT).as_posix())
    assert found == []
    assert writers.search((ROOT / "deliveries/sql/link_rule.sql").read_text())
