"""One sync run, executed: the walk, its batches, failures, time budget and end.

It stays one module past the ~500-line mark on purpose: `_Sync` is one run's state machine
(cursor, counters, lease, budget), and its steps read and write that state; the parts with a
seam of their own already live beside it (lease.py, planning.py, prefetch.py).
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models.functions import Now
from django.utils import timezone

from conversations import metrics
from conversations.graph_client import (
    GraphClient,
    GraphError,
    OutOfTime,
    TokenInvalid,
)
from conversations.models import (
    FacebookPage,
    Source,
    SyncMode,
    SyncRun,
    SyncStatus,
)
from conversations.services.ingest import (
    ConversationKey,
    PreparedRows,
    batch_apply,
)
from conversations.services.pages import page_flag_reauthorization
from conversations.services.sync.lease import Claim, LeaseLost, claim_run
from conversations.services.sync.planning import (
    CONVERSATIONS_PER_BATCH,
    Batch,
    BatchPlanning,
)
from conversations.services.sync.prefetch import Prefetcher
from evoflow.requestid import bound_request_id

logger = logging.getLogger(__name__)

# Recorded failures and skips kept on a run (the counters hold the totals).
MAX_RECORDED = 200


# Meta's "invalid parameter": the answer to a cursor it no longer knows (expired, invalidated).
INVALID_PARAMETER_CODE = 100


def _batch_limit(value: Any) -> int:
    """A page size read back from a cursor or a recorded batch (the default when absent)."""
    if isinstance(value, int) and 1 <= value <= CONVERSATIONS_PER_BATCH:
        return value
    return CONVERSATIONS_PER_BATCH


def _is_cursor_rejected(error: GraphError, after: str | None) -> bool:
    return after is not None and error.graph_code == INVALID_PARAMETER_CODE


def sync_run_execute(*, run_id: int, progress: Callable[[SyncRun], None] | None = None) -> SyncRun:
    """Run a queued run to its end in this process (the task, or `manage.py sync_page`)."""
    claim = claim_run(run_id)
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


class _Sync(BatchPlanning):
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
        self.prefetcher = Prefetcher()

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
                # A plain GraphError is a 4xx other than throttling (an unknown object, a
                # missing permission): asking again gets the same answer.
                if attempt < attempts and type(error) is not GraphError:
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
            # again. No need to wait for the WAL flush (set by the batch statement itself, one
            # round trip fewer than a SET LOCAL of its own).
            result, _ = batch_apply(prepared=rows, source=Source.SYNC, asynchronous_commit=True)
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
