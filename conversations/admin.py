"""Admin for pages, conversations, messages, interaction events and webhook receipts.

Thin: writes go through `conversations.services`. The page token is never displayed: the form
has a write-only field that replaces it. Messages, events and receipts are records of what
happened, so they are read-only here.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils.decorators import method_decorator
from django.utils.html import format_html
from django.views.decorators.debug import sensitive_post_parameters

from conversations import selectors, services
from conversations.models import (
    Conversation,
    FacebookPage,
    InteractionEvent,
    Message,
    WebhookReceipt,
)

MESSAGES_PER_PAGE = 50


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class FacebookPageForm(forms.ModelForm):
    new_access_token = forms.CharField(
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False),
        help_text="Write-only: a new page access token replaces the stored one (encrypted at "
        "rest). Leave empty to keep the current token.",
    )

    class Meta:
        model = FacebookPage
        fields = ["page_id", "name", "sync_watermark"]


@admin.register(FacebookPage)
@method_decorator(sensitive_post_parameters("new_access_token"), name="add_view")
@method_decorator(sensitive_post_parameters("new_access_token"), name="change_view")
class FacebookPageAdmin(admin.ModelAdmin):
    form = FacebookPageForm
    list_display = ["page_id", "name", "token_status", "reauthorization_badge", "sync_watermark"]
    search_fields = ["page_id", "name"]
    list_filter = ["is_reauthorization_required"]
    readonly_fields = ["token_status", "reauthorization_badge", "created_at", "updated_at"]

    @admin.display(description="token")
    def token_status(self, page: FacebookPage) -> str:
        return "set (hidden)" if page.has_access_token else "missing"

    @admin.display(description="authorisation")
    def reauthorization_badge(self, page: FacebookPage) -> str:
        if page.is_reauthorization_required:
            return format_html(
                '<span style="background:#ba2121;color:#fff;padding:2px 6px;border-radius:4px">'
                "{}</span>",
                "re-authorisation required",
            )
        return format_html('<span style="color:#287d28">{}</span>', "ok")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        # The page id is the row's identity for the webhook (and its cached primary key):
        # a page that moved to another id is another page, added anew.
        fields = list(super().get_readonly_fields(request, obj))
        return [*fields, "page_id"] if obj is not None else fields

    def save_model(self, request: HttpRequest, obj: FacebookPage, form: Any, change: bool) -> None:
        token = form.cleaned_data.get("new_access_token") or None
        super().save_model(request, obj, form, change)
        if token:
            services.page_set_access_token(page=obj, access_token=token)


class DeletedFilter(admin.SimpleListFilter):
    title = "deleted on Facebook"
    parameter_name = "deleted"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("no", "live"), ("yes", "deleted")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "yes":
            return queryset.filter(deleted_at__isnull=False)
        if self.value() == "no":
            return queryset.filter(deleted_at__isnull=True)
        return queryset


@admin.register(Conversation)
class ConversationAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "participant_name",
        "psid",
        "page",
        "message_count",
        "last_message_at",
        "last_message_text_short",
        "deleted_at",
    ]
    list_select_related = ["page"]
    search_fields = ["participant_name", "psid", "=thread_id"]
    list_filter = [DeletedFilter, "page"]
    ordering = ["-updated_at", "-id"]
    change_form_template = "admin/conversations/conversation/change_form.html"

    @admin.display(description="last message")
    def last_message_text_short(self, conversation: Conversation) -> str:
        text = conversation.last_message_text
        return text if len(text) <= 60 else text[:59] + "…"

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        # isdigit() alone accepts "²" and other Unicode digits that int() refuses.
        conversation = (
            selectors.conversation_get(conversation_id=int(object_id))
            if object_id.isascii() and object_id.isdigit()
            else None
        )
        context = dict(extra_context or {})
        if conversation is not None:
            paginator = Paginator(
                selectors.message_list(conversation=conversation), MESSAGES_PER_PAGE
            )
            context["message_page"] = paginator.get_page(request.GET.get("messages_page"))
        return super().change_view(request, object_id, form_url, extra_context=context)


@admin.register(Message)
class MessageAdmin(ReadOnlyAdmin):
    list_display = ["mid", "conversation", "direction", "is_echo", "sent_at", "source", "read_at"]
    list_filter = ["direction", "source", "is_echo"]
    search_fields = ["=mid", "conversation__psid"]
    raw_id_fields = ["conversation", "page"]
    ordering = ["-sent_at", "-id"]
    show_full_result_count = False


@admin.register(InteractionEvent)
class InteractionEventAdmin(ReadOnlyAdmin):
    list_display = ["kind", "conversation", "message", "occurred_at", "source", "dedupe_key"]
    list_filter = ["kind", "source"]
    search_fields = ["=dedupe_key", "conversation__psid"]
    raw_id_fields = ["conversation", "message", "page"]
    ordering = ["-occurred_at", "-id"]
    show_full_result_count = False


@admin.register(WebhookReceipt)
class WebhookReceiptAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "status",
        "attempts",
        "event_count",
        "unknown_event_count",
        "received_at",
        "processed_at",
        "next_attempt_at",
        "error_short",
    ]
    list_filter = ["status"]
    ordering = ["-received_at", "-id"]
    actions = ["retry_receipts"]
    fields = readonly_fields = (
        "status",
        "signature_verdict",
        "attempts",
        "error",
        "event_count",
        "unknown_event_count",
        "skipped_events",
        "received_at",
        "processed_at",
        "next_attempt_at",
        "body_sha256",
        "body_text",
        "updated_at",
    )
    show_full_result_count = False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # The retry action needs "change"; the detail page itself is never a form to save (a
        # receipt is a record of what Meta sent), so it is only ever viewed.
        if obj is not None:
            return False
        return request.user.has_perm("conversations.change_webhookreceipt")

    @admin.display(description="error")
    def error_short(self, receipt: WebhookReceipt) -> str:
        return receipt.error[:80]

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
