"""The dashboard benchmark runs at a tiny scale, in a database of its own that it drops."""

from __future__ import annotations

import pytest
from django.db import connection
from django_q.models import Task

from bench.bench_dashboard import dashboard_list_urls, list_name
from deliveries.models import MessageDelivery, UserLinkAudit
from evoflow.models import IntegrityRun, User
from journeys.models import JourneySession
from tests.helpers import bench_quick_records


def test_list_names_leave_out_timestamps_and_row_ids():
    assert (
        list_name(
            "/admin/conversations/webhookreceipt/"
            "?status__exact=failed&received_since=2026-11-23T10%3A00%3A00%2B00%3A00"
        )
        == "dashboard.list.webhookreceipt.status__exact=failed,received_since"
    )
    assert (
        list_name("/admin/conversations/syncrun/?page__id__exact=42")
        == "dashboard.list.syncrun.page__id__exact"
    )
    assert (
        list_name("/admin/conversations/facebookpage/?is_reauthorization_required__exact=1")
        == "dashboard.list.facebookpage.is_reauthorization_required__exact=1"
    )
    assert list_name("/admin/django_q/ormq/") == "dashboard.list.ormq"


def test_only_the_dashboards_own_links_to_lists_are_taken():
    page = (
        '<a href="/admin/">home</a><section class="ops-dashboard">'
        '<a href="/admin/journeys/journeysession/?status__exact=waiting&amp;x=1">3</a>'
        '<a href="/admin/journeys/journeysession/?status__exact=waiting&amp;x=1">3 again</a>'
        '<a href="/admin/evoflow/integrityrun/7/change/">run 7</a>'
        '</section><div class="ops-app-list"><a href="/admin/evoflow/user/">Users</a></div>'
    )

    assert dashboard_list_urls(page) == [
        "/admin/journeys/journeysession/?status__exact=waiting&x=1"
    ]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_dashboard_benchmark_runs_in_its_own_database_and_drops_it(subprocess_env, tmp_path):
    users_before = User.objects.count()

    records = bench_quick_records(
        "dashboard", env=subprocess_env, results=tmp_path / "results.jsonl"
    )
    # The quick sizes at 0.01: 50,000 deliveries, 50,000 audits, 25,000 receipts, 10,000
    # sessions, 5,000 failed tasks, 20 integrity runs (the minimum: one per sync page).
    data = records["dashboard.data"]
    assert data["deliveries_messagedelivery_rows"] == 500
    assert data["deliveries_userlinkaudit_rows"] == 500
    assert data["conversations_webhookreceipt_rows"] == 250
    assert data["journeys_journeysession_rows"] == 100
    assert data["django_q_task_rows"] == 50
    assert data["evoflow_integrityrun_rows"] == 20
    assert records["dashboard.page"]["queries"] > 0
    for tile in ("journeys", "conversations", "deliveries", "tasks", "integrity_trend"):
        assert records[f"dashboard.tile.{tile}"]["queries"] >= 1
    # The lists come from the rendered page: every area's links are among them.
    for name in (
        "dashboard.list.journeysession.overdue=yes",
        "dashboard.list.journeysession.status__exact=completed",
        "dashboard.list.contact.enrichment=stub",
        "dashboard.list.webhookreceipt.status__exact=failed,received_since",
        "dashboard.list.messagedelivery.consistency=inconsistent",
        "dashboard.list.userlinkaudit.outcome__exact=linked,created_since",
        "dashboard.list.failure.stopped_since",
    ):
        assert records[name]["median_ms"] > 0, name
    assert "dashboard.naive.count.deliveries_messagedelivery" in records
    assert records["dashboard.naive.list.messagedelivery"]["queries"] > 0
    # Nothing was written here, and the bench database is gone.
    assert (
        MessageDelivery.objects.count(),
        UserLinkAudit.objects.count(),
        JourneySession.objects.count(),
        Task.objects.count(),
        IntegrityRun.objects.count(),
    ) == (0, 0, 0, 0, 0)
    assert User.objects.count() == users_before
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s",
            [connection.settings_dict["NAME"] + "_bench_dashboard_%"],
        )
        assert cursor.fetchall() == []
