"""Every write of the conversations app. See each module's docstring."""

from conversations.services.ingest import (
    ApplyResult,
    ConversationKey,
    IncomingEvent,
    IncomingMark,
    IncomingMessage,
    batch_apply,
)
from conversations.services.pages import (
    page_flag_reauthorization,
    page_pks_ensure,
    page_set_access_token,
    page_upsert,
)
from conversations.services.webhook import (
    ProcessOutcome,
    payload_plan,
    webhook_receipt_process,
    webhook_receipt_retry,
    webhook_receipt_store,
    webhook_receipts_retry_due,
)

__all__ = [
    "ApplyResult",
    "ConversationKey",
    "IncomingEvent",
    "IncomingMark",
    "IncomingMessage",
    "ProcessOutcome",
    "batch_apply",
    "page_flag_reauthorization",
    "page_pks_ensure",
    "page_set_access_token",
    "page_upsert",
    "payload_plan",
    "webhook_receipt_process",
    "webhook_receipt_retry",
    "webhook_receipt_store",
    "webhook_receipts_retry_due",
]
