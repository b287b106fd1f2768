"""Reads of the conversations app."""

from __future__ import annotations

from datetime import datetime

from django.db.models import QuerySet

from conversations.models import Conversation, Message, WebhookReceipt


def conversation_list(
    *,
    page_id: str | None = None,
    updated_since: datetime | None = None,
    include_deleted: bool = False,
) -> QuerySet[Conversation]:
    """Conversations, newest-updated first; `page_id` is the Facebook page id."""
    conversations = Conversation.objects.select_related("page")
    if page_id is not None:
        conversations = conversations.filter(page__page_id=page_id)
    if updated_since is not None:
        conversations = conversations.filter(updated_at__gte=updated_since)
    if not include_deleted:
        conversations = conversations.filter(deleted_at__isnull=True)
    return conversations.order_by("-updated_at", "-id")


def conversation_get(*, conversation_id: int) -> Conversation | None:
    return Conversation.objects.select_related("page").filter(pk=conversation_id).first()


def message_list(*, conversation: Conversation) -> QuerySet[Message]:
    """A conversation's messages, newest first."""
    return Message.objects.filter(conversation=conversation).order_by("-sent_at", "-id")


def webhook_receipt_counts() -> dict[str, int]:
    from django.db.models import Count

    return {
        row["status"]: row["total"]
        for row in WebhookReceipt.objects.values("status").annotate(total=Count("id"))
    }
