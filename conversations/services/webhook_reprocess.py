"""Re-applying stored webhook receipts with the code as it is now (after a fix): the service
behind `manage.py webhook_reprocess` and the receipts' admin action.

Each receipt goes through `webhook_receipt_process(reprocess=True)`: its kept bytes are read
again and applied in one durable transaction that locks it. Every write is keyed (messages,
events, edits by `num_edit`, reactions by time), so what was applied before changes nothing; the
summary counts what did change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from conversations.models import WebhookReceipt
from conversations.services.webhook import ProcessOutcome, webhook_receipt_process


@dataclass
class ReprocessSummary:
    """What `webhook_receipts_reprocess` did: receipts by their new status, and what applying
    them changed (all zero when everything was applied already)."""

    receipts: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    messages_inserted: int = 0
    events_inserted: int = 0
    messages_edited: int = 0
    reactions_changed: int = 0
    messages_marked: int = 0
    quarantined_events: int = 0

    def add(self, outcome: ProcessOutcome) -> None:
        self.receipts += 1
        self.by_status[outcome.status] = self.by_status.get(outcome.status, 0) + 1
        if outcome.applied is not None:
            applied = outcome.applied
            self.messages_inserted += applied.messages_inserted
            self.events_inserted += applied.events_inserted + applied.message_events_inserted
            self.messages_edited += applied.messages_edited
            self.reactions_changed += applied.reactions_changed
            self.messages_marked += applied.messages_marked

    @property
    def changed(self) -> int:
        return (
            self.messages_inserted
            + self.events_inserted
            + self.messages_edited
            + self.reactions_changed
            + self.messages_marked
        )


def webhook_receipts_reprocess(
    *,
    receipt_ids: Sequence[int] = (),
    status: str | None = None,
    since: datetime | None = None,
    limit: int | None = None,
) -> ReprocessSummary:
    """Re-apply stored receipts with the current code (after a fix): the ones named, or those
    of a status and/or received since a time, oldest first. Idempotent; see
    `webhook_receipt_process`."""
    if not receipt_ids and status is None and since is None:
        raise ValueError("name receipts, a status or a time")
    receipts = WebhookReceipt.objects.all()
    if receipt_ids:
        receipts = receipts.filter(pk__in=list(receipt_ids))
    if status is not None:
        receipts = receipts.filter(status=status)
    if since is not None:
        receipts = receipts.filter(received_at__gte=since)
    ids = list(receipts.order_by("id").values_list("id", flat=True)[:limit])
    summary = ReprocessSummary()
    for receipt_id in ids:
        outcome = webhook_receipt_process(receipt_id=receipt_id, reprocess=True)
        summary.add(outcome)
    summary.quarantined_events = sum(
        len(value)
        for value in WebhookReceipt.objects.filter(pk__in=ids).values_list(
            "quarantined_events", flat=True
        )
    )
    return summary
