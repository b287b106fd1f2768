"""Requesting, claiming, expiring and cancelling sync runs: the page's lease (C6, F12)."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from django.conf import settings
from django.db import connection, transaction
from django.db.models.functions import Now

from conversations import metrics
from conversations.models import (
    SYNC_LIVE_STATUSES,
    FacebookPage,
    SyncMode,
    SyncRun,
    SyncStatus,
)
from evoflow.errors import DomainError
from evoflow.requestid import get_request_id, new_request_id
from evoflow.tasks import enqueue_after_commit

logger = logging.getLogger(__name__)

# The task that executes a requested run (conversations/tasks.py).
SYNC_RUN_TASK = "conversations.tasks.sync_run_task"


class LeaseLost(Exception):
    """The run is no longer this worker's: taken over after its lease expired, or cancelled."""


class SyncRefused(DomainError):
    """The page cannot be synced until it is authorised again (a new access token)."""

    code = "reauthorization_required"
    status = 409


class PageRemoved(SyncRefused):
    """The page was removed by an operator: it is not read from Facebook any more."""

    code = "page_removed"
    status = 409


class SyncRunning(DomainError):
    """A sync of the page is already queued or running; `sync_run_id` names the live run."""

    code = "sync_running"
    status = 409


# -- requesting and claiming a run ---------------------------------------------------------------


def stale_run_condition() -> str:
    """SQL for a live run that lost its lease: running without a heartbeat for
    SYNC_LEASE_SECONDS, or queued and not picked up by any worker for
    SYNC_QUEUED_EXPIRY_SECONDS (a busy queue is not a dead worker). Used by the expiry below
    and by the integrity check on stale runs."""
    lease = int(settings.SYNC_LEASE_SECONDS)
    queued = int(settings.SYNC_QUEUED_EXPIRY_SECONDS)
    return (
        f"((status = 'running' AND heartbeat_at < now() - make_interval(secs => {lease}))"
        f" OR (status = 'queued' AND created_at < now() - make_interval(secs => {queued})))"
    )


_EXPIRE_STALE = """
UPDATE conversations_syncrun SET
    status = 'failed', error_code = 'lease_expired', finished_at = now(), lease_token = NULL,
    error = CASE status
        WHEN 'running' THEN 'no heartbeat for ' || %(lease)s
            || ' s: the worker died or hung; the next run resumes'
        ELSE 'no worker picked the run up within ' || %(queued)s || ' s' END
WHERE (%(page)s::bigint IS NULL OR page_id = %(page)s) AND {condition}
RETURNING id, mode
"""

_INSERT_LIVE = """
INSERT INTO conversations_syncrun (page_id, mode, status, trigger, request_id)
VALUES (%s, %s, 'queued', %s, %s)
ON CONFLICT (page_id) WHERE status IN ('queued', 'running') DO NOTHING
RETURNING id
"""


def sync_request(
    *,
    page: FacebookPage,
    mode: str = SyncMode.INCREMENTAL,
    trigger: str = "api",
    enqueue: bool = True,
) -> tuple[SyncRun, bool]:
    """A new queued run of the page (and its task), or the live run that already holds the
    page's lease: `(run, created)`. A live run whose heartbeat expired is failed first."""
    if mode not in SyncMode.values:
        raise ValueError(f"unknown sync mode {mode!r}")
    if page.removed_at is not None:
        raise PageRemoved(f"page {page.page_id} was removed; restore it in the admin first")
    if page.is_reauthorization_required or not page.has_access_token:
        raise SyncRefused(f"page {page.page_id} needs re-authorisation (a new access token)")
    request_id = get_request_id()
    if request_id == "-":
        request_id = new_request_id()
    for _ in range(3):
        with transaction.atomic():
            sync_runs_expire_stale(page_pk=page.pk)
            with connection.cursor() as cursor:
                cursor.execute(_INSERT_LIVE, [page.pk, mode, trigger, request_id])
                row = cursor.fetchone()
            if row is not None:
                if enqueue:
                    enqueue_after_commit(SYNC_RUN_TASK, row[0])
                return SyncRun.objects.get(pk=row[0]), True
            live = SyncRun.objects.filter(page=page, status__in=SYNC_LIVE_STATUSES).first()
            if live is not None:
                return live, False
        # The live run ended between the insert and the read: try again.
    raise RuntimeError(f"could not obtain the sync lease of page {page.page_id}")


def sync_runs_expire_stale(*, page_pk: int | None = None) -> list[int]:
    """Fail the live runs (of one page, or all) whose heartbeat is older than the lease. One
    statement: a run whose worker beats meanwhile is re-checked under its row lock and keeps
    its lease. Returns the ids of the runs it failed."""
    with connection.cursor() as cursor:
        cursor.execute(
            _EXPIRE_STALE.format(condition=stale_run_condition()),
            {
                "lease": settings.SYNC_LEASE_SECONDS,
                "queued": settings.SYNC_QUEUED_EXPIRY_SECONDS,
                "page": page_pk,
            },
        )
        expired = cursor.fetchall()
    for run_id, mode in expired:
        logger.warning("sync run %s lost its lease (no heartbeat); marked failed", run_id)
        metrics.SYNC_RUNS.labels(mode, SyncStatus.FAILED).inc()
    return [run_id for run_id, _ in expired]


# Pages whose newest finished full run stopped with a cursor to resume from (time budget, a
# page of conversations it could not read, a worker that died): their full chain is unfinished.
# A run an operator cancelled is theirs to restart.
_UNFINISHED_FULL_CHAINS = """
SELECT page_id FROM (
    SELECT DISTINCT ON (page_id) page_id, status, cursor FROM conversations_syncrun
    WHERE mode = 'full' AND status NOT IN ('queued', 'running')
    ORDER BY page_id, id DESC) AS newest_full
WHERE status IN ('partial', 'failed') AND cursor IS NOT NULL
"""


def sync_pages_unfinished_full_chain() -> set[int]:
    """Primary keys of the pages whose full sync chain stopped before its end."""
    with connection.cursor() as cursor:
        cursor.execute(_UNFINISHED_FULL_CHAINS)
        return {row[0] for row in cursor.fetchall()}


def sync_pages_scheduled(*, trigger: str = "schedule") -> int:
    """Request a run of every page with a usable token: incremental, or a full one where the
    page's full chain stopped before its end, which resumes it from its cursor (so a large
    page's soft deletes need no repeated manual full syncs). Pages with a live run keep it.
    Returns how many runs were started."""
    started = 0
    unfinished = sync_pages_unfinished_full_chain()
    pages = FacebookPage.objects.filter(
        is_reauthorization_required=False, removed_at__isnull=True
    ).exclude(access_token_encrypted="")
    for page in pages.order_by("pk").iterator():
        mode = SyncMode.FULL if page.pk in unfinished else SyncMode.INCREMENTAL
        _, created = sync_request(page=page, mode=mode, trigger=trigger)
        if created and mode == SyncMode.FULL:
            logger.info("page %s: the schedule continues its unfinished full sync", page.page_id)
        started += created
    return started


def sync_run_cancel(*, run_id: int) -> bool:
    """Cancel a live run; its worker stops at its next write."""
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE conversations_syncrun SET status = 'cancelled', finished_at = now(),"
            " lease_token = NULL, error_code = 'cancelled', error = 'cancelled by an operator'"
            " WHERE id = %s AND status IN ('queued', 'running') RETURNING mode",
            [run_id],
        )
        row = cursor.fetchone()
    if row is None:
        return False
    # The worker stops at its next write without counting the run: it is counted here.
    metrics.SYNC_RUNS.labels(row[0], SyncStatus.CANCELLED).inc()
    return True


def sync_retry_failed_batches(
    *, page: FacebookPage, trigger: str = "admin"
) -> tuple[SyncRun, bool]:
    """A run that starts with the failed batches of the page's last run (every run does): an
    incremental one, so little else is fetched."""
    return sync_request(page=page, mode=SyncMode.INCREMENTAL, trigger=trigger)


@dataclass
class Claim:
    run: SyncRun
    token: uuid.UUID


@transaction.atomic
def claim_run(run_id: int) -> Claim | None:
    token = uuid.uuid4()
    claimed = SyncRun.objects.filter(pk=run_id, status=SyncStatus.QUEUED).update(
        status=SyncStatus.RUNNING, started_at=Now(), heartbeat_at=Now(), lease_token=token
    )
    if not claimed:
        return None
    run = SyncRun.objects.select_related("page").get(pk=run_id)
    earlier = SyncRun.objects.filter(page_id=run.page_id, pk__lt=run.pk).exclude(
        status__in=SYNC_LIVE_STATUSES
    )
    previous_same_mode = earlier.filter(mode=run.mode).order_by("-pk").first()
    if previous_same_mode is not None and previous_same_mode.cursor is not None:
        run.resumed_from = previous_same_mode
        run.cursor = previous_same_mode.cursor
        run.chain_id = previous_same_mode.chain_id or previous_same_mode.pk
        run.watermark_candidate = previous_same_mode.watermark_candidate
    else:
        run.chain_id = run.pk
    previous = earlier.order_by("-pk").first()
    run.failed_batches = [
        {**batch, "retry": True} for batch in (previous.failed_batches if previous else [])
    ]
    run.save(
        update_fields=[
            "resumed_from",
            "cursor",
            "chain_id",
            "watermark_candidate",
            "failed_batches",
        ]
    )
    return Claim(run, token)
