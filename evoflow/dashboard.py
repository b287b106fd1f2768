"""The operator dashboard: the admin index's live numbers, one tile per area.

The core holds the frame: the building blocks every tile uses (figures, links, counts that stay
cheap on big tables), the integrity status that colours each tile, the background-tasks tile
(django-q2 is not one of our apps) and the tile registry. Each app contributes its own tile from
its `AppConfig.ready()` with `tile_register(TileSpec(...))`, in its `dashboard` module, with
its template at `admin/dashboard/<area>.html` in its own `templates/` folder. The core imports no
app: the apps import the core.

Tiles are shown in ascending `TileSpec.order` (journeys 10, conversations 20, deliveries 30,
background tasks 90), whatever order the apps start in.

Each tile is a small, fixed number of queries whatever the size of the tables: its counts are
served by partial indexes or bounded by a time window, and a table too big to count on every
page view (more than `EXACT_COUNT_LIMIT` rows by the planner's statistics) is estimated from
those statistics instead, shown with "~". Every number links to the admin list filtered to
exactly the rows it counts; times in those links are whole seconds of the same `now` the
number was counted with, so the list and the number agree.

A number is shown, and counted, only for users who may view the model it counts (`may_view`);
a tile is left out when none of its numbers remains.

A tile's colour is the worst status among the latest stored result of each registered
integrity check of its area (check ids start with the area's name).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields, is_dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol
from urllib.parse import urlencode

from django.conf import settings
from django.db import connection
from django.db.models import Model
from django.urls import NoReverseMatch, reverse
from django_q.models import Failure, OrmQ

from evoflow.db import table_row_estimate
from evoflow.integrity.registry import all_checks
from evoflow.models import IntegrityCheckResult, IntegrityRun
from evoflow.registry import Registry

EXACT_COUNT_LIMIT = 100_000
FAILED_TASKS_WINDOW = timedelta(hours=24)

# Worst last: an area's status is the highest ranked among its checks' latest results.
STATUS_RANK = {"unknown": 0, "ok": 1, "warning": 2, "error": 3}
STATUS_LABELS = {
    "unknown": "not checked yet",
    "ok": "ok",
    "warning": "warning",
    "error": "error",
}


# -- building blocks ------------------------------------------------------------------------------

# Whether the user may view a model's rows: only then are its numbers counted and shown.
ViewPermission = Callable[[type[Model]], bool]


def may_view_everything(model: type[Model]) -> bool:
    """For reads outside a request (benchmarks, tests): every number."""
    return True


@dataclass(frozen=True)
class Figure:
    """One number on the dashboard and the admin list showing exactly its rows."""

    key: str
    label: str
    value: int | None  # None: not available (e.g. the broker did not answer)
    url: str = ""
    is_estimate: bool = False
    is_capped: bool = False  # counting stopped at `value`: there are at least that many
    # A number that is bad news when above zero (failures, overdue waits): it makes its tile's
    # badge at least a warning, whatever the stored integrity results say.
    is_problem: bool = False
    # The label when the value is exactly 1 ("1 stub contact"), when it differs from `label`.
    label_one: str = ""

    @property
    def display_label(self) -> str:
        return self.label_one if self.value == 1 and self.label_one else self.label

    @property
    def display(self) -> str:
        if self.value is None:
            return "n/a"
        if self.is_capped:
            return f"{self.value:,}+"
        return f"~{self.value}" if self.is_estimate else str(self.value)


@dataclass(frozen=True)
class CheckHealth:
    check_id: str
    status: str  # the stored result's status: ok, warning, error or failed
    failing_count: int
    run_id: int


@dataclass(frozen=True)
class AreaHealth:
    status: str  # ok, warning, error or unknown
    checks: tuple[CheckHealth, ...]

    @property
    def label(self) -> str:
        return STATUS_LABELS[self.status]

    @property
    def failing_checks(self) -> tuple[CheckHealth, ...]:
        return tuple(check for check in self.checks if check.status != "ok")


@dataclass(frozen=True)
class RowCount:
    value: int
    is_estimate: bool


def changelist_url(app_label: str, model_name: str, **query: object) -> str:
    url = reverse(f"admin:{app_label}_{model_name}_changelist")
    return f"{url}?{urlencode(query)}" if query else url


def change_url(app_label: str, model_name: str, pk: object) -> str:
    return reverse(f"admin:{app_label}_{model_name}_change", args=[pk])


def iso_seconds(moment: datetime) -> str:
    """The form the admin's "since" filters take: ISO 8601, UTC, whole seconds."""
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def is_big_table(estimate: int | None) -> bool:
    # A table never analysed counts as small: autovacuum analyses any table that grows, so a
    # big table without statistics is short-lived.
    return estimate is not None and estimate >= EXACT_COUNT_LIMIT


def table_row_count(model: type[Model]) -> RowCount:
    """The number of rows of `model`'s table: exact while the planner's statistics say it is
    small, their estimate from `EXACT_COUNT_LIMIT` rows on."""
    estimate = table_row_estimate(model)
    if estimate is not None and is_big_table(estimate):
        return RowCount(estimate, is_estimate=True)
    return RowCount(model._default_manager.order_by().count(), is_estimate=False)


def column_value_estimates(model: type[Model], column: str, *, rows: int) -> dict[str, int]:
    """How many of `rows` rows hold each common value of `column`, from ANALYZE's statistics
    (its most common values and their frequencies). A value missing there is rare, not
    necessarily absent: count it some other way."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT most_common_vals::text::text[], most_common_freqs
            FROM pg_stats
            WHERE schemaname = current_schema() AND tablename = %s AND attname = %s
            """,
            [model._meta.db_table, column],
        )
        row = cursor.fetchone()
    if not row or row[0] is None:
        return {}
    return {
        str(value): round(frequency * rows) for value, frequency in zip(row[0], row[1], strict=True)
    }


def _table(model: type[Model]) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def repair_url(check_id: str) -> str:
    """The admin's repair page of an integrity check ("" when the admin does not serve it)."""
    try:
        return reverse("admin:evoflow_integrityrun_repair", args=[check_id])
    except NoReverseMatch:
        return ""


# -- integrity status -----------------------------------------------------------------------------


_LATEST_RESULTS_SQL = """
    SELECT latest.check_id, latest.status, latest.failing_count, latest.run_id
    FROM unnest(%s::text[]) AS registered(check_id)
    CROSS JOIN LATERAL (
        SELECT result.check_id, result.status, result.failing_count, result.run_id
        FROM {results} AS result
        WHERE result.check_id = registered.check_id
        ORDER BY result.created_at DESC, result.id DESC
        LIMIT 1
    ) AS latest
    ORDER BY latest.check_id
"""


def integrity_latest_results(*, check_ids: Iterable[str] | None = None) -> list[CheckHealth]:
    """The newest stored result of each of `check_ids` (every registered check by default).

    One query that probes the (check_id, -created_at, -id) index once per check, so its cost
    does not grow with the stored history (DISTINCT ON would read and sort all of it). A check
    removed from the code no longer colours its tile.
    """
    wanted = sorted(set(check_ids) if check_ids is not None else {c.id for c in all_checks()})
    sql = _LATEST_RESULTS_SQL.format(results=_table(IntegrityCheckResult))
    with connection.cursor() as cursor:
        cursor.execute(sql, [wanted])
        return [CheckHealth(*row) for row in cursor.fetchall()]


def area_health(*, area: str, latest: Iterable[CheckHealth]) -> AreaHealth:
    checks = tuple(check for check in latest if check.check_id.startswith(f"{area}."))
    levels = (_level(check.status) for check in checks)
    return AreaHealth(
        status=max(levels, key=STATUS_RANK.__getitem__, default="unknown"), checks=checks
    )


def _level(result_status: str) -> str:
    # A check whose query failed tells nothing good: it shows as an error, as would any status
    # this module does not know.
    return result_status if result_status in ("ok", "warning") else "error"


@dataclass(frozen=True)
class LastRun:
    run_id: int
    status: str
    started_at: datetime
    finished_at: datetime | None
    url: str


def integrity_last_run() -> LastRun | None:
    """The newest full run: every check, not a dry run. A repair or `integrity --check` of
    some checks says nothing about the others, so it is never "the last integrity run"."""
    run = (
        IntegrityRun.objects.filter(requested_checks=[], dry_run=False)
        .order_by("-started_at", "-id")
        .only("id", "status", "started_at", "finished_at")
        .first()
    )
    if run is None:
        return None
    return LastRun(
        run_id=run.pk,
        status=run.status,
        started_at=run.started_at,
        finished_at=run.finished_at,
        url=change_url("evoflow", "integrityrun", run.pk),
    )


# -- the tile registry ----------------------------------------------------------------------------


class Tile(Protocol):
    """What the page template needs of every tile; each tile adds its own numbers."""

    @property
    def area(self) -> str: ...

    @property
    def title(self) -> str: ...

    @property
    def health(self) -> AreaHealth: ...


@dataclass(frozen=True)
class TileRequest:
    """What a tile is built from: the moment counted at, its area's health, who is asking."""

    now: datetime
    health: AreaHealth
    may_view: ViewPermission
    can_repair: bool


@dataclass(frozen=True)
class TileSpec:
    """One area's tile: where it goes, which models it counts, how to build it.

    `models`: the tile is shown to users who may view at least one of them. `build` returns the
    tile, rendered by the template `admin/dashboard/<area>.html`.
    """

    area: str
    order: int
    models: tuple[type[Model], ...]
    build: Callable[[TileRequest], Tile]


_tiles: Registry[TileSpec] = Registry("dashboard tile", key=lambda spec: spec.area)


def tile_register(spec: TileSpec) -> TileSpec:
    """Add an area's tile (from its app's `ready()`); registering the same tile again is a no-op."""
    return _tiles.add(spec)


def tile_specs() -> list[TileSpec]:
    """Every registered tile, in the dashboard's order."""
    return sorted(_tiles.items(), key=lambda spec: (spec.order, spec.area))


def tile_areas() -> tuple[str, ...]:
    return tuple(spec.area for spec in tile_specs())


# -- background tasks -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TasksTile:
    health: AreaHealth
    # None: the user may not view that model (the ORM broker's queue, failed tasks).
    queued: Figure | None
    failed: Figure | None
    failed_since: datetime
    broker: str
    area: str = "tasks"
    title: str = "Background tasks"


def _broker() -> str:
    return "database" if "orm" in settings.Q_CLUSTER else "redis"


def queued_tasks() -> Figure:
    if _broker() == "database":
        queued = table_row_count(OrmQ)
        return Figure(
            key="tasks-queued",
            label="queued",
            value=queued.value,
            url=changelist_url("django_q", "ormq"),
            is_estimate=queued.is_estimate,
        )
    # The Redis broker's queue has no admin list: the size only, and "n/a" if it is down.
    from django_q.brokers import get_broker

    try:
        size: int | None = int(get_broker().queue_size() or 0)
    except Exception:  # any broker error: the dashboard still renders
        size = None
    return Figure(key="tasks-queued", label="queued", value=size)


def tasks_tile(
    *, now: datetime, health: AreaHealth, may_view: ViewPermission = may_view_everything
) -> TasksTile:
    since = now - FAILED_TASKS_WINDOW
    return TasksTile(
        health=health,
        # The queue's model decides for the Redis broker too: same rows, another store.
        queued=queued_tasks() if may_view(OrmQ) else None,
        failed=Figure(
            key="tasks-failed",
            label="failed in the last 24 hours",
            value=Failure.objects.filter(stopped__gte=since).order_by().count(),
            url=changelist_url("django_q", "failure", stopped_since=iso_seconds(since)),
            is_problem=True,
        )
        if may_view(Failure)
        else None,
        failed_since=since,
        broker=_broker(),
    )


tile_register(
    TileSpec(
        area="tasks",
        order=90,
        models=(OrmQ, Failure),
        build=lambda request: tasks_tile(
            now=request.now, health=request.health, may_view=request.may_view
        ),
    )
)


# -- the whole dashboard --------------------------------------------------------------------------


def dashboard_tiles(
    *,
    now: datetime,
    may_view: ViewPermission = may_view_everything,
    can_repair: bool = False,
) -> list[Tile]:
    """The tiles the user may view, in the dashboard's order, counted at `now` (whole seconds,
    so the links' times select exactly the counted rows)."""
    now = now.astimezone(UTC).replace(microsecond=0)
    specs = tile_specs()
    wanted = [spec for spec in specs if any(may_view(model) for model in spec.models)]
    if not wanted:
        return []
    results = integrity_latest_results()
    health: Mapping[str, AreaHealth] = {
        spec.area: area_health(area=spec.area, latest=results) for spec in specs
    }
    return [
        spec.build(
            TileRequest(now=now, health=health[spec.area], may_view=may_view, can_repair=can_repair)
        )
        for spec in wanted
    ]


# -- what a tile's badge says ----------------------------------------------------------------------


@dataclass(frozen=True)
class ShownTile:
    """A tile with the status its badge shows: the worst of its area's stored integrity
    results and of its own numbers (a failure counted now is at least a warning)."""

    tile: Tile
    status: str
    problems: tuple[Figure, ...]

    @property
    def label(self) -> str:
        return STATUS_LABELS[self.status]


def tile_figures(value: object) -> list[Figure]:
    """Every Figure a tile holds, in its fields, tuples and nested dataclasses."""
    if isinstance(value, Figure):
        return [value]
    if isinstance(value, (list, tuple)):
        return [figure for item in value for figure in tile_figures(item)]
    if is_dataclass(value) and not isinstance(value, type):
        return [
            figure
            for name in (field.name for field in fields(value))
            for figure in tile_figures(getattr(value, name))
        ]
    return []


def tile_shown(tile: Tile) -> ShownTile:
    problems = tuple(
        figure for figure in tile_figures(tile) if figure.is_problem and (figure.value or 0) > 0
    )
    status = tile.health.status
    if problems and STATUS_RANK[status] < STATUS_RANK["warning"]:
        status = "warning"
    return ShownTile(tile=tile, status=status, problems=problems)
