"""Admin for sync runs, and the helper every sync action of the admin goes through."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from conversations.models import (
    SYNC_RUN_COUNTERS,
    FacebookPage,
    SyncRun,
)
from conversations.services.sync import (
    SyncRefused,
    sync_request,
    sync_retry_failed_batches,
    sync_run_cancel,
)
from evoflow.admin_base import (
    ReadOnlyAdmin,
    action_confirmation,
    is_action_confirmed,
)
from evoflow.admin_display import admin_duration, admin_time, pretty_json
from evoflow.admin_display import status_badge as display_badge
from evoflow.admin_lists import (
    ChosenOnlyRelatedFilter,
    HugeTableMixin,
    pk_or_none,
)


def request_syncs(
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


@admin.register(SyncRun)
class SyncRunAdmin(HugeTableMixin, ReadOnlyAdmin):
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
        return display_badge(run.status)

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
        return pretty_json(run.failed_batches)

    @admin.display(description="skipped conversations")
    def skipped_pretty(self, run: SyncRun) -> str:
        return pretty_json(run.skipped)

    @admin.display(description="cursor")
    def cursor_pretty(self, run: SyncRun) -> str:
        return pretty_json(run.cursor)

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
        request_syncs(self, request, pages, None)
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
