"""The operator dashboard: the admin index's live numbers, one tile per area.

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
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

from django.conf import settings
from django.db import connection
from django.db.models import Model
from django.urls import NoReverseMatch, reverse
from django_q.models import Failure, OrmQ

from conversations import selectors as conversations_selectors
from conversations.models import (
    SYNC_RUN_COUNTERS,
    FacebookPage,
    SyncRun,
    SyncStatus,
    WebhookReceipt,
)
from deliveries import selectors as deliveries_selectors
from deliveries.models import FeatureFlag, MessageDelivery, UserLinkAudit
from evoflow.db import table_row_estimate
from evoflow.integrity.registry import all_checks
from evoflow.models import IntegrityCheckResult, IntegrityRun
from journeys import selectors as journeys_selectors
from journeys.models import LIVE_STATUSES, Contact, JourneySession, SessionStatus

AREAS = ("journeys", "conversations", "deliveries", "tasks")
# The models each tile counts: a tile is shown to users who may view at least one of them.
AREA_MODELS: dict[str, tuple[type[Model], ...]] = {
    "journeys": (JourneySession, Contact),
    "conversations": (FacebookPage, SyncRun, WebhookReceipt),
    "deliveries": (MessageDelivery, UserLinkAudit, FeatureFlag),
    "tasks": (OrmQ, Failure),
}
EXACT_COUNT_LIMIT = 100_000
# A status the statistics do not list is rare, but not necessarily absent: it is counted
# exactly up to this many rows, "10,000+" beyond.
RARE_STATUS_COUNT_LIMIT = 10_000
RUNNING_SYNCS_SHOWN = 10
LAST_SYNCS_SHOWN = 10
RECEIPTS_WINDOW = timedelta(hours=1)
AUDIT_WINDOW = timedelta(hours=24)
FAILED_TASKS_WINDOW = timedelta(hours=24)
RATE_CHECK_ID = "deliveries.unlinked_deliveries"

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
    run = (
        IntegrityRun.objects.order_by("-started_at", "-id")
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


# -- journeys -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JourneysTile:
    health: AreaHealth
    # None: the user may not view that model (sessions, contacts).
    sessions_by_status: tuple[Figure, ...] | None
    overdue: Figure | None
    stub_contacts: Figure | None
    area: str = "journeys"
    title: str = "Journeys"


def sessions_by_status() -> tuple[Figure, ...]:
    """A figure per status that has sessions."""
    sessions = changelist_url("journeys", "journeysession")
    rows = table_row_estimate(JourneySession)
    live = [str(status) for status in LIVE_STATUSES]
    estimated: set[str] = set()
    capped: set[str] = set()
    if rows is not None and is_big_table(rows):
        # Live sessions are counted exactly through their partial indexes; the finished ones,
        # most of a big table, come from the statistics. A finished status the statistics do
        # not list is rare: counted through the ended sessions' index, up to a limit.
        counts = journeys_selectors.sessions_count_by_status(statuses=live)
        estimates = column_value_estimates(JourneySession, "status", rows=rows)
        ended = [status for status in SessionStatus.values if status not in live]
        estimated = {status for status in ended if status in estimates}
        counts |= {status: estimates[status] for status in estimated}
        rare = journeys_selectors.sessions_count_by_status_up_to(
            statuses=[status for status in ended if status not in estimated],
            limit=RARE_STATUS_COUNT_LIMIT + 1,
        )
        capped = {status for status, count in rare.items() if count > RARE_STATUS_COUNT_LIMIT}
        counts |= {status: min(count, RARE_STATUS_COUNT_LIMIT) for status, count in rare.items()}
    else:
        counts = journeys_selectors.sessions_count_by_status()
    return tuple(
        Figure(
            key=f"sessions-{status}",
            label=str(label),
            value=counts[status],
            url=f"{sessions}?{urlencode({'status__exact': status})}",
            is_estimate=status in estimated,
            is_capped=status in capped,
        )
        for status, label in SessionStatus.choices
        if counts.get(status)
    )


def journeys_tile(
    *, now: datetime, health: AreaHealth, may_view: ViewPermission = may_view_everything
) -> JourneysTile:
    sees_sessions = may_view(JourneySession)
    return JourneysTile(
        health=health,
        sessions_by_status=sessions_by_status() if sees_sessions else None,
        overdue=Figure(
            key="sessions-overdue",
            label="overdue waits",
            value=journeys_selectors.sessions_overdue(now=now).count(),
            url=changelist_url("journeys", "journeysession", overdue="yes"),
        )
        if sees_sessions
        else None,
        stub_contacts=Figure(
            key="stub-contacts",
            label="stub contacts, not yet enriched",
            value=journeys_selectors.contacts_not_enriched().count(),
            url=changelist_url("journeys", "contact", enrichment="stub"),
        )
        if may_view(Contact)
        else None,
    )


# -- conversations --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyncLine:
    run_id: int
    page_label: str
    mode: str
    status: str
    at: datetime | None
    progress: str
    url: str
    page_runs_url: str


@dataclass(frozen=True)
class SyncsOverview:
    running_syncs: Figure
    running: tuple[SyncLine, ...]
    running_not_shown: int
    last_syncs: tuple[SyncLine, ...]
    pages_with_syncs: int
    pages_url: str  # empty: the user may not view the pages


@dataclass(frozen=True)
class ConversationsTile:
    health: AreaHealth
    # None: the user may not view that model (pages, sync runs, webhook receipts).
    pages_needing_reauthorization: Figure | None
    syncs: SyncsOverview | None
    webhook_receipts: tuple[Figure, ...] | None
    receipts_since: datetime
    area: str = "conversations"
    title: str = "Conversations"


def sync_progress(run: object) -> str:
    """The run's counters that moved, in the order the admin shows them."""
    parts = [
        f"{name.replace('_', ' ')} {getattr(run, name)}"
        for name in SYNC_RUN_COUNTERS
        if getattr(run, name, 0)
    ]
    return ", ".join(parts) or "no progress yet"


def syncs_overview(*, may_view_pages: bool) -> SyncsOverview:
    runs_url = changelist_url("conversations", "syncrun")
    running, running_total = conversations_selectors.sync_runs_running(limit=RUNNING_SYNCS_SHOWN)
    latest, pages_with_syncs = conversations_selectors.sync_runs_latest_per_page(
        limit=LAST_SYNCS_SHOWN
    )
    return SyncsOverview(
        running_syncs=Figure(
            key="syncs-running",
            label="running syncs",
            value=running_total,
            url=changelist_url("conversations", "syncrun", status__exact=SyncStatus.RUNNING),
        ),
        running=tuple(
            SyncLine(
                run_id=run.pk,
                page_label=str(run.page),
                mode=run.mode,
                status=run.status,
                at=run.started_at,
                progress=sync_progress(run),
                url=change_url("conversations", "syncrun", run.pk),
                page_runs_url=f"{runs_url}?{urlencode({'page__id__exact': run.page_id})}",
            )
            for run in running
        ),
        running_not_shown=max(running_total - len(running), 0),
        last_syncs=tuple(
            SyncLine(
                run_id=last.run_id,
                page_label=f"{last.page_name or 'page'} ({last.page_id})",
                mode=last.mode,
                status=last.status,
                at=last.finished_at or last.created_at,
                progress="",
                url=change_url("conversations", "syncrun", last.run_id),
                page_runs_url=f"{runs_url}?{urlencode({'page__id__exact': last.page_pk})}",
            )
            for last in latest
        ),
        pages_with_syncs=pages_with_syncs,
        pages_url=changelist_url("conversations", "facebookpage") if may_view_pages else "",
    )


def webhook_receipt_figures(*, since: datetime) -> tuple[Figure, ...]:
    receipts_url = changelist_url("conversations", "webhookreceipt")
    return tuple(
        Figure(
            key=f"receipts-{status}",
            label=status,
            value=count,
            url=f"{receipts_url}?"
            + urlencode({"status__exact": status, "received_since": iso_seconds(since)}),
        )
        for status, count in conversations_selectors.webhook_receipt_counts_since(
            since=since
        ).items()
    )


def conversations_tile(
    *, now: datetime, health: AreaHealth, may_view: ViewPermission = may_view_everything
) -> ConversationsTile:
    since = now - RECEIPTS_WINDOW
    sees_pages = may_view(FacebookPage)
    return ConversationsTile(
        health=health,
        pages_needing_reauthorization=Figure(
            key="pages-reauthorization",
            label="pages needing re-authorisation",
            value=conversations_selectors.pages_needing_reauthorization().count(),
            url=changelist_url(
                "conversations", "facebookpage", is_reauthorization_required__exact=1
            ),
        )
        if sees_pages
        else None,
        syncs=syncs_overview(may_view_pages=sees_pages) if may_view(SyncRun) else None,
        webhook_receipts=webhook_receipt_figures(since=since) if may_view(WebhookReceipt) else None,
        receipts_since=since,
    )


# -- deliveries -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlagState:
    name: str
    is_enabled: bool
    url: str


@dataclass(frozen=True)
class DeliveryConsistency:
    inconsistent: Figure
    deliveries: Figure
    rate: str
    repair_url: str


@dataclass(frozen=True)
class DeliveriesTile:
    health: AreaHealth
    # None: the user may not view that model (deliveries, link audits, feature flags).
    consistency: DeliveryConsistency | None
    audit_outcomes: tuple[Figure, ...] | None
    audits_since: datetime
    flags: tuple[FlagState, ...] | None
    area: str = "deliveries"
    title: str = "Deliveries"


def inconsistency_rate(*, failing: int, population: int) -> str:
    """ "5.00%"-style, "0%" when nothing fails; never above 100% (an estimated population can
    lag behind the exact failing count)."""
    if failing <= 0 or population <= 0:
        return "0%"
    return f"{min(failing / population, 1.0) * 100:.2f}%"


def repair_url(check_id: str) -> str:
    try:
        return reverse("admin:evoflow_integrityrun_repair", args=[check_id])
    except NoReverseMatch:
        return ""


def delivery_consistency(*, can_repair: bool) -> DeliveryConsistency:
    failing = deliveries_selectors.deliveries_inconsistent().count()
    population = table_row_count(MessageDelivery)
    rate = inconsistency_rate(failing=failing, population=population.value)
    return DeliveryConsistency(
        inconsistent=Figure(
            key="inconsistent-count",
            label="inconsistent deliveries",
            value=failing,
            url=changelist_url("deliveries", "messagedelivery", consistency="inconsistent"),
        ),
        deliveries=Figure(
            key="deliveries-total",
            label="deliveries",
            value=population.value,
            url=changelist_url("deliveries", "messagedelivery"),
            is_estimate=population.is_estimate,
        ),
        rate=f"~{rate}" if population.is_estimate and failing else rate,
        repair_url=repair_url(RATE_CHECK_ID) if can_repair else "",
    )


def link_audit_figures(*, since: datetime) -> tuple[Figure, ...]:
    audits_url = changelist_url("deliveries", "userlinkaudit")
    return tuple(
        Figure(
            key=f"audits-{outcome}",
            label=outcome.replace("_", " "),
            value=count,
            url=f"{audits_url}?"
            + urlencode({"outcome__exact": outcome, "created_since": iso_seconds(since)}),
        )
        for outcome, count in deliveries_selectors.link_audit_outcome_counts(since=since).items()
    )


def deliveries_tile(
    *,
    now: datetime,
    health: AreaHealth,
    can_repair: bool,
    may_view: ViewPermission = may_view_everything,
) -> DeliveriesTile:
    since = now - AUDIT_WINDOW
    return DeliveriesTile(
        health=health,
        consistency=delivery_consistency(can_repair=can_repair)
        if may_view(MessageDelivery)
        else None,
        audit_outcomes=link_audit_figures(since=since) if may_view(UserLinkAudit) else None,
        audits_since=since,
        flags=tuple(
            FlagState(
                name=flag.name,
                is_enabled=flag.enabled,
                url=change_url("deliveries", "featureflag", flag.pk),
            )
            for flag in deliveries_selectors.feature_flag_list()
        )
        if may_view(FeatureFlag)
        else None,
    )


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
        )
        if may_view(Failure)
        else None,
        failed_since=since,
        broker=_broker(),
    )


# -- the whole dashboard --------------------------------------------------------------------------

Tile = JourneysTile | ConversationsTile | DeliveriesTile | TasksTile


def dashboard_tiles(
    *,
    now: datetime,
    may_view: ViewPermission = may_view_everything,
    can_repair: bool = False,
) -> list[Tile]:
    """The tiles the user may view, in the dashboard's order, counted at `now` (whole seconds,
    so the links' times select exactly the counted rows)."""
    now = now.astimezone(UTC).replace(microsecond=0)
    wanted = {area for area in AREAS if any(may_view(model) for model in AREA_MODELS[area])}
    if not wanted:
        return []
    results = integrity_latest_results()
    health: Mapping[str, AreaHealth] = {
        area: area_health(area=area, latest=results) for area in AREAS
    }
    tiles: list[Tile] = []
    if "journeys" in wanted:
        tiles.append(journeys_tile(now=now, health=health["journeys"], may_view=may_view))
    if "conversations" in wanted:
        tiles.append(conversations_tile(now=now, health=health["conversations"], may_view=may_view))
    if "deliveries" in wanted:
        tiles.append(
            deliveries_tile(
                now=now, health=health["deliveries"], can_repair=can_repair, may_view=may_view
            )
        )
    if "tasks" in wanted:
        tiles.append(tasks_tile(now=now, health=health["tasks"], may_view=may_view))
    return tiles
