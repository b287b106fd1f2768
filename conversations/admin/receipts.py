"""Admin for webhook receipts: what Meta sent, as received, with retry and reprocess."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from conversations import services
from conversations.models import (
    WebhookReceipt,
)
from evoflow.admin_base import (
    ReadOnlyAdmin,
)
from evoflow.admin_display import admin_time, plural, truncated
from evoflow.admin_display import status_badge as display_badge
from evoflow.admin_lists import (
    HugeTableMixin,
    since_filter,
)


@admin.register(WebhookReceipt)
class WebhookReceiptAdmin(HugeTableMixin, ReadOnlyAdmin):
    list_display = [
        "id",
        "status_badge",
        "attempts",
        "event_count",
        "unknown_event_count",
        "received",
        "processed",
        "next_attempt",
        "error_short",
    ]
    list_filter = [
        "status",
        since_filter(field_name="received_at", parameter_name="received_since"),
    ]
    # Receipts are numbered as they arrive: newest first through the primary key (received_at has
    # no index of its own, on purpose: see the model).
    ordering = ["-id"]
    actions = ["retry_receipts", "reprocess_receipts"]
    fields = readonly_fields = (
        "status",
        "signature_verdict",
        "attempts",
        "error",
        "event_count",
        "unknown_event_count",
        "skipped_events",
        "quarantined_events",
        "received_at",
        "processed_at",
        "next_attempt_at",
        "body_sha256",
        "body_text",
        "updated_at",
    )

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # The retry action needs "change"; the detail page itself is never a form to save (a
        # receipt is a record of what Meta sent), so it is only ever viewed.
        if obj is not None:
            return False
        return request.user.has_perm("conversations.change_webhookreceipt")

    def get_queryset(self, request: HttpRequest) -> QuerySet[WebhookReceipt]:
        # The raw body can be large and no list column shows it; the detail page loads it.
        return super().get_queryset(request).defer("body", "skipped_events", "quarantined_events")

    @admin.display(description="status", ordering="status")
    def status_badge(self, receipt: WebhookReceipt) -> str:
        return display_badge(receipt.status)

    @admin.display(description="received", ordering="received_at")
    def received(self, receipt: WebhookReceipt) -> str:
        return admin_time(receipt.received_at)

    @admin.display(description="processed", ordering="processed_at")
    def processed(self, receipt: WebhookReceipt) -> str:
        return admin_time(receipt.processed_at)

    @admin.display(description="next attempt", ordering="next_attempt_at")
    def next_attempt(self, receipt: WebhookReceipt) -> str:
        return admin_time(receipt.next_attempt_at)

    @admin.display(description="error")
    def error_short(self, receipt: WebhookReceipt) -> str:
        return truncated(receipt.error, length=40)

    @admin.display(description="body (as received)")
    def body_text(self, receipt: WebhookReceipt) -> str:
        return bytes(receipt.body).decode("utf-8", errors="replace")

    @admin.action(description="Retry processing of the selected receipts", permissions=["change"])
    def retry_receipts(self, request: HttpRequest, queryset: QuerySet) -> None:
        outcomes: dict[str, int] = {}
        for receipt_id in queryset.order_by("id").values_list("id", flat=True):
            outcome = services.webhook_receipt_retry(receipt_id=receipt_id)
            outcomes[outcome.status] = outcomes.get(outcome.status, 0) + 1
        summary = ", ".join(f"{count} {status}" for status, count in sorted(outcomes.items()))
        level = messages.WARNING if outcomes.get("failed") else messages.SUCCESS
        self.message_user(request, f"Retried: {summary or 'nothing'}.", level)

    @admin.action(
        description="Reprocess the selected receipts with the current code (idempotent)",
        permissions=["change"],
    )
    def reprocess_receipts(self, request: HttpRequest, queryset: QuerySet) -> None:
        # Any status: quarantined events, rejected and failed receipts are re-read from the
        # bytes kept; what was applied already changes nothing (the counts show it).
        summary = services.webhook_receipts_reprocess(
            receipt_ids=list(queryset.order_by("id").values_list("id", flat=True))
        )
        statuses = ", ".join(f"{n} {s}" for s, n in sorted(summary.by_status.items()))
        left = summary.quarantined_events
        level = (
            messages.WARNING
            if left or summary.by_status.get("failed") or summary.by_status.get("rejected")
            else messages.SUCCESS
        )
        self.message_user(
            request,
            f"Reprocessed {plural(summary.receipts, 'receipt')} ({statuses or 'none'}): "
            f"{plural(summary.messages_inserted, 'message')} and "
            f"{plural(summary.events_inserted, 'event')} inserted, "
            f"{plural(summary.messages_edited, 'message')} edited, "
            f"{plural(summary.reactions_changed, 'reaction')} changed; "
            f"{plural(left, 'event')} still quarantined.",
            level,
        )
