"""The integrity trend: series from the stored runs, and the inline SVG drawn from them."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from evoflow.integrity import IntegrityCheck, registered
from evoflow.integrity.trends import integrity_trend, integrity_trend_svg
from evoflow.models import IntegrityCheckResult, IntegrityRun
from tests.core.factories import UserFactory

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
RATE = "deliveries.unlinked_deliveries"
OVERDUE = "journeys.sessions_overdue"
STUBS = "journeys.stub_contacts_not_enriched"
SVG = "{http://www.w3.org/2000/svg}"


def store_run(at: datetime, results: dict[str, tuple[int, float]], *, finished=True) -> int:
    """A run at `at` with {check id: (failing count, ratio)}; returns its id."""
    run = IntegrityRun.objects.create(
        status="warning", started_at=at, finished_at=at + timedelta(seconds=5) if finished else None
    )
    IntegrityCheckResult.objects.bulk_create(
        [
            IntegrityCheckResult(
                run=run,
                check_id=check_id,
                status="warning" if failing else "ok",
                failing_count=failing,
                population=1000,
                ratio=ratio,
                created_at=at,
            )
            for check_id, (failing, ratio) in results.items()
        ]
    )
    return run.pk


def points(series) -> list[tuple[int, datetime, float]]:
    return [(point.run_id, point.at, point.value) for point in series.points]


def test_series_from_stored_runs_one_point_per_hour_within_the_window():
    too_old = store_run(NOW - timedelta(days=31), {RATE: (9, 0.09), STUBS: (5, 0.5)})
    day_one = store_run(NOW - timedelta(days=3), {RATE: (10, 0.01), OVERDUE: (0, 0.0)})
    # Two runs in the same hour: only the later one is drawn.
    store_run(NOW - timedelta(days=2, minutes=50), {RATE: (30, 0.03), OVERDUE: (2, 0.2)})
    later_in_hour = store_run(
        NOW - timedelta(days=2, minutes=10), {RATE: (20, 0.02), OVERDUE: (4, 0.4)}
    )
    today = store_run(NOW - timedelta(hours=1), {RATE: (0, 0.0), OVERDUE: (0, 0.0), STUBS: (0, 0)})
    store_run(NOW - timedelta(minutes=5), {RATE: (50, 0.05)}, finished=False)  # still running

    trend = integrity_trend(now=NOW)

    assert points(trend.rate) == [
        (day_one, NOW - timedelta(days=3), 1.0),
        (later_in_hour, NOW - timedelta(days=2, minutes=10), 2.0),
        (today, NOW - timedelta(hours=1), 0.0),
    ]
    # Only checks that failed in the window get a line: the stub check failed only in the run
    # older than 30 days; the overdue check failed once, and its line has every hour it ran.
    assert [series.check_id for series in trend.failing] == [RATE, OVERDUE]
    overdue = next(series for series in trend.failing if series.check_id == OVERDUE)
    assert points(overdue) == [
        (day_one, NOW - timedelta(days=3), 0.0),
        (later_in_hour, NOW - timedelta(days=2, minutes=10), 4.0),
        (today, NOW - timedelta(hours=1), 0.0),
    ]
    assert trend.latest_run_id == today
    assert too_old not in {point.run_id for series in trend.failing for point in series.points}


def test_a_run_every_minute_is_one_point_per_hour_in_one_query():
    # 3 hours of a run every minute, two days ago (past the last day, where every result is
    # drawn): 180 runs, three points per series.
    two_days_ago = NOW - timedelta(days=2)
    for minute in range(180):
        store_run(two_days_ago - timedelta(minutes=minute + 1), {RATE: (minute, minute / 1000)})

    with CaptureQueriesContext(connection) as queries:
        trend = integrity_trend(now=NOW)

    assert len(queries) == 1
    assert len(trend.rate.points) == 3  # 09:00-09:59, 10:00-10:59, 11:00-11:59
    assert [point.at for point in trend.rate.points] == [
        two_days_ago - timedelta(hours=2, minutes=1),
        two_days_ago - timedelta(hours=1, minutes=1),
        two_days_ago - timedelta(minutes=1),
    ]


def test_a_repair_in_the_same_hour_adds_a_point_and_keeps_the_failing_series():
    # A full run finds 2 of 3 deliveries inconsistent; ten minutes later a repair run of that
    # one check finds none. Both points are drawn, and the check's failing line stays.
    run = store_run(NOW - timedelta(minutes=20), {RATE: (2, 2 / 3), OVERDUE: (0, 0.0)})
    repair = store_run(NOW - timedelta(minutes=10), {RATE: (0, 0.0)})

    trend = integrity_trend(now=NOW)

    assert points(trend.rate) == [
        (run, NOW - timedelta(minutes=20), pytest.approx(66.6667, abs=1e-3)),
        (repair, NOW - timedelta(minutes=10), 0.0),
    ]
    assert [series.check_id for series in trend.failing] == [RATE]
    assert points(trend.failing[0]) == [
        (run, NOW - timedelta(minutes=20), 2.0),
        (repair, NOW - timedelta(minutes=10), 0.0),
    ]


def test_the_query_count_does_not_grow_with_the_runs():
    store_run(NOW - timedelta(hours=1), {RATE: (1, 0.01), OVERDUE: (1, 0.1)})
    with CaptureQueriesContext(connection) as few:
        integrity_trend(now=NOW)
    for hour in range(2, 200):
        store_run(NOW - timedelta(hours=hour), {RATE: (hour, 0.01), OVERDUE: (1, 0.1)})
    with CaptureQueriesContext(connection) as many:
        integrity_trend(now=NOW)

    assert len(few) == len(many) == 1


def test_the_svg_parses_as_xml_with_one_point_per_bucket_and_the_newest_run():
    first = store_run(NOW - timedelta(days=5), {RATE: (10, 0.01), OVERDUE: (3, 0.3)})
    second = store_run(NOW - timedelta(days=1), {RATE: (5, 0.005), OVERDUE: (0, 0.0)})

    svg = ET.fromstring(str(integrity_trend_svg(integrity_trend(now=NOW))))

    assert svg.tag == f"{SVG}svg"
    assert svg.get("role") == "img"
    assert svg.get("data-testid") == "trend-chart"
    assert svg.get("data-latest-run") == str(second)
    assert svg.find(f"{SVG}title").text == "Integrity trends, last 30 days"
    assert "checks that failed" in svg.find(f"{SVG}desc").text
    circles = svg.findall(f".//{SVG}circle")
    # The rate (2 points), then failing counts of the rate check (2) and the overdue check (2).
    assert [(circle.get("data-check-id"), circle.get("data-run-id")) for circle in circles] == [
        (RATE, str(first)),
        (RATE, str(second)),
        (RATE, str(first)),
        (RATE, str(second)),
        (OVERDUE, str(first)),
        (OVERDUE, str(second)),
    ]
    assert circles[0].find(f"{SVG}title").text == (
        f"{RATE}, run {first}, 2026-11-18 12:00:00 UTC: 1%"
    )
    assert circles[4].find(f"{SVG}title").text == (
        f"{OVERDUE}, run {first}, 2026-11-18 12:00:00 UTC: 3"
    )
    legend = [text.text for text in svg.findall(f"{SVG}text")]
    assert RATE in legend
    assert OVERDUE in legend


def test_every_text_in_the_svg_is_escaped():
    odd = IntegrityCheck(id="journeys.<b>&\"odd'</b>", description="", sql="SELECT 0, 0, '{}'")
    with registered(odd):
        store_run(NOW - timedelta(hours=2), {odd.id: (1, 0.1)})
        markup = str(integrity_trend_svg(integrity_trend(now=NOW)))

    assert "<b>" not in markup
    svg = ET.fromstring(markup)
    legend = [text.text for text in svg.findall(f"{SVG}text")]
    assert odd.id in legend
    assert svg.find(f".//{SVG}circle").get("data-check-id") == odd.id


def test_an_empty_window_is_a_short_message_not_an_empty_chart():
    store_run(NOW - timedelta(days=40), {RATE: (1, 0.01)})

    markup = str(integrity_trend_svg(integrity_trend(now=NOW)))

    assert "<svg" not in markup
    assert "No integrity runs in the last 30 days." in markup


def test_the_dashboard_draws_the_chart_under_the_tiles():
    run_id = store_run(datetime.now(tz=UTC) - timedelta(hours=1), {RATE: (1, 0.01)})
    client = Client()
    client.force_login(UserFactory(is_staff=True, is_superuser=True))

    html = client.get("/admin/").content.decode()

    assert f'data-latest-run="{run_id}"' in html
    assert html.index('data-testid="tile-tasks"') < html.index('data-testid="trend-chart"')
