"""The conversations tile of the operator dashboard (see `evoflow.dashboard` for the frame):
pages needing re-authorisation, running and last syncs, webhook receipts of the last hour.
Registered by `ConversationsConfig.ready()`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlencode

from conversations import selectors as conversations_selectors
from conversations.models import (
    SYNC_RUN_COUNTERS,
    FacebookPage,
    ReceiptStatus,
    SyncRun,
    SyncStatus,
    WebhookReceipt,
)
from evoflow.dashboard import (
    AreaHealth,
    Figure,
    TileRequest,
    TileSpec,
    ViewPermission,
    change_url,
    changelist_url,
    iso_seconds,
    may_view_everything,
)

RUNNING_SYNCS_SHOWN = 10
LAST_SYNCS_SHOWN = 10
RECEIPTS_WINDOW = timedelta(hours=1)
# Receipts in these statuses are failures of the last hour: the tile shows at least a warning.
RECEIPT_PROBLEM_STATUSES = (ReceiptStatus.FAILED, ReceiptStatus.REJECTED)


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
            label_one="running sync",
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
            is_problem=status in RECEIPT_PROBLEM_STATUSES,
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
            label_one="page needing re-authorisation",
            value=conversations_selectors.pages_needing_reauthorization().count(),
            url=changelist_url(
                "conversations", "facebookpage", is_reauthorization_required__exact=1
            ),
            is_problem=True,
        )
        if sees_pages
        else None,
        syncs=syncs_overview(may_view_pages=sees_pages) if may_view(SyncRun) else None,
        webhook_receipts=webhook_receipt_figures(since=since) if may_view(WebhookReceipt) else None,
        receipts_since=since,
    )


def conversations_tile_build(request: TileRequest) -> ConversationsTile:
    return conversations_tile(now=request.now, health=request.health, may_view=request.may_view)


def tile_spec() -> TileSpec:
    return TileSpec(
        area="conversations",
        order=20,
        models=(FacebookPage, SyncRun, WebhookReceipt),
        build=conversations_tile_build,
    )
