"""Reads of the conversations app."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db import connection
from django.db.models import Count, QuerySet, Window

from conversations.models import (
    Conversation,
    FacebookPage,
    Message,
    ReceiptStatus,
    SyncRun,
    SyncStatus,
    WebhookReceipt,
)
from evoflow.db import counts_by_value


def conversation_list(
    *,
    page_id: str | None = None,
    updated_since: datetime | None = None,
    include_deleted: bool = False,
) -> QuerySet[Conversation]:
    """Conversations, newest-updated first; `page_id` is the Facebook page id."""
    conversations = Conversation.objects.select_related("page")
    if page_id is not None:
        conversations = conversations.filter(page__page_id=page_id)
    if updated_since is not None:
        conversations = conversations.filter(updated_at__gte=updated_since)
    if not include_deleted:
        conversations = conversations.filter(deleted_at__isnull=True)
    return conversations.order_by("-updated_at", "-id")


def conversation_get(*, conversation_id: int) -> Conversation | None:
    return Conversation.objects.select_related("page").filter(pk=conversation_id).first()


def message_list(*, conversation: Conversation) -> QuerySet[Message]:
    """A conversation's messages, newest first."""
    return Message.objects.filter(conversation=conversation).order_by("-sent_at", "-id")


def webhook_receipt_counts() -> dict[str, int]:
    from django.db.models import Count

    return {
        row["status"]: row["total"]
        for row in WebhookReceipt.objects.values("status").annotate(total=Count("id"))
    }


def pages_needing_reauthorization() -> QuerySet[FacebookPage]:
    return FacebookPage.objects.filter(is_reauthorization_required=True)


def sync_runs_running(*, limit: int) -> tuple[list[SyncRun], int]:
    """Up to `limit` running sync runs (newest first, with their page) and how many run in all.

    One query: the total is a window count over the same rows, computed before the LIMIT.
    """
    runs = (
        SyncRun.objects.filter(status=SyncStatus.RUNNING)
        .select_related("page")
        .annotate(running_total=Window(Count("id")))
        .order_by("-created_at", "-id")[:limit]
    )
    shown: list[SyncRun] = list(runs)
    total = int(getattr(shown[0], "running_total", 0)) if shown else 0
    return shown, total


@dataclass(frozen=True)
class PageLastSync:
    page_pk: int
    page_id: str
    page_name: str
    run_id: int
    mode: str
    status: str
    created_at: datetime
    finished_at: datetime | None


def sync_runs_latest_per_page(*, limit: int) -> tuple[list[PageLastSync], int]:
    """The newest sync run of each page, for the `limit` pages synced most recently, and how
    many pages have a run at all.

    One query: a lateral join takes each page's newest run from the (page, -created_at) index,
    one index probe per page, so the cost follows the number of pages, not of runs.
    """
    sql = f"""
        SELECT page.id, page.page_id, page.name, run.id, run.mode, run.status,
               run.created_at, run.finished_at, count(*) OVER ()
        FROM {FacebookPage._meta.db_table} AS page
        CROSS JOIN LATERAL (
            SELECT id, mode, status, created_at, finished_at
            FROM {SyncRun._meta.db_table}
            WHERE page_id = page.id
            ORDER BY created_at DESC, id DESC
            LIMIT 1
        ) AS run
        ORDER BY run.created_at DESC, run.id DESC
        LIMIT %s
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, [limit])
        rows = cursor.fetchall()
    pages = [PageLastSync(*row[:8]) for row in rows]
    return pages, int(rows[0][8]) if rows else 0


def webhook_receipt_counts_since(*, since: datetime) -> dict[str, int]:
    """Receipts per status received at or after `since`, every status listed (zeros too)."""
    return counts_by_value(
        WebhookReceipt.objects.filter(received_at__gte=since), "status", ReceiptStatus.values
    )


@dataclass(frozen=True)
class PageSyncHealth:
    page_id: str  # the Facebook page id
    last_success_at: datetime | None
    unsuccessful_since_success: int  # runs ended partial or failed since (cancelled left out)


_PAGE_SYNC_HEALTH = """
SELECT p.page_id, success.finished_at,
       (SELECT count(*) FROM conversations_syncrun AS r
        WHERE r.page_id = p.id AND r.status IN ('partial', 'failed')
          AND r.created_at > COALESCE(success.created_at, '-infinity'))
FROM conversations_facebookpage AS p
LEFT JOIN LATERAL (
    SELECT r.created_at, r.finished_at FROM conversations_syncrun AS r
    WHERE r.page_id = p.id AND r.status = 'succeeded'
    ORDER BY r.created_at DESC LIMIT 1) AS success ON true
WHERE p.removed_at IS NULL
ORDER BY p.page_id
"""


def sync_page_health() -> list[PageSyncHealth]:
    """Each page in use: its last successful sync and the failing streak since (the figures of
    the `conversations.sync_failing` check, per page). Per page, the newest success comes from
    the (page, created_at) index, and only the runs after it are counted."""
    with connection.cursor() as cursor:
        cursor.execute(_PAGE_SYNC_HEALTH)
        return [PageSyncHealth(*row) for row in cursor.fetchall()]


def sync_runs_live_counts() -> dict[str, int]:
    """Queued and running sync runs, by status (the partial unique index's rows)."""
    counts = dict(
        SyncRun.objects.filter(status__in=[SyncStatus.QUEUED, SyncStatus.RUNNING])
        .values_list("status")
        .annotate(n=Count("id"))
        .values_list("status", "n")
    )
    return {str(status): int(counts.get(status, 0)) for status in ("queued", "running")}
