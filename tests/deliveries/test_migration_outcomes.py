"""Migration 0006 renames the audit rows written before it to the requirements' outcomes, in
place of an append-only table, and its reverse renames them back."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

BEFORE = ("deliveries", "0005_hosts_group_and_link_permission")
AFTER = ("deliveries", "0006_audit_outcomes_and_update_guard")

# (outcome, method, reason) as written before 0006, and what 0006 makes of each.
ROWS = [
    (("ambiguous", "phone_fallback", "several_users_with_phone"), ("no_match", "ambiguous_users")),
    (
        ("ambiguous", "phone_fallback", "several_guests_with_phone"),
        ("no_match", "ambiguous_guests"),
    ),
    (("skipped", "guest", "linking_disabled"), ("skipped", "flag_off")),
    (("no_match", "guest", "guest_not_linked"), ("no_match", "guest_not_linked")),
    (("linked", "guest", "guest_user"), ("linked", "guest_user")),
]


def migrate(target: tuple[str, str]) -> None:
    executor = MigrationExecutor(connection)
    executor.migrate([target])


@pytest.fixture
def at_0005() -> Iterator[None]:
    migrate(BEFORE)
    try:
        yield
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())


def stored() -> list[tuple[str, str]]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT outcome, details->>'reason' FROM deliveries_userlinkaudit ORDER BY id"
        )
        return [(str(outcome), str(reason)) for outcome, reason in cursor.fetchall()]


def test_0006_renames_the_outcomes_and_reasons_and_its_reverse_restores_them(at_0005) -> None:
    with connection.cursor() as cursor:
        for number, ((outcome, method, reason), _) in enumerate(ROWS, start=1):
            cursor.execute(
                "INSERT INTO deliveries_userlinkaudit"
                " (delivery_id, guest_id, user_id, outcome, method, details, created_at)"
                " VALUES (%s, %s, NULL, %s, %s, %s::jsonb, now())",
                [number, number, outcome, method, json.dumps({"reason": reason, "n": number})],
            )

    migrate(AFTER)
    renamed = stored()
    migrate(BEFORE)
    restored = stored()

    assert renamed == [after for _, after in ROWS]
    assert restored == [(outcome, reason) for (outcome, _, reason), _ in ROWS]
