"""The sessions' pages: the list, the timeline, and the actions of a session's status as
buttons (each confirmed) and as list actions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html

from evoflow.admin_base import NoAddMixin, NoChangeMixin, NoDeleteMixin, model_page_response
from evoflow.admin_display import (
    admin_duration_ms,
    admin_time,
    plural,
    pretty_json,
    short_id,
    status_badge,
    truncated,
)
from evoflow.admin_lists import HugeTableMixin, pk_or_none
from journeys import selectors, services
from journeys.admin.base import ServiceWritesAdmin, storable
from journeys.integrity import OVERDUE_MINUTES
from journeys.models import (
    LIVE_STATUSES,
    JourneySession,
    JourneyStep,
    SessionStatus,
)
from journeys.services import JourneyError

BULK_CONFIRM_TEMPLATE = "admin/journeys/journeysession/bulk_confirm.html"
SESSION_CONFIRM_TEMPLATE = "admin/journeys/journeysession/action_confirm.html"


@dataclass(frozen=True)
class SessionAction:
    """A button of the session page: the statuses it applies to, the service it calls, and
    the message it leaves."""

    label: str
    past: str
    question: str
    statuses: tuple[str, ...]
    run: Callable[[int], Any]
    done: Callable[[int, Any], str]


def _retried(old_id: int, new_id: Any) -> str:
    return format_html(
        'Session {} retried as <a href="{}" data-testid="retried-session">session {}</a>, '
        "from the node where it failed.",
        old_id,
        reverse("admin:journeys_journeysession_change", args=[new_id]),
        new_id,
    )


SESSION_ACTIONS: dict[str, SessionAction] = {
    "retry": SessionAction(
        label="Retry",
        past="retried",
        question="Start a new session of this journey for this contact, from the node where "
        "this one failed, with its variables? This failed session stays as it is.",
        statuses=(SessionStatus.FAILED,),
        run=lambda pk: services.session_retry(session_id=pk),
        done=_retried,
    ),
    "pause": SessionAction(
        label="Pause",
        past="paused",
        question="Pause this session? It stops where it is until it is resumed; a wait that "
        "ends meanwhile is taken up on resume.",
        statuses=(SessionStatus.ACTIVE, SessionStatus.WAITING),
        run=lambda pk: services.session_pause(session_id=pk),
        done=lambda pk, _: f"Session {pk} paused.",
    ),
    "resume": SessionAction(
        label="Resume",
        past="resumed",
        question="Resume this session? It goes back to its wait, or on to its next node.",
        statuses=(SessionStatus.PAUSED,),
        run=lambda pk: services.session_resume(session_id=pk),
        done=lambda pk, session: f"Session {pk} resumed ({session.status}).",
    ),
    "cancel": SessionAction(
        label="Cancel",
        past="cancelled",
        question="Cancel this session? A cancelled session is final: it never runs again.",
        statuses=LIVE_STATUSES,
        run=lambda pk: services.session_cancel(session_id=pk),
        done=lambda pk, _: f"Session {pk} cancelled.",
    ),
}


def session_actions_for(session: JourneySession) -> list[str]:
    """The buttons that apply to the session's status, in the order they are shown."""
    return [name for name, spec in SESSION_ACTIONS.items() if session.status in spec.statuses]


class JourneyStepInline(NoAddMixin, NoChangeMixin, admin.TabularInline):
    """The session's timeline: one row per step, read-only."""

    model = JourneyStep
    verbose_name = "step"
    verbose_name_plural = "timeline"
    fields = (
        "step_number",
        "node_id",
        "node_type",
        "status_badge",
        "attempt",
        "started",
        "duration",
        "result_pretty",
        "error_pretty",
        "key",
    )
    readonly_fields = fields

    @admin.display(description="status")
    def status_badge(self, step: JourneyStep) -> str:
        return status_badge(step.status)

    @admin.display(description="started")
    def started(self, step: JourneyStep) -> str:
        return admin_time(step.started_at)

    @admin.display(description="duration")
    def duration(self, step: JourneyStep) -> str:
        return admin_duration_ms(step.duration_ms)

    @admin.display(description="result")
    def result_pretty(self, step: JourneyStep) -> str:
        return pretty_json(step.result)

    @admin.display(description="error")
    def error_pretty(self, step: JourneyStep) -> str:
        return pretty_json(step.error)

    @admin.display(description="idempotency key")
    def key(self, step: JourneyStep) -> str:
        return truncated(step.idempotency_key, length=24)

    ordering = ("step_number",)
    extra = 0
    can_delete = False


class SessionStartForm(forms.ModelForm):
    """Start a journey for a contact by hand (the admin's manual trigger)."""

    contact_uuid = forms.CharField(label="Contact id (UUID)")
    start_variables = forms.JSONField(label="Variables", required=False, initial=dict)

    class Meta:
        model = JourneySession
        fields = ("journey",)

    def clean_contact_uuid(self) -> str:
        value = self.cleaned_data["contact_uuid"].strip()
        try:
            services.contact_id_parse(value)
        except JourneyError as error:
            raise forms.ValidationError(error.detail) from error
        return value

    def clean_start_variables(self) -> dict[str, Any]:
        value = self.cleaned_data.get("start_variables") or {}
        if not isinstance(value, dict):
            raise forms.ValidationError("Variables must be a JSON object.")
        return storable(value)

    def _post_clean(self) -> None:
        # The session is created by the service, not by validating a model instance here.
        pass


class OverdueFilter(admin.SimpleListFilter):
    """The sessions the integrity check `journeys.sessions_overdue` counts (the same selector)."""

    title = "overdue"
    parameter_name = "overdue"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", f"overdue by more than {OVERDUE_MINUTES} minutes (waiting or stalled)")]

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[JourneySession]
    ) -> QuerySet[JourneySession]:
        if self.value() == "yes":
            # The selector's conditions joined to the list's, not an IN (subquery): the planner
            # then reads the two partial indexes of live sessions instead of walking the table.
            return queryset & selectors.sessions_overdue(now=timezone.now())
        return queryset


@admin.register(JourneySession)
class JourneySessionAdmin(NoDeleteMixin, HugeTableMixin, ServiceWritesAdmin):
    service_error_prefix = "Not started"
    list_display = (
        "id",
        "journey",
        "contact_short",
        "status_badge",
        "current_node_id",
        "step_count",
        "wait_until_time",
        "updated",
    )
    list_filter = (
        "status",
        OverdueFilter,
        "journey",
        ("wait_until", admin.EmptyFieldListFilter),
    )
    search_fields = ("=contact__id", "=id")
    list_select_related = ("journey",)
    inlines = (JourneyStepInline,)
    actions = ("retry_failed_sessions", "cancel_sessions")
    change_form_template = "admin/journeys/journeysession/change_form.html"
    readonly_fields = (
        "journey",
        "contact",
        "status_badge",
        "current_node_id",
        "step_count",
        "variables_pretty",
        "context_pretty",
        "wait_event",
        "wait_filters_pretty",
        "wait_until",
        "lease_until",
        "error_pretty",
        "ended_reason",
        "created_at",
        "updated_at",
        "finished_at",
    )

    @admin.display(description="contact", ordering="contact_id")
    def contact_short(self, session: JourneySession) -> str:
        return short_id(session.contact_id)

    @admin.display(description="status", ordering="status")
    def status_badge(self, session: JourneySession) -> str:
        return status_badge(session.status)

    @admin.display(description="wait until", ordering="wait_until")
    def wait_until_time(self, session: JourneySession) -> str:
        return admin_time(session.wait_until)

    @admin.display(description="updated", ordering="updated_at")
    def updated(self, session: JourneySession) -> str:
        return admin_time(session.updated_at)

    @admin.display(description="variables")
    def variables_pretty(self, session: JourneySession) -> str:
        return pretty_json(session.variables)

    @admin.display(description="context")
    def context_pretty(self, session: JourneySession) -> str:
        return pretty_json(session.context)

    @admin.display(description="wait filters")
    def wait_filters_pretty(self, session: JourneySession) -> str:
        return pretty_json(session.wait_filters)

    @admin.display(description="error")
    def error_pretty(self, session: JourneySession) -> str:
        return pretty_json(session.error)

    def get_form(
        self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any
    ) -> Any:
        if obj is None:
            kwargs["form"] = SessionStartForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return self.readonly_fields if obj is not None else ()

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None:
            return ("journey", "contact_uuid", "start_variables")
        return self.readonly_fields

    def get_inlines(self, request: HttpRequest, obj: Any) -> Any:
        return self.inlines if obj is not None else ()

    def save_model(
        self, request: HttpRequest, obj: JourneySession, form: Any, change: bool
    ) -> None:
        if change:
            return  # nothing is editable; status changes are actions
        session_id = services.session_start_in_transaction(
            journey_id=form.cleaned_data["journey"].pk,
            contact_id=form.cleaned_data["contact_uuid"],
            variables=form.cleaned_data["start_variables"],
            source="admin",
        )
        obj.pk = session_id

    # Actions run in the changelist view, which holds no transaction: each session is its own
    # durable service call, so one refusal does not undo the others.
    def _each(
        self,
        request: HttpRequest,
        sessions: QuerySet[JourneySession],
        action: Any,
        verb: str,
        *,
        reason_if_none: str = "no session was selected.",
    ) -> list[Any]:
        done, refused, results = 0, [], []
        for session_id in sessions.order_by("id").values_list("id", flat=True):
            try:
                results.append((session_id, action(session_id=session_id)))
            except JourneyError as error:
                refused.append(f"Session {session_id}: {error.detail}")
            else:
                done += 1
        if done:
            self.message_user(request, f"{verb} {plural(done, 'session')}.", messages.SUCCESS)
        for line in refused:
            self.message_user(request, line, messages.WARNING)
        if not done and not refused:
            self.message_user(request, f"{verb} nothing: {reason_if_none}", messages.WARNING)
        return results

    # Actions change sessions: the change permission, as the API's pause/resume/cancel.
    @admin.action(
        description="Retry failed sessions (a new session from the failed node; asks to confirm)",
        permissions=["change"],
    )
    def retry_failed_sessions(
        self, request: HttpRequest, queryset: QuerySet[JourneySession]
    ) -> HttpResponse | None:
        failed = queryset.filter(status=SessionStatus.FAILED)
        skipped = queryset.count() - failed.count()
        if "confirm" not in request.POST:
            left_alone = f" {plural(skipped, 'selected session')} not failed: left alone."
            return self._bulk_confirmation(
                request,
                queryset,
                action="retry_failed_sessions",
                title="Retry failed sessions",
                question=(
                    f"Start {plural(failed.count(), 'new session')} from the node where each "
                    "failed session stopped?" + (left_alone if skipped else "")
                ),
            )
        results = self._each(
            request,
            failed,
            services.session_retry,
            "Retried",
            reason_if_none="none of the selected sessions has failed (only a failed session "
            "can be retried).",
        )
        for old_id, new_id in results:
            self.message_user(
                request,
                format_html(
                    'Session {} retried as <a href="{}">session {}</a>.',
                    old_id,
                    reverse("admin:journeys_journeysession_change", args=[new_id]),
                    new_id,
                ),
                messages.SUCCESS,
            )
        if skipped and results:
            self.message_user(
                request,
                f"{plural(skipped, 'selected session')} not failed: left alone.",
                messages.WARNING,
            )
        return None

    @admin.action(description="Cancel sessions (asks to confirm)", permissions=["change"])
    def cancel_sessions(
        self, request: HttpRequest, queryset: QuerySet[JourneySession]
    ) -> HttpResponse | None:
        if "confirm" not in request.POST:
            return self._bulk_confirmation(
                request,
                queryset,
                action="cancel_sessions",
                title="Cancel sessions",
                question="Cancel these sessions? A cancelled session is final: it never runs "
                "again (a finished one is left as it is).",
            )
        self._each(request, queryset, services.session_cancel, "Cancelled")
        return None

    def _bulk_confirmation(
        self,
        request: HttpRequest,
        queryset: QuerySet[JourneySession],
        *,
        action: str,
        title: str,
        question: str,
    ) -> HttpResponse:
        return model_page_response(
            self,
            request,
            template=BULK_CONFIRM_TEMPLATE,
            title=title,
            context={
                "question": question,
                "objects": list(queryset.select_related("journey").order_by("id")[:100]),
                "object_count": queryset.count(),
                "selected_ids": [str(pk) for pk in queryset.values_list("pk", flat=True)],
                "action": action,
                "action_checkbox_name": ACTION_CHECKBOX_NAME,
            },
        )

    # -- the session page's buttons ----------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        own = [
            path(
                "<str:object_id>/do/<str:action>/",
                self.admin_site.admin_view(self.session_action_view),
                name="journeys_journeysession_do",
            )
        ]
        return own + super().get_urls()

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        pk = pk_or_none(object_id)
        session = self.get_queryset(request).filter(pk=pk).first() if pk is not None else None
        context = dict(extra_context or {})
        if session is not None and self.has_change_permission(request, session):
            context["session_actions"] = [
                (name, SESSION_ACTIONS[name].label) for name in session_actions_for(session)
            ]
        return super().change_view(request, object_id, form_url, extra_context=context)

    def session_action_view(
        self, request: HttpRequest, object_id: str, action: str
    ) -> HttpResponse:
        spec = SESSION_ACTIONS.get(action)
        pk = pk_or_none(object_id)
        session = self.get_queryset(request).filter(pk=pk).first() if pk is not None else None
        if spec is None or session is None:
            raise Http404("No such session or action.")
        if not self.has_change_permission(request, session):
            raise PermissionDenied
        page = reverse("admin:journeys_journeysession_change", args=[session.pk])
        if request.method == "POST":
            try:
                result = spec.run(session.pk)
            except JourneyError as error:
                self.message_user(request, f"Not done: {error.detail}", messages.WARNING)
            else:
                self.message_user(request, spec.done(session.pk, result), messages.SUCCESS)
            return HttpResponseRedirect(page)
        if action not in session_actions_for(session):
            self.message_user(
                request,
                f"Session {session.pk} is {session.status}: it cannot be {spec.past}.",
                messages.WARNING,
            )
            return HttpResponseRedirect(page)
        return model_page_response(
            self,
            request,
            template=SESSION_CONFIRM_TEMPLATE,
            title=f"{spec.label} session {session.pk}",
            context={"session": session, "spec": spec, "session_url": page},
        )
