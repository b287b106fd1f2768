"""The journeys admin: thin, every write through the services.

Journeys are edited as JSON with the flow validator's messages shown on the field; sessions
are read-only with their step timeline inline and actions that call the services; contacts
are read-only with a "stub, not yet enriched" filter. The session and contact lists count their
rows with the huge-table paginator (evoflow.admin_lists): both tables grow without bound.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.utils import timezone

from evoflow.admin_base import NoAddMixin, NoChangeMixin, NoDeleteMixin
from evoflow.admin_lists import HugeTableMixin, QueryStringCheckedAdmin
from evoflow.jsonvalues import UnstorableJson, json_value_check
from journeys import selectors, services
from journeys.integrity import OVERDUE_MINUTES
from journeys.models import Contact, Journey, JourneySession, JourneyStep, SessionStatus
from journeys.permissions import HttpRequestNodePermissionRequired, http_request_nodes_check
from journeys.services import JourneyError
from journeys.services.journeys import EDITABLE_FIELDS as JOURNEY_EDITABLE_FIELDS


class ServiceWritesAdmin(QueryStringCheckedAdmin):
    """Every write goes through a service, inside the change form's own atomic block.

    That block is the admin's transaction, so `save_model` calls the services'
    `*_in_transaction` variants (their durable entry points refuse to run nested) and the
    enqueued tasks commit or roll back with it. A domain error the form could not foresee
    (a race: the contact got a live session meanwhile) rolls the block back and is shown as
    a message instead of a server error.
    """

    service_error_prefix = "Not saved"

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except JourneyError as error:
            self.message_user(
                request, f"{self.service_error_prefix}: {error.detail}", messages.ERROR
            )
            return redirect(request.get_full_path())


class JourneyForm(forms.ModelForm):
    class Meta:
        model = Journey
        # Exactly what the journey services accept.
        fields = JOURNEY_EDITABLE_FIELDS
        widgets = {
            "flow": forms.Textarea(
                attrs={"rows": 24, "cols": 100, "style": "font-family: monospace"}
            ),
        }

    # Validation happens in Journey.clean (the shared flow validator), which ModelForm runs:
    # its messages name the node and land on the "flow" field. What jsonb cannot store is
    # refused first, as in the API.
    # Set by JourneyAdmin.get_form: whose edit this is (http_request nodes need a permission).
    request_user: Any = None

    def clean_flow(self) -> Any:
        flow = _storable(self.cleaned_data.get("flow"))
        if self.request_user is not None:
            try:
                http_request_nodes_check(
                    user=self.request_user,
                    flow=flow,
                    previous_flow=self.instance.flow if self.instance.pk else None,
                )
            except HttpRequestNodePermissionRequired as error:
                raise forms.ValidationError(error.detail) from error
        return flow

    def clean_triggers(self) -> Any:
        return _storable(self.cleaned_data.get("triggers"))

    def clean_default_variables(self) -> Any:
        return _storable(self.cleaned_data.get("default_variables"))


def _storable(value: Any) -> Any:
    try:
        json_value_check(value)
    except UnstorableJson as error:
        raise forms.ValidationError(str(error)) from error
    return value


@admin.register(Journey)
class JourneyAdmin(NoDeleteMixin, ServiceWritesAdmin):
    form = JourneyForm
    list_display = (
        "id",
        "name",
        "is_active",
        "allow_reentry",
        "version",
        "live_sessions",
        "updated_at",
    )
    list_filter = ("is_active", "allow_reentry")
    search_fields = ("name",)
    readonly_fields = ("version", "created_at", "updated_at", "session_counts")

    def get_form(
        self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any
    ) -> Any:
        form = super().get_form(request, obj, change=change, **kwargs)
        form.request_user = request.user  # type: ignore[attr-defined]
        return form

    def get_queryset(self, request: HttpRequest) -> QuerySet[Journey]:
        # One query for the whole changelist page, not one count per row.
        return selectors.journeys_with_live_session_count(super().get_queryset(request))

    @admin.display(description="live sessions", ordering="live_session_count")
    def live_sessions(self, journey: Journey) -> int:
        return journey.live_session_count  # type: ignore[attr-defined]

    @admin.display(description="sessions by status")
    def session_counts(self, journey: Journey) -> str:
        if journey.pk is None:
            return "-"
        return json.dumps(selectors.session_status_counts(journey_id=journey.pk))

    def save_model(
        self, request: HttpRequest, obj: Journey, form: forms.ModelForm, change: bool
    ) -> None:
        fields = {name: form.cleaned_data[name] for name in JourneyForm.Meta.fields}
        if change:
            changed = {name: value for name, value in fields.items() if name in form.changed_data}
            saved = services.journey_update_in_transaction(journey_id=obj.pk, **changed)
        else:
            saved = services.journey_create_in_transaction(**fields)
        obj.pk = saved.pk
        obj.version = saved.version
        obj.created_at = saved.created_at
        obj.updated_at = saved.updated_at


class JourneyStepInline(NoAddMixin, NoChangeMixin, admin.TabularInline):
    model = JourneyStep
    fields = (
        "step_number",
        "node_id",
        "node_type",
        "status",
        "attempt",
        "started_at",
        "finished_at",
        "duration_ms",
        "result",
        "error",
        "idempotency_key",
    )
    readonly_fields = fields
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
        return _storable(value)

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
        "contact_id",
        "status",
        "current_node_id",
        "step_count",
        "wait_until",
        "updated_at",
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
    readonly_fields = (
        "journey",
        "contact",
        "status",
        "current_node_id",
        "step_count",
        "variables",
        "context",
        "wait_event",
        "wait_filters",
        "wait_until",
        "lease_until",
        "error",
        "ended_reason",
        "created_at",
        "updated_at",
        "finished_at",
    )

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
        self, request: HttpRequest, sessions: QuerySet[JourneySession], action: Any, verb: str
    ) -> None:
        done, refused = 0, []
        for session_id in sessions.order_by("id").values_list("id", flat=True):
            try:
                action(session_id=session_id)
            except JourneyError as error:
                refused.append(f"{session_id}: {error.detail}")
            else:
                done += 1
        if done:
            self.message_user(request, f"{verb} {done} session(s).", messages.SUCCESS)
        for line in refused:
            self.message_user(request, line, messages.WARNING)

    # Actions change sessions: the change permission, as the API's pause/resume/cancel.
    @admin.action(
        description="Retry failed sessions (a new session from the failed node)",
        permissions=["change"],
    )
    def retry_failed_sessions(
        self, request: HttpRequest, queryset: QuerySet[JourneySession]
    ) -> None:
        self._each(
            request, queryset.filter(status=SessionStatus.FAILED), services.session_retry, "Retried"
        )

    @admin.action(description="Cancel sessions", permissions=["change"])
    def cancel_sessions(self, request: HttpRequest, queryset: QuerySet[JourneySession]) -> None:
        self._each(request, queryset, services.session_cancel, "Cancelled")


class StubFilter(admin.SimpleListFilter):
    title = "enrichment"
    parameter_name = "enrichment"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("stub", "stub, not yet enriched"), ("enriched", "enriched from the CRM")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Contact]) -> QuerySet[Contact]:
        if self.value() == "stub":
            return queryset.filter(crm_synced_at__isnull=True)
        if self.value() == "enriched":
            return queryset.filter(crm_synced_at__isnull=False)
        return queryset


@admin.register(Contact)
class ContactAdmin(NoAddMixin, NoDeleteMixin, HugeTableMixin, QueryStringCheckedAdmin):
    # Never added here: contacts come from the CRM, and the funnel creates stubs.
    list_display = ("id", "name", "email", "phone_e164", "crm_synced_at", "created_at")
    list_filter = (StubFilter, "is_blocked")
    search_fields = ("=id", "name", "email", "phone_e164")
    actions = ("enrich_from_crm",)
    readonly_fields = (
        "id",
        "name",
        "email",
        "phone",
        "phone_e164",
        "custom_attributes",
        "additional_attributes",
        "labels",
        "is_blocked",
        "crm_synced_at",
        "created_at",
        "updated_at",
    )

    @admin.action(description="Enrich from the CRM now", permissions=["change"])
    def enrich_from_crm(self, request: HttpRequest, queryset: QuerySet[Contact]) -> None:
        found = services.contacts_enrich(contact_ids=list(queryset.values_list("id", flat=True)))
        self.message_user(request, f"Enriched {found} contact(s) from the CRM.", messages.SUCCESS)
