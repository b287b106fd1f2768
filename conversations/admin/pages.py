"""Admin for connected pages: the write-only token field, sync actions, soft removal."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import OuterRef, QuerySet, Subquery
from django.http import HttpRequest
from django.urls import reverse
from django.utils.decorators import method_decorator
from django.utils.html import format_html
from django.views.decorators.debug import sensitive_post_parameters

from conversations import services
from conversations.admin.syncs import request_syncs
from conversations.models import (
    FacebookPage,
    SyncMode,
    SyncRun,
)
from evoflow.admin_base import (
    NoDeleteMixin,
    action_confirmation,
    is_action_confirmed,
)
from evoflow.admin_display import admin_time
from evoflow.admin_display import status_badge as display_badge
from evoflow.admin_lists import (
    MarkedListFilter,
    QueryStringCheckedAdmin,
)


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
            display_badge(str(page.latest_sync_status)),  # type: ignore[attr-defined]
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
        request_syncs(self, request, queryset.order_by("pk"), SyncMode.INCREMENTAL)
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
        request_syncs(self, request, queryset.order_by("pk"), SyncMode.FULL)
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
        request_syncs(self, request, queryset.order_by("pk"), None)
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
