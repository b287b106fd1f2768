"""Trends of the stored integrity runs, and the inline SVG chart the dashboard draws of them.

The series come from `IntegrityCheckResult` rows of finished runs: the inconsistency rate (the
ratio, as a percentage, of the check registered with `is_trend_rate`: deliveries' unlinked
deliveries) and the failing count of every check
that failed at least once in the window. Every result of the last 24 hours is a point of its own
(a repair run adds a point after the run it repaired, it never hides it); older ones are bounded
to one point per series per hour (the newest result of that hour), so a run every minute for 30
days draws at most 720 + 1,440 points per series. One query. The chart is drawn on the server
(no script, no CDN), with a title and description for screen readers and a `<title>` on every point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.db import connection
from django.utils import timezone
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from evoflow.integrity.registry import all_checks
from evoflow.models import IntegrityCheckResult, IntegrityRun

DEFAULT_DAYS = 30
# Within this window every stored result is a point; before it, the newest of each hour.
EVERY_POINT_WINDOW = timedelta(hours=24)

# Colour-blind-safe (the first four of Okabe-Ito), cycled when more checks fail than it has
# colours; every colour keeps 3:1 contrast (WCAG 1.4.11) on the admin's light and dark themes.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#B8860B", "#8C6BB1", "#7F7F7F")
RATE_COLOUR = "#D62728"

WIDTH = 760
PANEL_HEIGHT = 170
MARGIN_LEFT = 56
MARGIN_RIGHT = 16
PANEL_TOP = (28, 252)  # the top of the rate panel and of the counts panel
LEGEND_TOP = 452
LEGEND_LINE = 16


@dataclass(frozen=True)
class TrendPoint:
    run_id: int
    at: datetime
    value: float


@dataclass
class TrendSeries:
    check_id: str
    points: list[TrendPoint] = field(default_factory=list)


@dataclass(frozen=True)
class IntegrityTrend:
    since: datetime
    until: datetime
    days: int
    rate: TrendSeries  # percent
    failing: list[TrendSeries]  # failing counts, one series per check that failed

    @property
    def is_empty(self) -> bool:
        return not self.rate.points and not any(series.points for series in self.failing)

    @property
    def latest_run_id(self) -> int | None:
        points = [point for series in (self.rate, *self.failing) for point in series.points]
        return max(points, key=lambda point: (point.at, point.run_id)).run_id if points else None


_TREND_SQL = """
    WITH bucketed AS (
        -- Every result of the last day is its own point (a repair ten minutes after a run adds
        -- a point, it does not replace the run's); older ones keep the newest of each hour.
        SELECT DISTINCT ON (
                   result.check_id, date_trunc('hour', result.created_at),
                   CASE WHEN result.created_at >= %(every_point_since)s THEN result.id END
               )
               result.check_id, result.run_id, result.created_at, result.failing_count,
               result.ratio,
               -- Window functions run before DISTINCT ON: this sees every result of the window.
               bool_or(result.failing_count > 0)
                   OVER (PARTITION BY result.check_id) AS failed_in_window
        FROM {results} AS result
        JOIN {runs} AS run ON run.id = result.run_id
        WHERE result.check_id = ANY(%(check_ids)s)
          AND result.created_at >= %(since)s
          AND result.created_at <= %(until)s
          AND run.finished_at IS NOT NULL
        ORDER BY result.check_id, date_trunc('hour', result.created_at),
                 CASE WHEN result.created_at >= %(every_point_since)s THEN result.id END,
                 result.created_at DESC, result.id DESC
    )
    SELECT check_id, run_id, created_at, failing_count, ratio, failed_in_window
    FROM bucketed
    WHERE check_id = %(rate_check_id)s OR failed_in_window
    ORDER BY check_id, created_at
"""


def trend_rate_check_id() -> str | None:
    """The id of the check registered as the trend's inconsistency rate, if any."""
    return next((check.id for check in all_checks() if check.is_trend_rate), None)


def integrity_trend(*, days: int = DEFAULT_DAYS, now: datetime | None = None) -> IntegrityTrend:
    """The series of the last `days` days of stored results of finished runs: one query.

    Only registered checks are read (`check_id = ANY(...)` lets each check's range come from
    the (check_id, -created_at) index); a check removed from the code leaves the chart.
    """
    until = (now or timezone.now()).astimezone(UTC)
    since = until - timedelta(days=days)
    rate_check = trend_rate_check_id()
    check_ids = sorted(check.id for check in all_checks())
    sql = _TREND_SQL.format(
        results=connection.ops.quote_name(IntegrityCheckResult._meta.db_table),
        runs=connection.ops.quote_name(IntegrityRun._meta.db_table),
    )
    with connection.cursor() as cursor:
        cursor.execute(
            sql,
            {
                "check_ids": check_ids,
                "since": since,
                "until": until,
                "rate_check_id": rate_check,
                "every_point_since": until - EVERY_POINT_WINDOW,
            },
        )
        rows = cursor.fetchall()
    rate = TrendSeries(rate_check or "")
    failing: dict[str, TrendSeries] = {}
    # A check that failed once in the window keeps its series, even when the newest result of
    # that hour (a repair's) is 0.
    failed_checks = {row[0] for row in rows if row[5]}
    for check_id, run_id, created_at, failing_count, ratio, _failed in rows:
        if check_id == rate_check:
            rate.points.append(TrendPoint(run_id, created_at, float(ratio) * 100))
        if check_id in failed_checks:
            series = failing.setdefault(check_id, TrendSeries(check_id))
            series.points.append(TrendPoint(run_id, created_at, float(failing_count)))
    return IntegrityTrend(
        since=since, until=until, days=days, rate=rate, failing=list(failing.values())
    )


# -- the chart ------------------------------------------------------------------------------------


def integrity_trend_svg(trend: IntegrityTrend | None = None) -> SafeString:
    """The trend as an inline, accessible SVG; a short message when the window has no runs."""
    trend = trend or integrity_trend()
    if trend.is_empty:
        return mark_safe(
            '<p class="trend-empty" data-testid="trend-chart-empty">'
            f"No integrity runs in the last {int(trend.days)} days.</p>"
        )
    height = (
        LEGEND_TOP + LEGEND_LINE * len(trend.failing) + 8
        if trend.failing
        else PANEL_TOP[1] + PANEL_HEIGHT + 24
    )
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="100%" '
        f'viewBox="0 0 {WIDTH} {height}" data-testid="trend-chart" '
        f'data-latest-run="{trend.latest_run_id}" aria-labelledby="trend-title trend-desc" '
        'style="max-width:100%;height:auto;font:11px sans-serif">',
        f'<title id="trend-title">Integrity trends, last {int(trend.days)} days</title>',
        f'<desc id="trend-desc">{escape(_description(trend))}</desc>',
    ]
    parts += _panel(
        trend,
        top=PANEL_TOP[0],
        heading=f"Inconsistency rate ({trend.rate.check_id or 'no check registered'}), %",
        series=[(trend.rate, RATE_COLOUR)] if trend.rate.points else [],
        unit="%",
        empty=f"no result of {trend.rate.check_id or 'a rate check'} in this window",
    )
    coloured = [
        (series, PALETTE[index % len(PALETTE)]) for index, series in enumerate(trend.failing)
    ]
    parts += _panel(
        trend,
        top=PANEL_TOP[1],
        heading="Failing rows per check",
        series=coloured,
        unit="",
        empty="no check failed in this window",
    )
    if coloured:
        parts += _legend(coloured)
    parts.append("</svg>")
    return mark_safe("".join(parts))


def _description(trend: IntegrityTrend) -> str:
    latest = trend.rate.points[-1].value if trend.rate.points else None
    rate = f"latest inconsistency rate {latest:.2f}%" if latest is not None else "no rate"
    failing = ", ".join(series.check_id for series in trend.failing) or "none"
    return (
        f"From {_when(trend.since)} to {_when(trend.until)}, a point per result in the last "
        f"24 hours and per hour before: {rate}; "
        f"checks that failed: {failing}."
    )


def _when(moment: datetime) -> str:
    # The admin's one time format (evoflow.admin_display.TIME_FORMAT).
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _panel(
    trend: IntegrityTrend,
    *,
    top: int,
    heading: str,
    series: list[tuple[TrendSeries, str]],
    unit: str,
    empty: str,
) -> list[str]:
    left, right = MARGIN_LEFT, WIDTH - MARGIN_RIGHT
    bottom = top + PANEL_HEIGHT
    parts = [
        f'<text x="{left}" y="{top - 10}" font-weight="bold" fill="currentColor">'
        f"{escape(heading)}</text>",
        f'<rect x="{left}" y="{top}" width="{right - left}" height="{PANEL_HEIGHT}" '
        'fill="none" stroke="#999" stroke-width="1"/>',
    ]
    if not series:
        parts.append(
            f'<text x="{(left + right) // 2}" y="{top + PANEL_HEIGHT // 2}" text-anchor="middle" '
            f'fill="currentColor">{escape(empty)}</text>'
        )
        return parts
    top_value = _nice_ceiling(max(point.value for line, _ in series for point in line.points))
    for tick in (0.0, top_value / 2, top_value):
        y = bottom - tick / top_value * PANEL_HEIGHT
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="#ddd"/>'
            f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" fill="currentColor">'
            f"{escape(_number(tick))}{escape(unit)}</text>"
        )
    for moment, anchor in ((trend.since, "start"), (trend.until, "end")):
        parts.append(
            f'<text x="{_x(trend, moment):.1f}" y="{bottom + 14}" text-anchor="{anchor}" '
            f'fill="currentColor">{escape(_when(moment))}</text>'
        )
    for line, colour in series:
        coordinates = [
            (_x(trend, point.at), bottom - point.value / top_value * PANEL_HEIGHT, point)
            for point in line.points
        ]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _ in coordinates)
        parts.append(
            f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.5"/>'
        )
        for x, y, point in coordinates:
            label = (
                f"{line.check_id}, run {point.run_id}, {_when(point.at)}: "
                f"{_number(point.value)}{unit}"
            )
            parts.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{colour}" '
                f'data-run-id="{int(point.run_id)}" data-check-id="{escape(line.check_id)}">'
                f"<title>{escape(label)}</title></circle>"
            )
    return parts


def _legend(series: list[tuple[TrendSeries, str]]) -> list[str]:
    parts = [
        f'<text x="{MARGIN_LEFT}" y="{LEGEND_TOP}" font-weight="bold" fill="currentColor">'
        "Checks</text>"
    ]
    for index, (line, colour) in enumerate(series):
        y = LEGEND_TOP + LEGEND_LINE * (index + 1)
        parts.append(
            f'<rect x="{MARGIN_LEFT}" y="{y - 9}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{MARGIN_LEFT + 16}" y="{y}" fill="currentColor">'
            f"{escape(line.check_id)}</text>"
        )
    return parts


def _x(trend: IntegrityTrend, moment: datetime) -> float:
    span = (trend.until - trend.since).total_seconds() or 1.0
    share = min(max((moment - trend.since).total_seconds() / span, 0.0), 1.0)
    return MARGIN_LEFT + share * (WIDTH - MARGIN_LEFT - MARGIN_RIGHT)


def _nice_ceiling(value: float) -> float:
    """The axis top: 1, 2 or 5 times a power of ten, at least `value` (and never 0)."""
    if value <= 0:
        return 1.0
    magnitude = 10.0 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * magnitude >= value:
            return step * magnitude
    return 10 * magnitude


def _number(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".") if value != int(value) else str(int(value))
