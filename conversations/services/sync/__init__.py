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
older than the chain and without a message since it started, are soft-deleted. The schedule
continues a full chain that stopped before its end (a full run instead of an incremental one),
so a large page's chain completes without an operator.
"""

from conversations.services.sync.engine import sync_run_execute
from conversations.services.sync.lease import (
    SYNC_RUN_TASK,
    LeaseLost,
    PageRemoved,
    SyncRefused,
    SyncRunning,
    stale_run_condition,
    sync_pages_scheduled,
    sync_pages_unfinished_full_chain,
    sync_request,
    sync_retry_failed_batches,
    sync_run_cancel,
    sync_runs_expire_stale,
)

__all__ = [
    "SYNC_RUN_TASK",
    "LeaseLost",
    "PageRemoved",
    "SyncRefused",
    "SyncRunning",
    "stale_run_condition",
    "sync_pages_scheduled",
    "sync_pages_unfinished_full_chain",
    "sync_request",
    "sync_retry_failed_batches",
    "sync_run_cancel",
    "sync_run_execute",
    "sync_runs_expire_stale",
]
