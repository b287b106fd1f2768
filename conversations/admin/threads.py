"""Admin for conversations, their messages and interaction events, and the purge audit."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.core.paginator import Paginator
from django.http import HttpRequest

from conversations import selectors
from conversations.models import (
    Conversation,
    InteractionEvent,
    Message,
    PurgeRecord,
)
from evoflow.admin_base import (
    ObjectPageMixin,
    ReadOnlyAdmin,
)
from evoflow.admin_display import admin_time, short_id, truncated
from evoflow.admin_lists import (
    ChosenOnlyRelatedFilter,
    HugeTableMixin,
    MarkedListFilter,
)

MESSAGES_PER_PAGE = 50


class DeletedFilter(MarkedListFilter):
    title = "deleted on Facebook"
    parameter_name = "deleted"
    field_name = "deleted_at"
    unset_label, set_label = "live", "deleted"


@admin.register(Conversation)
class ConversationAdmin(ObjectPageMixin, HugeTableMixin, ReadOnlyAdmin):
    list_display = [
        "id",
        "participant_name",
        "psid_short",
        "page",
        "message_count",
        "last_message",
        "last_message_text_short",
        "deleted",
    ]
    list_select_related = ["page"]
    search_fields = ["participant_name", "psid", "=thread_id"]
    list_filter = [DeletedFilter, ("page", ChosenOnlyRelatedFilter)]
    ordering = ["-updated_at", "-id"]
    change_form_template = "admin/conversations/conversation/change_form.html"

    @admin.display(description="PSID", ordering="psid")
    def psid_short(self, conversation: Conversation) -> str:
        return short_id(conversation.psid)

    @admin.display(description="last message at", ordering="last_message_at")
    def last_message(self, conversation: Conversation) -> str:
        return admin_time(conversation.last_message_at)

    @admin.display(description="last message")
    def last_message_text_short(self, conversation: Conversation) -> str:
        return truncated(conversation.last_message_text, length=32)

    @admin.display(description="deleted", ordering="deleted_at")
    def deleted(self, conversation: Conversation) -> str:
        return admin_time(conversation.deleted_at)

    def change_page_object(self, request: HttpRequest, pk: int) -> Conversation | None:
        return selectors.conversation_get(conversation_id=pk)

    def change_page_context(self, request: HttpRequest, obj: Conversation) -> dict[str, Any]:
        paginator = Paginator(selectors.message_list(conversation=obj), MESSAGES_PER_PAGE)
        return {"message_page": paginator.get_page(request.GET.get("messages_page"))}


@admin.register(Message)
class MessageAdmin(HugeTableMixin, ReadOnlyAdmin):
    list_display = ["mid", "conversation", "direction", "is_echo", "sent_at", "source", "read_at"]
    list_filter = ["direction", "source", "is_echo"]
    list_select_related = ["conversation"]
    search_fields = ["=mid", "conversation__psid"]
    raw_id_fields = ["conversation", "page"]
    # Newest stored first: the primary key serves it, where "-sent_at" over the whole table (no
    # index leads with it) would sort millions of rows for each page.
    ordering = ["-id"]


@admin.register(InteractionEvent)
class InteractionEventAdmin(HugeTableMixin, ReadOnlyAdmin):
    list_display = ["kind", "conversation", "message", "occurred_at", "source", "dedupe_key"]
    list_filter = ["kind", "source"]
    # The message is optional: without naming it, select_related() would leave it to one query
    # per row.
    list_select_related = ["conversation", "message"]
    search_fields = ["=dedupe_key", "conversation__psid"]
    raw_id_fields = ["conversation", "message", "page"]
    ordering = ["-id"]  # as messages: the primary key serves it


@admin.register(PurgeRecord)
class PurgeRecordAdmin(ReadOnlyAdmin):
    """The audit of `manage.py conversations_purge`: every purge, never edited."""

    list_display = [
        "purged_at",
        "scope",
        "page_id",
        "psid",
        "conversations",
        "messages",
        "events",
        "sync_runs",
        "requested_by",
        "reason",
    ]
    list_filter = ["scope"]
    search_fields = ["=page_id", "=psid", "requested_by"]
    ordering = ["-purged_at", "-id"]
