"""Helpers shared by the deliveries tests."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from django.db import connection, transaction

from deliveries.models import FeatureFlag, UserLinkAudit

LINKING = FeatureFlag.LINK_USER_BY_PHONE
FALLBACK = FeatureFlag.LINK_USER_BY_PHONE_FALLBACK_TO_USERS


@pytest.fixture(autouse=True)
def feature_flags(db) -> None:
    """The flags at their migration defaults: a transactional test's flush empties the table
    (the database then assumes the same defaults, but tests flip rows)."""
    for name, enabled in FeatureFlag.DEFAULTS.items():
        FeatureFlag.objects.update_or_create(name=name, defaults={"enabled": enabled})


def flag_set(name: str, enabled: bool) -> None:
    """Flip a flag the way a raw write would: no service, no cache to clear."""
    assert FeatureFlag.objects.filter(name=name).update(enabled=enabled) == 1


@contextmanager
def triggers_bypassed() -> Iterator[None]:
    """Write rows as a restore would: with every trigger off (session_replication_role)."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL session_replication_role = replica")
        try:
            yield
        finally:
            cursor.execute("SET LOCAL session_replication_role = origin")


def audit_rows(**filters) -> list[tuple]:
    """(delivery_id, outcome, method) of audit rows, oldest first."""
    return list(
        UserLinkAudit.objects.filter(**filters)
        .order_by("id")
        .values_list("delivery_id", "outcome", "method")
    )


def audit_outcomes(**filters) -> Counter[tuple[str, str]]:
    return Counter(
        UserLinkAudit.objects.filter(**filters).values_list("outcome", "method").order_by()
    )
