"""Every write of the conversations app. See each module's docstring."""

from conversations.services.ingest import (
    ApplyResult,
    ConversationKey,
    IncomingEvent,
    IncomingMark,
    IncomingMessage,
    TrailingStatement,
    batch_apply,
)
from conversations.services.pages import (
    page_flag_reauthorization,
    page_pks_ensure,
    page_set_access_token,
    page_upsert,
)
from conversations.services.purge import (
    PurgeCounts,
    PurgeRefused,
    conversation_purge,
    conversation_purge_preview,
    page_purge,
    page_purge_preview,
    page_remove,
    page_restore,
)
from conversations.services.webhook import (
    ProcessOutcome,
    payload_plan,
    webhook_receipt_process,
    webhook_receipt_retry,
    webhook_receipts_prune,
    webhook_receipts_retry_due,
    webhook_receive,
)
from conversations.services.webhook_reprocess import (
    ReprocessSummary,
    webhook_receipts_reprocess,
)

__all__ = [
    "ApplyResult",
    "ConversationKey",
    "IncomingEvent",
    "IncomingMark",
    "IncomingMessage",
    "ProcessOutcome",
    "PurgeCounts",
    "PurgeRefused",
    "ReprocessSummary",
    "TrailingStatement",
    "batch_apply",
    "conversation_purge",
    "conversation_purge_preview",
    "page_flag_reauthorization",
    "page_pks_ensure",
    "page_purge",
    "page_purge_preview",
    "page_remove",
    "page_restore",
    "page_set_access_token",
    "page_upsert",
    "payload_plan",
    "webhook_receipt_process",
    "webhook_receipt_retry",
    "webhook_receive",
    "webhook_receipts_prune",
    "webhook_receipts_reprocess",
    "webhook_receipts_retry_due",
]
