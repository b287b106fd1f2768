"""django-q2 entry points of the conversations app: thin, idempotent."""

from __future__ import annotations

import logging

from conversations.services import (
    webhook_receipt_process,
    webhook_receipts_prune,
    webhook_receipts_retry_due,
)
from conversations.services.sync import sync_pages_scheduled, sync_run_execute

logger = logging.getLogger(__name__)

# The scheduled entry points' dotted paths, for the schedules ConversationsConfig.ready()
# registers (the sync run's task is named beside the service that enqueues it).
WEBHOOK_RECEIPTS_RETRY_TASK = "conversations.tasks.webhook_receipts_retry_scheduled"
WEBHOOK_RECEIPTS_PRUNE_TASK = "conversations.tasks.webhook_receipts_prune_scheduled"
SYNC_ACTIVE_PAGES_TASK = "conversations.tasks.sync_active_pages_scheduled"


def webhook_receipts_retry_scheduled() -> int:
    """Every minute: failed receipts whose backoff has elapsed, and abandoned ones."""
    return webhook_receipts_retry_due(limit=200)


def webhook_receipt_process_task(receipt_id: int) -> str:
    return webhook_receipt_process(receipt_id=receipt_id).status


def webhook_receipts_prune_scheduled() -> int:
    """Daily: processed and rejected receipts older than the retention are deleted."""
    return webhook_receipts_prune()


def sync_run_task(run_id: int) -> str:
    """Runs a queued sync run; a run already claimed or finished is left alone (a redelivered
    task after a worker crash finds its run expired, and does nothing)."""
    return str(sync_run_execute(run_id=run_id).status)


def sync_active_pages_scheduled() -> int:
    """Every SYNC_SCHEDULE_MINUTES: a sync of every page with a usable token (incremental, or
    the continuation of an unfinished full chain)."""
    return sync_pages_scheduled(trigger="schedule")
