"""Admin for users and the stored integrity runs.

Integrity runs are read-only records. With `evoflow.run_integrity` an operator starts a run from
the list ("Run integrity now"); with `evoflow.repair_integrity` they repair a failing check after
a dry-run preview. Both are queued as stored runs that a worker executes: the run's page
refreshes itself until the run is done (or is failed as lost: no worker started it, or its
worker stopped beating), then shows each check's result.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q, QuerySet
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
)
from django.urls import NoReverseMatch, URLPattern, path, reverse
from django.utils.html import format_html, format_html_join

from evoflow.admin_base import NoAddMixin, NoChangeMixin, ObjectPageMixin, model_page_response
from evoflow.admin_display import admin_duration, admin_duration_ms, admin_time
from evoflow.admin_lists import QueryStringCheckedAdmin
from evoflow.admin_site import may_repair, may_run
from evoflow.integrity.registry import IntegrityCheck, UnknownCheck, get_check
from evoflow.integrity.runner import (
    REPAIR_PREVIEW_SECONDS,
    PreviewOutOfTime,
    evaluate_check,
    integrity_repair_preview,
    integrity_run_request,
    integrity_runs_fail_lost,
)
from evoflow.models import IntegrityCheckResult, IntegrityRun, User

logger = logging.getLogger(__name__)

REPAIR_TEMPLATE = "admin/evoflow/integrityrun/repair_confirm.html"

STATUS_COLOURS = {
    "ok": "#287d28",
    "healthy": "#287d28",
    "warning": "#8a5f00",  # white text on it: 5.6:1 (WCAG AA)
    "error": "#ba2121",
    "failed": "#7a0000",
    "queued": "#666",
    "running": "#205493",
}
FAILING_STATUSES = (IntegrityCheckResult.Status.WARNING, IntegrityCheckResult.Status.ERROR)


@admin.register(User)
class UserAdmin(QueryStringCheckedAdmin, DjangoUserAdmin):
    fieldsets = (*(DjangoUserAdmin.fieldsets or ()), ("Phone", {"fields": ("phone", "phone_e164")}))
    readonly_fields = ("phone_e164",)
    list_display = ("id", "username", "full_name", "email", "phone_e164", "is_staff", "is_active")
    list_display_links = ("id", "username")

    @admin.display(description="name", ordering="last_name")
    def full_name(self, user: User) -> str:
        return user.get_full_name() or "-"

    search_fields = ("username", "email", "first_name", "last_name", "phone_e164")


def status_badge(status: str) -> str:
    return format_html(
        '<span class="integrity-status" data-status="{}" style="background:{};color:#fff;'
        'padding:2px 6px;border-radius:4px">{}</span>',
        status,
        STATUS_COLOURS.get(status, "#666"),
        status,
    )


@dataclass(frozen=True)
class SampleLink:
    sample_id: str
    url: str | None


def sample_links(check: IntegrityCheck | None, sample_ids: list[Any]) -> list[SampleLink]:
    """Each sample id with its admin page when the check names one; a sample that does not
    reverse (an unexpected shape) is shown as plain text."""
    url_name = check.sample_admin_url_name if check is not None else None
    links = []
    for sample in sample_ids:
        url = None
        if url_name:
            try:
                url = reverse(url_name, args=[str(sample)])
            except NoReverseMatch:
                url = None
        links.append(SampleLink(str(sample), url))
    return links


def _threshold(value: float | int | None) -> str:
    return "-" if value is None else str(value)


@dataclass(frozen=True)
class CheckRow:
    result: IntegrityCheckResult
    description: str
    thresholds: dict[str, str]
    samples: list[SampleLink]
    is_repairable: bool

    @property
    def badge(self) -> str:
        return status_badge(self.result.status)

    @property
    def duration(self) -> str:
        return admin_duration_ms(self.result.duration_ms)


def _check_rows(run: IntegrityRun) -> list[CheckRow]:
    rows = []
    for result in run.results.all():
        try:
            check: IntegrityCheck | None = get_check(result.check_id)
        except UnknownCheck:
            check = None  # removed since the run: its stored result is still shown
        rows.append(
            CheckRow(
                result=result,
                description=check.description if check else "",
                thresholds={
                    name: _threshold(value)
                    for name, value in (check.thresholds if check else {}).items()
                },
                samples=sample_links(check, result.sample_ids or []),
                is_repairable=bool(
                    check and check.repair is not None and result.status in FAILING_STATUSES
                ),
            )
        )
    return rows


@admin.register(IntegrityRun)
class IntegrityRunAdmin(ObjectPageMixin, NoAddMixin, NoChangeMixin, QueryStringCheckedAdmin):
    list_display = (
        "id",
        "status_badge",
        "trigger",
        "started",
        "duration",
        "check_counts",
        "requested_by",
    )
    list_display_links = ("id", "status_badge")
    list_filter = ("status", "trigger")
    fields = (
        "status_badge",
        "exit_code",
        "trigger",
        "started_at",
        "finished_at",
        "duration",
        "requested_by",
        "checks_requested",
        "fix_requested",
        "dry_run",
        "request_id",
        "error",
    )
    readonly_fields = fields
    show_full_result_count = False
    change_list_template = "admin/evoflow/integrityrun/change_list.html"
    change_form_template = "admin/evoflow/integrityrun/change_form.html"

    def get_queryset(self, request: HttpRequest) -> QuerySet[IntegrityRun]:
        # The checks' counts by status in the runs query itself: one query per list page.
        counts = {
            f"{status}_count": Count("results", filter=Q(results__status=status))
            for status in IntegrityCheckResult.Status.values
        }
        return super().get_queryset(request).select_related("requested_by").annotate(**counts)

    @admin.display(description="status", ordering="status")
    def status_badge(self, run: IntegrityRun) -> str:
        return status_badge(run.status)

    @admin.display(description="started", ordering="started_at")
    def started(self, run: IntegrityRun) -> str:
        return admin_time(run.started_at)

    @admin.display(description="duration")
    def duration(self, run: IntegrityRun) -> str:
        if run.finished_at is None or run.started_at is None:
            return "-"
        return admin_duration(run.finished_at - run.started_at)

    @admin.display(description="checks")
    def check_counts(self, run: IntegrityRun) -> str:
        parts = [
            (status, getattr(run, f"{status}_count", 0))
            for status in IntegrityCheckResult.Status.values
        ]
        shown = [(status, count, status) for status, count in parts if count]
        if not shown:
            return "-"
        return format_html_join(
            " ", '<span data-status="{}" style="white-space:nowrap">{} {}</span>', shown
        )

    @admin.display(description="checks requested")
    def checks_requested(self, run: IntegrityRun) -> str:
        return ", ".join(run.requested_checks) if run.requested_checks else "all"

    # -- pages ----------------------------------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        own = [
            path(
                "run-now/",
                self.admin_site.admin_view(self.run_now_view),
                name=f"{prefix}_run_now",
            ),
            path(
                "repair/<str:check_id>/",
                self.admin_site.admin_view(self.repair_view),
                name=f"{prefix}_repair",
            ),
        ]
        return own + super().get_urls()

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        context = {
            **(extra_context or {}),
            "can_run_integrity": may_run(request.user),
        }
        return super().changelist_view(request, extra_context=context)

    def change_page_object(self, request: HttpRequest, pk: int) -> IntegrityRun | None:
        run = super().change_page_object(request, pk)
        # A live run nobody executes any more is failed here, so its page stops refreshing.
        if (
            run is not None
            and not run.is_finished
            and integrity_runs_fail_lost(runs=IntegrityRun.objects.filter(pk=run.pk))
        ):
            run = self.get_queryset(request).get(pk=run.pk)
        return run

    def change_page_context(self, request: HttpRequest, obj: IntegrityRun) -> dict[str, Any]:
        return {
            "check_rows": _check_rows(obj),
            "is_live": not obj.is_finished,
            "can_repair": may_repair(request.user),
        }

    def run_now_view(self, request: HttpRequest) -> HttpResponse:
        if not may_run(request.user):
            raise PermissionDenied
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        run, created = integrity_run_request(trigger="admin", requested_by=_user(request))
        if created:
            self.message_user(request, f"Integrity run {run.pk} queued.", messages.SUCCESS)
        else:
            self.message_user(
                request,
                f"Integrity run {run.pk} is already {run.status}: "
                "showing it instead of starting another.",
                messages.WARNING,
            )
        return HttpResponseRedirect(_run_url(run))

    def repair_view(self, request: HttpRequest, check_id: str) -> HttpResponse:
        if not may_repair(request.user):
            raise PermissionDenied
        if request.method not in ("GET", "POST"):
            return HttpResponseNotAllowed(["GET", "POST"])
        try:
            check = get_check(check_id)
        except UnknownCheck:
            raise Http404(f"No integrity check {check_id!r}.") from None
        if check.repair is None:
            raise Http404(f"The integrity check {check_id!r} has no repair.")
        if request.method == "POST":
            run, created = integrity_run_request(
                check_ids=[check.id], fix=True, trigger="admin-repair", requested_by=_user(request)
            )
            if created:
                message, level = f"Repair of {check.id} queued as run {run.pk}.", messages.SUCCESS
            else:
                message, level = (
                    f"A repair of {check.id} is already {run.status} (run {run.pk}): "
                    "showing it instead of starting another.",
                    messages.WARNING,
                )
            self.message_user(request, message, level)
            return HttpResponseRedirect(_run_url(run))
        return self._repair_confirmation(request, check)

    def _repair_confirmation(self, request: HttpRequest, check: IntegrityCheck) -> HttpResponse:
        evaluation = evaluate_check(check)
        preview: int | None = None
        preview_error = ""
        is_preview_out_of_time = False
        try:
            preview = integrity_repair_preview(check=check, seconds=REPAIR_PREVIEW_SECONDS)
        except PreviewOutOfTime:
            logger.warning("dry run of the repair of %s ran out of time", check.id)
            is_preview_out_of_time = True
        except Exception:
            logger.exception("dry run of the repair of %s failed", check.id)
            preview_error = "The dry run failed; the logs have the details."
        context = {
            "check": check,
            "evaluation": evaluation,
            "badge": status_badge(evaluation.status),
            "samples": sample_links(
                check, evaluation.outcome.sample_ids if evaluation.outcome else []
            ),
            "is_failing": evaluation.status in FAILING_STATUSES,
            "preview": preview,
            "preview_error": preview_error,
            "is_preview_out_of_time": is_preview_out_of_time,
            "preview_seconds": REPAIR_PREVIEW_SECONDS,
            # Why a preview of 0 is 0, when the check's app can tell (a flag off).
            "blocked_reason": (
                check.repair_blocked_reason()
                if check.repair_blocked_reason and not preview
                else None
            ),
        }
        return model_page_response(
            self, request, template=REPAIR_TEMPLATE, title=f"Repair {check.id}", context=context
        )


def _user(request: HttpRequest) -> User | None:
    return request.user if isinstance(request.user, User) else None


def _run_url(run: IntegrityRun) -> str:
    return reverse("admin:evoflow_integrityrun_change", args=[run.pk])
