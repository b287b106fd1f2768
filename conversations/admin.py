"""Admin for pages, conversations, messages, interaction events, webhook receipts and sync runs.

Thin: writes go through `conversations.services`. The page token is never displayed: the form
has a write-only field that replaces it. Messages, events, receipts and sync runs are records of
what happened, so they are read-only here.

Sync actions ("sync now", "full sync now", "retry failed batches", "cancel") need the
`conversations.add_syncrun` permission, the same one the sync API asks for (operators have it).

Every table here but the pages grows without bound: those lists count with the huge-table
paginator and filter by page without listing every page (evoflow.admin_lists).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.paginator import Paginator
from django.db.models import OuterRef, QuerySet, Subquery
from django.http import HttpRequest
from django.urls import reverse
from django.utils.decorators import method_decorator
from django.utils.html import format_html
from django.views.decorators.debug import sensitive_post_parameters

from conversations import selectors, services
from conversations.models import (
    SYNC_RUN_COUNTERS,
    Conversation,
    FacebookPage,
    InteractionEvent,
    Message,
    PurgeRecord,
    SyncMode,
    SyncRun,
    WebhookReceipt,
)
from conversations.services.sync import (
    SyncRefused,
    sync_request,
    sync_retry_failed_batches,
    sync_run_cancel,
)
from evoflow.admin_base import (
    NoDeleteMixin,
    ObjectPageMixin,
    ReadOnlyAdmin,
    action_confirmation,
    is_action_confirmed,
)
from evoflow.admin_display import admin_duration, admin_time, plural, short_id, truncated
from evoflow.admin_display import status_badge as display_badge
from evoflow.admin_lists import (
    ChosenOnlyRelatedFilter,
    HugeTableMixin,
    MarkedListFilter,
    QueryStringCheckedAdmin,
    pk_or_none,
    since_filter,
)

MESSAGES_PER_PAGE = 50


class RemovedFilter(MarkedListFilter):
    title = parameter_name = "removed"
    field_name = "removed_at"
    unset_label, set_label = "in use", "removed"


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
        fields = ["page_id", "name"]


@admin.register(FacebookPage)
@method_decorator(sensitive_post_parameters("new_access_token"), name="add_view")
@method_decorator(sensitive_post_parameters("new_access_token"), name="change_view")
class FacebookPageAdmin(NoDeleteMixin, QueryStringCheckedAdmin):
    # No delete (C8): conversations are never removed, so neither is a page with them. "Remove"
    # is soft; the data goes only through the audited `conversations_purge` command.
    form = FacebookPageForm
    list_display = [
        "page_id",
        "name",
        "token_status",
        "reauthorization_badge",
        "sync_watermark",
        "latest_sync",
        "removed",
    ]
    search_fields = ["page_id", "name"]
    list_filter = ["is_reauthorization_required", RemovedFilter]
    readonly_fields = [
        "token_status",
        "reauthorization_badge",
        "latest_sync",
        "removed_at",
        # Moved by completed sync runs only: an edited watermark would make incremental runs
        # skip conversations and still report success.
        "sync_watermark",
        "created_at",
        "updated_at",
    ]
    actions = [
        "sync_incremental_now",
        "sync_full_now",
        "retry_failed_batches",
        "remove_pages",
        "restore_pages",
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        # The latest run's id and status in the page query itself: one query per list page. In
        # creation order, so the (page, -created_at) index answers it for each page row.
        latest = SyncRun.objects.filter(page=OuterRef("pk")).order_by("-created_at", "-id")
        return (
            super()
            .get_queryset(request)
            .annotate(
                latest_sync_id=Subquery(latest.values("id")[:1]),
                latest_sync_status=Subquery(latest.values("status")[:1]),
            )
        )

    @admin.display(description="latest sync")
    def latest_sync(self, page: FacebookPage) -> str:
        run_id = getattr(page, "latest_sync_id", None)
        if run_id is None:
            return "never"
        return format_html(
            '<a href="{}">run {}</a> {}',
            reverse("admin:conversations_syncrun_change", args=[run_id]),
            run_id,
            sync_status_badge(str(page.latest_sync_status)),  # type: ignore[attr-defined]
        )

    def has_sync_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("conversations.add_syncrun")

    @admin.action(description="Sync now (incremental; asks to confirm)", permissions=["sync"])
    def sync_incremental_now(self, request: HttpRequest, queryset: QuerySet) -> Any:
        if not is_action_confirmed(request):
            return action_confirmation(
                self,
                request,
                queryset,
                action="sync_incremental_now",
                title="Sync pages now",
                question="Start an incremental sync of these pages from the Graph API now? "
                "It calls Meta for each page and writes what changed since the last sync.",
            )
        _request_syncs(self, request, queryset.order_by("pk"), SyncMode.INCREMENTAL)
        return None

    @admin.action(description="Full sync now (asks to confirm)", permissions=["sync"])
    def sync_full_now(self, request: HttpRequest, queryset: QuerySet) -> Any:
        if not is_action_confirmed(request):
            return action_confirmation(
                self,
                request,
                queryset,
                action="sync_full_now",
                title="Full sync of pages",
                question="Start a full sync of these pages now? It walks every conversation "
                "of each page through the Graph API, which takes many calls on a big page.",
            )
        _request_syncs(self, request, queryset.order_by("pk"), SyncMode.FULL)
        return None

    @admin.action(
        description="Retry failed batches of the last sync (asks to confirm)", permissions=["sync"]
    )
    def retry_failed_batches(self, request: HttpRequest, queryset: QuerySet) -> Any:
        if not is_action_confirmed(request):
            return action_confirmation(
                self,
                request,
                queryset,
                action="retry_failed_batches",
                title="Retry failed batches",
                question="Start a run of each page that takes over the failed batches of its "
                "last sync?",
            )
        _request_syncs(self, request, queryset.order_by("pk"), None)
        return None

    @admin.action(
        description="Remove the selected pages (keeps their conversations; stops syncing; "
        "asks to confirm)",
        permissions=["change"],
    )
    def remove_pages(self, request: HttpRequest, queryset: QuerySet) -> Any:
        if not is_action_confirmed(request):
            return action_confirmation(
                self,
                request,
                queryset,
                action="remove_pages",
                title="Remove pages",
                question="Remove these pages? Their access tokens are deleted and their live "
                "syncs cancelled; every conversation and message is kept, and a removed page "
                "can be restored.",
            )
        for page in queryset.order_by("pk"):
            if services.page_remove(page=page):
                self.message_user(
                    request,
                    f"Page {page.page_id} removed: its token is gone and its live syncs are"
                    " cancelled; every conversation is kept (purging is a separate command).",
                    messages.SUCCESS,
                )
            else:
                self.message_user(
                    request, f"Page {page.page_id} was removed already.", messages.WARNING
                )
        return None

    @admin.action(
        description="Restore the selected removed pages (asks to confirm)", permissions=["change"]
    )
    def restore_pages(self, request: HttpRequest, queryset: QuerySet) -> Any:
        if not is_action_confirmed(request):
            return action_confirmation(
                self,
                request,
                queryset,
                action="restore_pages",
                title="Restore pages",
                question="Restore these removed pages? They sync again once given a new access "
                "token.",
            )
        for page in queryset.order_by("pk"):
            if services.page_restore(page=page):
                self.message_user(
                    request,
                    f"Page {page.page_id} restored: set a new access token to sync it again.",
                    messages.SUCCESS,
                )
            else:
                self.message_user(request, f"Page {page.page_id} is not removed.", messages.WARNING)
        return None

    @admin.display(description="removed", ordering="removed_at")
    def removed(self, page: FacebookPage) -> str:
        return admin_time(page.removed_at) if page.removed_at else "-"

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
        if change:
            # Only what the operator edited: a full-row save would write back columns the sync
            # changed since the form was loaded (the watermark, the re-authorisation flag).
            edited = [name for name in form.changed_data if name in FacebookPageForm.Meta.fields]
            if edited:
                obj.save(update_fields=[*edited, "updated_at"])
        else:
            super().save_model(request, obj, form, change)
        if token:
            services.page_set_access_token(page=obj, access_token=token)


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


# -- sync runs ------------------------------------------------------------------------------------


def sync_status_badge(status: str) -> str:
    return display_badge(status)


def _request_syncs(
    model_admin: admin.ModelAdmin,
    request: HttpRequest,
    pages: Iterable[FacebookPage],
    mode: str | None,
) -> None:
    """One run per page (`mode` None: a retry of the last run's failed batches), with one
    message per outcome: started, already live (409), or refused."""
    for page in pages:
        try:
            if mode is None:
                run, created = sync_retry_failed_batches(page=page, trigger="admin")
            else:
                run, created = sync_request(page=page, mode=mode, trigger="admin")
        except SyncRefused as error:
            model_admin.message_user(request, f"Page {page.page_id}: {error}.", messages.ERROR)
            continue
        run_url = reverse("admin:conversations_syncrun_change", args=[run.pk])
        if created:
            what = "retry of failed batches" if mode is None else f"{run.mode} sync"
            model_admin.message_user(
                request,
                format_html(
                    'Page {}: {} queued as <a href="{}" data-testid="sync-run-link">run {}</a> '
                    "(its page follows it as it runs).",
                    page.page_id,
                    what,
                    run_url,
                    run.pk,
                ),
                messages.SUCCESS,
            )
        else:
            model_admin.message_user(
                request,
                format_html(
                    'Page {}: a sync is already {} (<a href="{}" data-testid="sync-run-link">'
                    "run {}</a>); "
                    "nothing new was started.",
                    page.page_id,
                    run.status,
                    run_url,
                    run.pk,
                ),
                messages.WARNING,
            )


class PrettyJsonMixin:
    @staticmethod
    def pretty_json(value: Any) -> str:
        return format_html(
            '<pre style="white-space:pre-wrap;margin:0">{}</pre>',
            json.dumps(value, indent=2, sort_keys=True, default=str),
        )


@admin.register(SyncRun)
class SyncRunAdmin(HugeTableMixin, PrettyJsonMixin, ReadOnlyAdmin):
    list_display = [
        "id",
        "page",
        "mode",
        "status_badge",
        "trigger",
        "started",
        "duration",
        "api_calls",
        "messages_inserted",
        "failed_batch_count",
        "error_code",
    ]
    list_select_related = ["page"]
    list_filter = ["status", "mode", ("page", ChosenOnlyRelatedFilter)]
    search_fields = ["=request_id"]
    ordering = ["-id"]
    actions = ["retry_failed_batches", "cancel_runs"]
    change_form_template = "admin/conversations/syncrun/change_form.html"
    fields = readonly_fields = (
        "page",
        "mode",
        "status_badge",
        "trigger",
        "request_id",
        "resumed_from",
        "chain_id",
        "created_at",
        "started_at",
        "heartbeat_at",
        "finished_at",
        "duration",
        *SYNC_RUN_COUNTERS,
        "failed_batch_count",
        "failed_batches_pretty",
        "skipped_pretty",
        "cursor_pretty",
        "watermark_candidate",
        "error_code",
        "error",
    )

    @admin.display(description="status", ordering="status")
    def status_badge(self, run: SyncRun) -> str:
        return sync_status_badge(run.status)

    @admin.display(description="started", ordering="started_at")
    def started(self, run: SyncRun) -> str:
        return admin_time(run.started_at)

    @admin.display(description="duration")
    def duration(self, run: SyncRun) -> str:
        if run.started_at is None:
            return "-"
        if run.finished_at is None:
            return "running" if run.is_live else "-"
        return admin_duration(run.finished_at - run.started_at)

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> Any:
        # A queued or running run's page follows it (the template polls while this is set).
        pk = pk_or_none(object_id)
        run = SyncRun.objects.filter(pk=pk).only("status").first() if pk is not None else None
        context = {**(extra_context or {}), "is_live": bool(run and run.is_live)}
        return super().change_view(request, object_id, form_url, extra_context=context)

    @admin.display(description="failed batches")
    def failed_batch_count(self, run: SyncRun) -> int:
        return len(run.failed_batches or [])

    @admin.display(description="failed batches (detail)")
    def failed_batches_pretty(self, run: SyncRun) -> str:
        return self.pretty_json(run.failed_batches)

    @admin.display(description="skipped conversations")
    def skipped_pretty(self, run: SyncRun) -> str:
        return self.pretty_json(run.skipped)

    @admin.display(description="cursor")
    def cursor_pretty(self, run: SyncRun) -> str:
        return self.pretty_json(run.cursor)

    def has_sync_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("conversations.add_syncrun")

    @admin.action(
        description="Retry failed batches (a new run of each page; asks to confirm)",
        permissions=["sync"],
    )
    def retry_failed_batches(self, request: HttpRequest, queryset: QuerySet) -> Any:
        if not is_action_confirmed(request):
            return action_confirmation(
                self,
                request,
                queryset,
                action="retry_failed_batches",
                title="Retry failed batches",
                question="Start, for the page of each selected run, a run that takes over the "
                "failed batches of that page's last sync?",
            )
        page_ids = queryset.values_list("page_id", flat=True).distinct()
        pages = FacebookPage.objects.filter(pk__in=page_ids).order_by("pk")
        _request_syncs(self, request, pages, None)
        return None

    @admin.action(
        description="Cancel the selected live runs (asks to confirm)", permissions=["sync"]
    )
    def cancel_runs(self, request: HttpRequest, queryset: QuerySet) -> Any:
        if not is_action_confirmed(request):
            return action_confirmation(
                self,
                request,
                queryset,
                action="cancel_runs",
                title="Cancel sync runs",
                question="Cancel these runs? A live run stops after its current batch and "
                "keeps its cursor for the next run; a finished run is left as it is.",
            )
        cancelled: list[str] = []
        not_live: list[str] = []
        for run_id in queryset.order_by("id").values_list("id", flat=True):
            (cancelled if sync_run_cancel(run_id=run_id) else not_live).append(str(run_id))
        if cancelled:
            runs = "run" if len(cancelled) == 1 else "runs"
            self.message_user(
                request, f"Cancelled {runs} {', '.join(cancelled)}.", messages.SUCCESS
            )
        if not_live:
            runs = "run" if len(not_live) == 1 else "runs"
            self.message_user(
                request,
                f"Not live, so left as {'it was' if len(not_live) == 1 else 'they were'}: "
                f"{runs} {', '.join(not_live)}.",
                messages.WARNING,
            )
        return None


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
