"""django-q2 entry points of the conversations app: thin, idempotent."""

from __future__ import annotations

from conversations.services import (
    webhook_receipt_process,
    webhook_receipts_prune,
    webhook_receipts_retry_due,
)


def webhook_receipts_retry_scheduled() -> int:
    """Every minute: failed receipts whose backoff has elapsed, and abandoned ones."""
    return webhook_receipts_retry_due(limit=200)


def webhook_receipt_process_task(receipt_id: int) -> str:
    return webhook_receipt_process(receipt_id=receipt_id).status


def webhook_receipts_prune_scheduled() -> int:
    """Daily: processed and rejected receipts older than the retention are deleted."""
    return webhook_receipts_prune()
