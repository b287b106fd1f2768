"""The deliveries benchmark runs end to end at a tiny scale and leaves nothing behind."""

from __future__ import annotations

import pytest

from deliveries.models import Event, EventGuest, MessageDelivery, UserLinkAudit
from evoflow.models import User
from tests.helpers import bench_quick_records


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_deliveries_benchmark_runs_and_cleans_up(subprocess_env, tmp_path):
    users_before = User.objects.count()

    records = bench_quick_records(
        "deliveries", env=subprocess_env, results=tmp_path / "results.jsonl"
    )
    assert records["deliveries.backfill"]["inconsistent"] == 20
    assert records["deliveries.backfill"]["linked"] == 20
    assert records["deliveries.message_send"]["linked"] == 25
    assert records["deliveries.guest_link"]["guests"] == 3
    assert records["deliveries.integrity"]["deliveries"] == 200
    assert "deliveries.postgres.copy.write_row" in records
    # The run's rows are gone, audit rows included.
    assert (
        Event.objects.count(),
        EventGuest.objects.count(),
        MessageDelivery.objects.count(),
        UserLinkAudit.objects.count(),
    ) == (0, 0, 0, 0)
    assert User.objects.count() == users_before
