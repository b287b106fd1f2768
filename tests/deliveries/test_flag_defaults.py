"""The flags' defaults are `FeatureFlag.DEFAULTS`, wherever they are written.

The link rule (deliveries/sql/link_rule.sql) assumes a default for a flag whose row is missing,
and migration 0003 created the rows; both must say what `FeatureFlag.DEFAULTS` says.
"""

from __future__ import annotations

import importlib

import pytest
from django.db import connection

from deliveries.models import FeatureFlag
from tests.core.factories import UserFactory
from tests.deliveries.factories import EventGuestFactory, MessageDeliveryFactory

pytestmark = pytest.mark.django_db


def _resolved(delivery_id: int) -> tuple[str, str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT outcome, details->>'reason' FROM deliveries_link_resolve(ARRAY[%s]::bigint[])",
            [delivery_id],
        )
        (row,) = cursor.fetchall()
    return str(row[0]), str(row[1])


def test_the_link_rule_assumes_the_defaults_for_missing_rows() -> None:
    assert set(FeatureFlag.DEFAULTS) == {
        FeatureFlag.LINK_USER_BY_PHONE,
        FeatureFlag.LINK_USER_BY_PHONE_FALLBACK_TO_USERS,
    }
    # An unlinked guest whose number is a single user's: linking decides whether anything is
    # tried, the fallback whether the phone may link.
    guest = EventGuestFactory()
    UserFactory(phone=guest.phone)
    delivery = MessageDeliveryFactory(guest=guest)
    FeatureFlag.objects.all().delete()

    outcome, reason = _resolved(delivery.pk)

    if not FeatureFlag.DEFAULTS[FeatureFlag.LINK_USER_BY_PHONE]:
        assert (outcome, reason) == ("skipped", "flag_off")
    elif FeatureFlag.DEFAULTS[FeatureFlag.LINK_USER_BY_PHONE_FALLBACK_TO_USERS]:
        assert (outcome, reason) == ("linked", "unique_user_with_phone")
    else:
        assert (outcome, reason) == ("no_match", "guest_not_linked")


def test_the_migration_created_the_flags_at_the_defaults() -> None:
    migration = importlib.import_module("deliveries.migrations.0003_feature_flags")
    assert {name: enabled for name, (enabled, _) in migration.FLAGS.items()} == (
        FeatureFlag.DEFAULTS
    )
