"""Full and incremental sync of a page from the Graph API (C4-C6, C8; F2-F13, F20-F22).

The lease (C6, F12). A run is a row; the queued or running one holds its page's lease through a
partial unique index, so a second request finds the live run instead of starting another.
The worker that claims a run stamps it with a lease token; every write of the run (each batch,
each heartbeat) checks that token and the `running` status in the same statement, so a worker
whose lease was taken over (or whose run was cancelled) stops at its next write, and its batch
rolls back. A run whose heartbeat is older than `SYNC_LEASE_SECONDS` loses the lease to the next
request.

A batch is one page of conversations (`limit` 100) of one folder, with the messages of each
(nested in the same call: newest 100; older ones through the messages edge, F8). It is written
in ONE transaction (C5, F3) by the set-based `batch_apply` the webhook uses too: messages and
their events `ON CONFLICT DO NOTHING` (F10), conversations upserted on their one conflict target
with new-versus-existing read from the statement (F5), `last_message*` moved only forward by
the database (C4, F1), and the run's cursor, counters and heartbeat updated in the same
transaction, so the saved cursor always matches what is stored (F11).

Failures (F13). A batch that fails is retried with backoff; if it still fails it is recorded on
the run and the walk goes on; the run ends `partial` and the next run of the page retries the
recorded batches first (a full run's batch in full, marked as seen by its chain, even when an
incremental run retries it). A page of conversations that cannot be read at all stops the walk
with its cursor saved. A run that reaches its time budget stops as `partial` with its cursor; the
next run in the same mode resumes there (`resumed_from`, the same `chain_id`); when not one batch
fit in the budget, the cursor also asks for pages a quarter the size, for the rest of the chain,
so that a chain of long threads still progresses. A cursor the API rejects (error 100: expired
or unknown) is never resumed again: the walk starts from the top instead (a recorded batch of
the same mode with such a cursor is dropped, the walk covering it). Error 190 flags the page for
re-authorisation and fails the run at once; a run that cannot start at all (a token the key
cannot decrypt) fails at once too, freeing the lease.

Incremental (F2). The walk goes newest-updated first and stops at the first conversation older
than the watermark minus `SYNC_INCREMENTAL_OVERLAP_SECONDS`; a conversation's messages are read
newest first until the first mid already stored, unless the stored messages and the new ones
fall short of the conversation's `message_count` (a gap: the webhook got ahead of the history,
or a webhook was lost), when the read goes on past stored mids. Graph calls grow with the
changed conversations, not with the page. The watermark moves only when a run succeeds.

Soft deletes (C8, F20). A full sync marks every conversation it sees with its chain id; when the
chain completes (the whole walk, no failed batch), the page's live conversations it did not see,
older than the chain and without a message since it started, are soft-deleted.
"""

from __future__ import annotations

import functools
import logging
import random
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models.functions import Now
from django.utils import timezone

from conversations import metrics
from conversations.graph import (
    ConversationPage,
    GraphClient,
    GraphConversation,
    GraphError,
    GraphMessage,
    MessagePage,
    OutOfTime,
    TokenInvalid,
)
from conversations.models import (
    SYNC_LIVE_STATUSES,
    Direction,
    FacebookPage,
    Source,
    SyncMode,
    SyncRun,
    SyncStatus,
)
from conversations.services.ingest import (
    ConversationKey,
    IncomingMessage,
    PreparedRows,
    batch_apply,
    batch_prepare,
)
from conversations.services.pages import page_flag_reauthorization
from evoflow.requestid import bound_request_id, get_request_id, new_request_id
from evoflow.tasks import enqueue_after_commit

logger = logging.getLogger(__name__)

CONVERSATIONS_PER_BATCH = 100
MESSAGES_PER_CALL = 100
# Recorded failures and skips kept on a run (the counters hold the totals).
MAX_RECORDED = 200
PSID_MAX_LENGTH = 64


# Meta's "invalid parameter": the answer to a cursor it no longer knows (expired, invalidated).
INVALID_PARAMETER_CODE = 100


def _batch_limit(value: Any) -> int:
    """A page size read back from a cursor or a recorded batch (the default when absent)."""
    if isinstance(value, int) and 1 <= value <= CONVERSATIONS_PER_BATCH:
        return value
    return CONVERSATIONS_PER_BATCH


def _is_cursor_rejected(error: GraphError, after: str | None) -> bool:
    return after is not None and error.graph_code == INVALID_PARAMETER_CODE


class LeaseLost(Exception):
    """The run is no longer this worker's: taken over after its lease expired, or cancelled."""


class SyncRefused(Exception):
    code = "sync_refused"


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
                    enqueue_after_commit(sync_run_task_path(), row[0])
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


def sync_pages_incremental(*, trigger: str = "schedule") -> int:
    """Request an incremental run of every page with a usable token; pages with a live run
    keep it. Returns how many runs were started."""
    started = 0
    pages = FacebookPage.objects.filter(is_reauthorization_required=False).exclude(
        access_token_encrypted=""
    )
    for page in pages.order_by("pk").iterator():
        _, created = sync_request(page=page, mode=SyncMode.INCREMENTAL, trigger=trigger)
        started += created
    return started


def sync_run_task_path() -> str:
    return "conversations.tasks.sync_run_task"


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
def _claim(run_id: int) -> Claim | None:
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


def sync_run_execute(*, run_id: int, progress: Callable[[SyncRun], None] | None = None) -> SyncRun:
    """Run a queued run to its end in this process (the task, or `manage.py sync_page`)."""
    claim = _claim(run_id)
    if claim is None:
        run = SyncRun.objects.get(pk=run_id)
        logger.info("sync run %s is %s: nothing to do", run_id, run.status)
        return run
    with bound_request_id(claim.run.request_id or None):
        metrics.SYNC_RUNNING.inc()
        try:
            try:
                sync = _Sync(claim, progress)
            except Exception as error:
                # It cannot even start (a token the current key cannot decrypt, ...): it must
                # not keep the page's lease until its heartbeat expires.
                logger.exception("sync run %s could not start", run_id)
                _fail_unstarted(claim, f"{type(error).__name__}: {error}")
            else:
                sync.execute()
        finally:
            metrics.SYNC_RUNNING.dec()
    return SyncRun.objects.get(pk=run_id)


def _fail_unstarted(claim: Claim, detail: str) -> None:
    failed = SyncRun.objects.filter(
        pk=claim.run.pk, lease_token=claim.token, status=SyncStatus.RUNNING
    ).update(
        status=SyncStatus.FAILED,
        finished_at=Now(),
        lease_token=None,
        error_code="internal_error",
        error=f"the run could not start: {detail}"[:2000],
    )
    if failed:
        metrics.SYNC_RUNS.labels(claim.run.mode, SyncStatus.FAILED).inc()


# -- the run -------------------------------------------------------------------------------------


@dataclass
class Totals:
    api_calls: int = 0
    throttled_waits: int = 0
    conversations_seen: int = 0
    conversations_inserted: int = 0
    conversations_updated: int = 0
    conversations_soft_deleted: int = 0
    conversations_skipped: int = 0
    messages_inserted: int = 0
    events_inserted: int = 0
    batches_succeeded: int = 0


def _close_connection() -> None:
    connection.close()


def _with_request_id(request_id: str, call: Callable[[], Any]) -> Any:
    with bound_request_id(request_id):
        return call()


class _Prefetcher:
    """One page of conversations fetched ahead in a thread, so that a full sync reads the next
    page from the Graph API while PostgreSQL writes the current one. The thread has its own
    database connection (the rate limiter and heartbeats use it), closed with the prefetcher."""

    def __init__(self) -> None:
        self.executor: ThreadPoolExecutor | None = None
        self.pending: tuple[str, str, Future[Any]] | None = None

    def start(self, folder: str, after: str, fetch: Callable[[], Any]) -> None:
        self.discard()
        if self.executor is None:
            self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sync-prefetch")
        # The run's request id for the thread's log lines. (Not a copy of the whole context:
        # Django keeps connections in context-local storage, and the thread needs its own.)
        self.pending = (
            folder,
            after,
            self.executor.submit(_with_request_id, get_request_id(), fetch),
        )

    def take(self, folder: str, after: str | None) -> Future[Any] | None:
        if self.pending is not None and self.pending[:2] == (folder, after):
            future = self.pending[2]
            self.pending = None
            return future
        self.discard()
        return None

    def discard(self) -> None:
        if self.pending is not None:
            _, _, future = self.pending
            self.pending = None
            try:
                future.result()
            except BaseException:  # a fetch nobody will use: its failure does not matter
                logger.debug("discarded prefetch failed", exc_info=True)

    def close(self) -> None:
        self.discard()
        if self.executor is not None:
            self.executor.submit(_close_connection).result()  # the thread's own
            self.executor.shutdown(wait=True)
            self.executor = None


@dataclass
class Batch:
    """What one page of conversations turned into, ready to be written."""

    keys: list[ConversationKey] = field(default_factory=list)
    messages: list[IncomingMessage] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    newest_update: datetime | None = None
    reached_watermark: bool = False


class _Sync:
    def __init__(self, claim: Claim, progress: Callable[[SyncRun], None] | None) -> None:
        self.run = claim.run
        self.token = claim.token
        self.page = self.run.page
        self.progress = progress
        self.full = self.run.mode == SyncMode.FULL
        # How the batch at hand is read and marked: as the run's mode says, except a recorded
        # batch of a full run retried by an incremental one (`_retry_recorded_batches`).
        self.batch_full = self.full
        self.batch_chain: int | None = self.run.chain_id if self.full else None
        # Set when a recorded batch's cursor was rejected: the walk then starts from the top.
        self.restart_walk = False
        self.deadline = time.monotonic() + settings.SYNC_TIME_BUDGET_SECONDS
        self.client = GraphClient(
            page_id=self.page.page_id,
            access_token=self.page.access_token(),
            sleep=self._sleep,
            deadline=self.deadline,
        )
        self.totals = Totals()
        self.pending_retries: list[dict[str, Any]] = list(self.run.failed_batches)
        self.failed: list[dict[str, Any]] = []
        self.skipped: list[dict[str, str]] = []
        self.cursor: dict[str, Any] | None = self.run.cursor
        # Conversations per listing call: fewer after a run ran out of time inside its first
        # batch (kept in the cursor for the rest of the chain), so that the chain progresses.
        self.batch_limit = _batch_limit((self.cursor or {}).get("limit"))
        self.watermark_candidate = self.run.watermark_candidate
        self.threshold = self._threshold()
        self.last_beat = time.monotonic()
        self.prefetcher = _Prefetcher()

    def _threshold(self) -> datetime | None:
        """Incremental walks stop at conversations updated before this."""
        if self.full or self.page.sync_watermark is None:
            return None
        return self.page.sync_watermark - timedelta(
            seconds=settings.SYNC_INCREMENTAL_OVERLAP_SECONDS
        )

    # -- the run's outline -------------------------------------------------------------------

    def execute(self) -> None:
        logger.info(
            "sync run %s of page %s started (%s%s)",
            self.run.pk,
            self.page.page_id,
            self.run.mode,
            f", resuming run {self.run.resumed_from_id}" if self.run.resumed_from_id else "",
        )
        try:
            try:
                self._retry_recorded_batches()
                walk_complete = self._walk()
            finally:
                self.prefetcher.close()
        except LeaseLost:
            logger.warning("sync run %s stopped: it no longer holds the lease", self.run.pk)
            return
        except TokenInvalid as error:
            page_flag_reauthorization(page=self.page, reason=error.detail)
            self._finish(SyncStatus.FAILED, error.code, error.detail)
            return
        except OutOfTime as error:
            if self.totals.batches_succeeded == 0 and self.batch_limit > 1:
                # Not one batch fit in the budget: the next run would fail the same way for
                # ever. It reads smaller pages of conversations from the same place instead.
                folders = list(settings.SYNC_FOLDERS)
                self.cursor = {
                    **(self.cursor or {"folder": folders[0], "after": None}),
                    "limit": max(1, self.batch_limit // 4),
                }
            self._finish(SyncStatus.PARTIAL, "time_budget", str(error))
            return
        except GraphError as error:
            # A page of conversations that could not be read: the walk cannot go past it.
            self._finish(SyncStatus.PARTIAL, error.code, error.detail)
            return
        except Exception as error:
            logger.exception("sync run %s failed", self.run.pk)
            self._finish(SyncStatus.FAILED, "internal_error", f"{type(error).__name__}: {error}")
            return
        if not walk_complete:
            self._finish(
                SyncStatus.PARTIAL,
                "time_budget",
                "the run reached its time budget; the next run resumes from its cursor",
            )
        elif self.failed:
            self._finish(
                SyncStatus.PARTIAL,
                "failed_batches",
                f"{len(self.failed)} batch(es) failed; the next run retries them first",
            )
        else:
            self._complete()

    def _walk(self) -> bool:
        """Walk the folders from the cursor; False when the time budget ran out first."""
        folders = list(settings.SYNC_FOLDERS)
        position = 0
        after: str | None = None
        restarted = self.restart_walk
        if not restarted and self.cursor is not None and self.cursor.get("folder") in folders:
            position = folders.index(self.cursor["folder"])
            after = self.cursor.get("after")
        while position < len(folders):
            if time.monotonic() >= self.deadline:
                return False
            try:
                next_after, reached_watermark = self._batch_with_retries(folders[position], after)
            except GraphError as error:
                if restarted or not _is_cursor_rejected(error, after):
                    raise
                # The saved cursor expired (or Meta forgot it): resuming there can never work,
                # so this walk starts again from the top, once.
                logger.warning(
                    "sync run %s: the Graph API rejected the cursor (%s); walking from the top",
                    self.run.pk,
                    error.detail,
                )
                restarted = True
                position, after = 0, None
                continue
            if next_after is None or reached_watermark:
                position, after = position + 1, None
            else:
                after = next_after
        return True

    # -- batches -----------------------------------------------------------------------------

    def _next_cursor(self, folder: str, next_after: str | None) -> dict[str, Any] | None:
        limit = {} if self.batch_limit == CONVERSATIONS_PER_BATCH else {"limit": self.batch_limit}
        if next_after is not None:
            return {"folder": folder, "after": next_after, **limit}
        folders = list(settings.SYNC_FOLDERS)
        position = folders.index(folder) + 1 if folder in folders else len(folders)
        if position < len(folders):
            return {"folder": folders[position], "after": None, **limit}
        return None

    def _batch_with_retries(
        self, folder: str, after: str | None, *, retrying: bool = False, limit: int | None = None
    ) -> tuple[str | None, bool]:
        """One batch with its retries: (the next page's cursor, whether the walk reached the
        watermark). A batch that keeps failing is recorded and skipped. When the page of
        conversations itself could never be read, the walk does not know where to go on: the
        error goes up and the run stops with its cursor on this page (a recorded batch being
        retried is recorded again instead)."""
        attempts = max(1, settings.SYNC_BATCH_ATTEMPTS)
        known_next: tuple[str | None, bool] | None = None
        prefetched = None if retrying else self.prefetcher.take(folder, after)
        for attempt in range(1, attempts + 1):
            try:
                if prefetched is not None:
                    listing, planned = prefetched.result()
                    prefetched = None
                    known_next = (listing.next_after, False)
                    if isinstance(planned, BaseException):
                        raise planned
                    batch, rows = planned
                else:
                    listing = self._listing(folder, after, limit)
                    known_next = (listing.next_after, False)
                    batch, rows = self._planned(listing)
                known_next = (listing.next_after, batch.reached_watermark)
                if self.full and not retrying and listing.next_after is not None:
                    # The next page is fetched and planned while this one is written.
                    next_after = listing.next_after
                    self.prefetcher.start(
                        folder, next_after, functools.partial(self._ahead, folder, next_after)
                    )
                if retrying:
                    cursor = self.cursor
                else:
                    cursor = self._next_cursor(
                        folder, None if batch.reached_watermark else listing.next_after
                    )
                self._write(batch, cursor, rows)
                return known_next
            except (TokenInvalid, OutOfTime, LeaseLost):
                raise
            except (GraphError, DatabaseError) as error:
                code = error.code if isinstance(error, GraphError) else "database_error"
                detail = error.detail if isinstance(error, GraphError) else str(error)[:500]
                logger.warning(
                    "sync run %s: batch %s/%s failed (attempt %d of %d): %s %s",
                    self.run.pk,
                    folder,
                    after or "start",
                    attempt,
                    attempts,
                    code,
                    detail,
                )
                if attempt < attempts:
                    self._sleep(random.uniform(0, min(30.0, 2.0**attempt)))
                    continue
                if known_next is None and not retrying:
                    raise
                if (
                    retrying
                    and isinstance(error, GraphError)
                    and _is_cursor_rejected(error, after)
                    and self.batch_full == self.full
                ):
                    # A recorded batch whose cursor is dead can never be read again; a walk
                    # from the top in the same mode reads its conversations instead.
                    logger.warning(
                        "sync run %s: recorded batch %s/%s dropped (cursor rejected); the walk"
                        " starts from the top",
                        self.run.pk,
                        folder,
                        after,
                    )
                    self.restart_walk = True
                    return (None, False)
                self._record_failure(
                    folder, after, code, detail, attempts, limit or self.batch_limit
                )
                if not retrying and known_next is not None:
                    self._advance_past_failure(folder, known_next)
                else:
                    self._save_progress()
                return known_next or (None, False)
        raise AssertionError("unreachable")

    def _planned(self, listing: ConversationPage) -> tuple[Batch, PreparedRows]:
        batch = self._plan(listing)
        return batch, batch_prepare(conversations=batch.keys, messages=batch.messages)

    def _ahead(
        self, folder: str, after: str
    ) -> tuple[ConversationPage, tuple[Batch, PreparedRows] | Exception]:
        """The next batch, read and made ready in the prefetching thread. A failure to plan it
        (its older messages, say) travels with the listing, so that the walk still knows where
        to go on if the batch keeps failing."""
        listing = self._listing(folder, after)
        try:
            return listing, self._planned(listing)
        except (GraphError, DatabaseError) as error:
            return listing, error

    def _listing(
        self, folder: str, after: str | None, limit: int | None = None
    ) -> ConversationPage:
        listing: ConversationPage = self.client_call(
            "conversations",
            lambda: self.client.conversations(
                folder=folder,
                after=after,
                limit=limit or self.batch_limit,
                message_limit=MESSAGES_PER_CALL,
            ),
        )
        return listing

    def client_call(self, edge: str, call: Callable[[], Any]) -> Any:
        before_waits = self.client.throttled_waits
        try:
            result = call()
        except GraphError as error:
            metrics.GRAPH_CALLS.labels(edge, error.code).inc()
            raise
        finally:
            metrics.GRAPH_THROTTLED_WAITS.inc(self.client.throttled_waits - before_waits)
        metrics.GRAPH_CALLS.labels(edge, "ok").inc()
        self._maybe_beat()
        return result

    def _plan(self, listing: ConversationPage) -> Batch:
        batch = Batch()
        threads: list[tuple[GraphConversation, str]] = []
        threshold = None if self.batch_full else self.threshold
        for conversation in listing.data:
            if threshold is not None and conversation.updated_time < threshold:
                batch.reached_watermark = True
                break
            if batch.newest_update is None or conversation.updated_time > batch.newest_update:
                batch.newest_update = conversation.updated_time
            participant = self._participant(conversation)
            if isinstance(participant, str):
                batch.skipped.append({"thread_id": conversation.id, "reason": participant})
                continue
            psid, name = participant
            batch.keys.append(
                ConversationKey(
                    page_pk=self.page.pk,
                    psid=psid,
                    participant_name=name[:255],
                    thread_id=conversation.id[:128],
                    full_sync_seen=self.batch_chain,
                )
            )
            threads.append((conversation, psid))
        stored: set[str] = set()
        counts: dict[str, int] = {}
        if not self.batch_full:  # which of the newest messages are stored already: two queries
            stored = self._stored_mids(
                [
                    message.id
                    for conversation, _ in threads
                    if conversation.messages is not None
                    for message in conversation.messages.data
                ]
            )
            counts = self._stored_counts([psid for _, psid in threads])
        for conversation, psid in threads:
            batch.messages.extend(
                self._incoming(psid, message)
                for message in self._messages_of(conversation, stored, counts.get(psid, 0))
            )
        return batch

    def _messages_of(
        self, conversation: GraphConversation, stored: set[str], stored_count: int = 0
    ) -> list[GraphMessage]:
        """Every message (full), or the messages not stored yet (incremental: newest first,
        the walk over the messages edge stops at the first mid already stored, unless the
        stored messages and the new ones still fall short of the conversation's
        `message_count`: then the stored history has a gap (the webhook stored a conversation's
        newest messages before any sync read its history, or a webhook was lost) and the walk
        goes on past stored mids). `stored` holds the stored mids among the nested first
        page's; `stored_count` is how many messages of the conversation are stored."""
        page = conversation.messages
        if page is None:
            return []
        expected = conversation.message_count
        messages: list[GraphMessage] = []
        first = True
        while True:
            if self.batch_full:
                messages.extend(page.data)
            else:
                if not first:
                    stored = self._stored_mids([message.id for message in page.data])
                first = False
                for message in page.data:
                    if message.id not in stored:
                        messages.append(message)
                    elif expected is None or stored_count + len(messages) >= expected:
                        return messages
            next_after = page.next_after
            if next_after is None:
                return messages
            page = self._older_messages(conversation.id, next_after)

    def _older_messages(self, thread_id: str, after: str) -> MessagePage:
        page: MessagePage = self.client_call(
            "messages",
            lambda: self.client.messages(thread_id=thread_id, after=after, limit=MESSAGES_PER_CALL),
        )
        return page

    def _stored_mids(self, mids: Sequence[str]) -> set[str]:
        if not mids:
            return set()
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT mid FROM conversations_message WHERE page_id = %s AND mid = ANY(%s)",
                [self.page.pk, list(mids)],
            )
            return {row[0] for row in cursor.fetchall()}

    def _stored_counts(self, psids: Sequence[str]) -> dict[str, int]:
        if not psids:
            return {}
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT psid, message_count FROM conversations_conversation"
                " WHERE page_id = %s AND psid = ANY(%s)",
                [self.page.pk, list(psids)],
            )
            return dict(cursor.fetchall())

    def _participant(self, conversation: GraphConversation) -> tuple[str, str] | str:
        """The person of a thread (F7): (psid, name), or why the thread is skipped."""
        others = [p for p in conversation.participants.data if p.id != self.page.page_id]
        if not others:
            return "no participant besides the page"
        if len(others) > 1:
            return "more than one participant besides the page"
        person = others[0]
        if not person.id:
            return "participant without an id (deleted account)"
        if not person.id.isdigit() or len(person.id) > PSID_MAX_LENGTH:
            return "participant id is not a page-scoped id"
        return person.id, person.name

    def _incoming(self, psid: str, message: GraphMessage) -> IncomingMessage:
        outbound = message.sender.id == self.page.page_id
        return IncomingMessage(
            page_pk=self.page.pk,
            psid=psid,
            mid=message.id,
            direction=Direction.OUTBOUND if outbound else Direction.INBOUND,
            sent_at=message.created_time,
            text=message.message,
            attachments=message.attachments.data if message.attachments else [],
            is_echo=outbound,
            reply_to_mid=message.reply_to.mid if message.reply_to else "",
        )

    def _write(self, batch: Batch, cursor: dict[str, Any] | None, rows: PreparedRows) -> None:
        """The batch, the run's cursor and counters, and its heartbeat: one transaction."""
        totals = Totals(**asdict(self.totals))
        watermark = self.watermark_candidate
        if batch.newest_update is not None and (
            watermark is None or batch.newest_update > watermark
        ):
            watermark = batch.newest_update
        with transaction.atomic():
            # The batch and its cursor commit together: a crash that loses the last commits
            # (a fraction of a second of them) loses both, and the next run fetches the batch
            # again. No need to wait for the WAL flush.
            with connection.cursor() as cursor_:
                cursor_.execute("SET LOCAL synchronous_commit = off")
            result, _ = batch_apply(prepared=rows, source=Source.SYNC)
            if batch.keys:
                self._undelete(batch.keys)
            if batch.skipped and self.batch_chain is not None:
                self._mark_skipped_seen(batch.skipped, self.batch_chain)
            totals.conversations_seen += len(batch.keys)
            totals.conversations_inserted += result.conversations_created
            totals.conversations_updated += result.conversations_updated
            totals.conversations_skipped += len(batch.skipped)
            totals.messages_inserted += result.messages_inserted
            totals.events_inserted += result.message_events_inserted + result.events_inserted
            totals.batches_succeeded += 1
            skipped = (self.skipped + batch.skipped)[:MAX_RECORDED]
            self._save(totals=totals, cursor=cursor, watermark=watermark, skipped=skipped)
        self.totals, self.cursor, self.watermark_candidate = totals, cursor, watermark
        self.skipped = skipped
        metrics.MESSAGES_INGESTED.labels(Source.SYNC).inc(result.messages_inserted)
        if self.progress is not None:
            self.progress(self._snapshot())

    def _mark_skipped_seen(self, skipped: Sequence[dict[str, str]], chain: int) -> None:
        """A thread skipped for its participants (F7) is still on Facebook: a conversation
        stored for it (by an earlier sync or the webhook) must not be soft-deleted."""
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE conversations_conversation SET full_sync_seen = %s"
                " WHERE page_id = %s AND thread_id = ANY(%s)"
                " AND full_sync_seen IS DISTINCT FROM %s",
                [chain, self.page.pk, [item["thread_id"] for item in skipped], chain],
            )

    def _undelete(self, keys: Sequence[ConversationKey]) -> None:
        """A conversation the API returns is not gone (any more)."""
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE conversations_conversation SET deleted_at = NULL"
                " WHERE page_id = %s AND psid = ANY(%s) AND deleted_at IS NOT NULL",
                [self.page.pk, [key.psid for key in keys]],
            )

    def _record_failure(
        self, folder: str, after: str | None, code: str, detail: str, attempts: int, limit: int
    ) -> None:
        self.failed.append(
            {
                "kind": "conversations",
                "mode": SyncMode.FULL if self.batch_full else SyncMode.INCREMENTAL,
                # The full sync chain the batch belongs to: whichever run retries it marks its
                # conversations as seen by that chain, which may be resumed and complete later.
                "chain_id": self.batch_chain,
                "folder": folder,
                "after": after,
                "limit": limit,
                "error_code": code,
                "detail": detail[:500],
                "attempts": attempts,
                "at": timezone.now().isoformat(),
            }
        )

    def _advance_past_failure(self, folder: str, known_next: tuple[str | None, bool]) -> None:
        next_after, reached_watermark = known_next
        self.cursor = self._next_cursor(folder, None if reached_watermark else next_after)
        self._save_progress()

    def _save_progress(self) -> None:
        self._save(
            totals=self.totals,
            cursor=self.cursor,
            watermark=self.watermark_candidate,
            skipped=self.skipped,
        )

    def _retry_recorded_batches(self) -> None:
        """The failed batches of the page's previous run, before anything else. Each stays in
        the run's saved list until it is written, or recorded again."""
        if self.pending_retries:
            logger.info(
                "sync run %s retries %d failed batch(es) first",
                self.run.pk,
                len(self.pending_retries),
            )
        while self.pending_retries:
            record = self.pending_retries.pop(0)
            folder, after = str(record.get("folder") or "inbox"), record.get("after")
            # A batch a full run recorded is read in full (no watermark cut, every message) and
            # marked as seen by its chain, even by an incremental run (the admin's "retry
            # failed batches"): else a later run resuming that chain would complete it without
            # having seen these conversations, and soft-delete them.
            if not self.full and record.get("mode") == SyncMode.FULL:
                chain = record.get("chain_id")
                self.batch_full = True
                self.batch_chain = chain if isinstance(chain, int) else None
            try:
                self._batch_with_retries(
                    folder, after, retrying=True, limit=_batch_limit(record.get("limit"))
                )
            except BaseException:
                self.pending_retries.insert(0, record)
                raise
            finally:
                self.batch_full = self.full
                self.batch_chain = self.run.chain_id if self.full else None

    # -- the run's row -----------------------------------------------------------------------

    def _save(
        self,
        *,
        totals: Totals,
        cursor: dict[str, Any] | None,
        watermark: datetime | None,
        skipped: list[dict[str, str]],
        **extra: Any,
    ) -> None:
        # Calls are counted by the client (the prefetching thread calls too).
        totals.api_calls, totals.throttled_waits = self.client.calls, self.client.throttled_waits
        updated = SyncRun.objects.filter(
            pk=self.run.pk, lease_token=self.token, status=SyncStatus.RUNNING
        ).update(
            heartbeat_at=Now(),
            cursor=cursor,
            watermark_candidate=watermark,
            failed_batches=(self.failed + self.pending_retries)[:MAX_RECORDED],
            skipped=skipped,
            **asdict(totals),
            **extra,
        )
        if not updated:
            raise LeaseLost(self.run.pk)
        self.last_beat = time.monotonic()

    def _beat(self) -> None:
        updated = SyncRun.objects.filter(
            pk=self.run.pk, lease_token=self.token, status=SyncStatus.RUNNING
        ).update(
            heartbeat_at=Now(),
            api_calls=self.client.calls,
            throttled_waits=self.client.throttled_waits,
        )
        if not updated:
            raise LeaseLost(self.run.pk)
        self.last_beat = time.monotonic()

    def _maybe_beat(self) -> None:
        if time.monotonic() - self.last_beat >= settings.SYNC_LEASE_SECONDS / 6:
            self._beat()

    def _sleep(self, seconds: float) -> None:
        """Waits (rate limit, throttling, backoff) in slices, beating between them."""
        end = time.monotonic() + seconds
        while (remaining := end - time.monotonic()) > 0:
            time.sleep(min(remaining, max(0.5, settings.SYNC_LEASE_SECONDS / 6)))
            self._maybe_beat()

    def _snapshot(self) -> SyncRun:
        self.run.__dict__.update(asdict(self.totals))
        self.run.cursor = self.cursor
        return self.run

    def _complete(self) -> None:
        """The whole walk, no failed batch: soft deletes (full), the watermark and success,
        together (a run that lost its lease meanwhile changes none of them)."""
        try:
            with transaction.atomic():
                if self.full:
                    self.totals.conversations_soft_deleted = self._soft_delete_unseen()
                if self.watermark_candidate is not None:
                    FacebookPage.objects.filter(pk=self.page.pk).update(
                        sync_watermark=self.watermark_candidate
                    )
                self._finish(SyncStatus.SUCCEEDED, "", "", lease_lost_raises=True)
        except LeaseLost:
            logger.warning("sync run %s lost its lease before completing", self.run.pk)

    def _soft_delete_unseen(self) -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                """
                UPDATE conversations_conversation AS c SET deleted_at = now()
                FROM conversations_syncrun AS chain
                WHERE chain.id = %s AND c.page_id = %s AND c.deleted_at IS NULL
                  AND c.full_sync_seen IS DISTINCT FROM chain.id
                  AND c.created_at < chain.started_at
                  AND (c.last_message_at IS NULL OR c.last_message_at < chain.started_at)
                """,
                [self.run.chain_id, self.page.pk],
            )
            return cursor.rowcount

    def _finish(
        self, status: str, error_code: str, error: str, *, lease_lost_raises: bool = False
    ) -> None:
        cursor = None if status == SyncStatus.SUCCEEDED else self.cursor
        try:
            self._save(
                totals=self.totals,
                cursor=cursor,
                watermark=self.watermark_candidate,
                skipped=self.skipped,
                status=status,
                finished_at=Now(),
                lease_token=None,
                error_code=error_code,
                error=error[:2000],
            )
        except LeaseLost:
            if lease_lost_raises:
                raise
            logger.warning("sync run %s ended after losing its lease", self.run.pk)
            return
        metrics.SYNC_RUNS.labels(self.run.mode, status).inc()
        log = logger.info if status == SyncStatus.SUCCEEDED else logger.warning
        log(
            "sync run %s of page %s ended %s%s: %d calls, %d conversations, %d messages inserted",
            self.run.pk,
            self.page.page_id,
            status,
            f" ({error_code}: {error})" if error_code else "",
            self.totals.api_calls,
            self.totals.conversations_seen,
            self.totals.messages_inserted,
        )
        if self.progress is not None:
            self.run.status = status
            self.progress(self._snapshot())
