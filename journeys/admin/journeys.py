"""The journeys' pages: the flow drawn as a diagram, then edited as indented JSON."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from evoflow.admin_base import NoDeleteMixin
from evoflow.admin_display import (
    admin_time,
    status_badge,
)
from journeys import selectors, services
from journeys.admin.base import ServiceWritesAdmin, storable
from journeys.flow_diagram import NodeCounts, flow_diagram_svg
from journeys.flows.flow import FlowInvalid
from journeys.models import (
    LIVE_STATUSES,
    Journey,
    SessionStatus,
)
from journeys.permissions import HttpRequestNodePermissionRequired, http_request_nodes_check
from journeys.services.journeys import EDITABLE_FIELDS as JOURNEY_EDITABLE_FIELDS


class PrettyJSONField(forms.JSONField):
    """A JSON field shown indented, one key per line, so a flow can be read and edited."""

    def prepare_value(self, value: Any) -> str:
        if isinstance(value, forms.fields.InvalidJSONInput):
            return value
        return json.dumps(value, ensure_ascii=False, indent=2, cls=self.encoder)


JSON_TEXTAREA = forms.Textarea(
    attrs={"rows": 24, "style": "font-family: monospace; width: 100%; box-sizing: border-box"}
)


class JourneyForm(forms.ModelForm):
    class Meta:
        model = Journey
        # Exactly what the journey services accept.
        fields = JOURNEY_EDITABLE_FIELDS
        field_classes = {
            "flow": PrettyJSONField,
            "triggers": PrettyJSONField,
            "default_variables": PrettyJSONField,
        }
        widgets = {
            "flow": JSON_TEXTAREA,
            "triggers": forms.Textarea(attrs={"rows": 6, "style": "font-family: monospace"}),
            "default_variables": forms.Textarea(
                attrs={"rows": 6, "style": "font-family: monospace"}
            ),
        }

    # Validation happens in Journey.clean (the shared flow validator), which ModelForm runs:
    # its messages name the node and land on the "flow" field. What jsonb cannot store is
    # refused first, as in the API.
    # Set by JourneyAdmin.get_form: whose edit this is (http_request nodes need a permission).
    request_user: Any = None

    def clean_flow(self) -> Any:
        flow = storable(self.cleaned_data.get("flow"))
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
        return storable(self.cleaned_data.get("triggers"))

    def clean_default_variables(self) -> Any:
        return storable(self.cleaned_data.get("default_variables"))


def svg_safe(svg: str) -> Any:
    # flow_diagram_svg escapes every text it writes (node ids, types, handles, links).
    from django.utils.safestring import mark_safe

    return mark_safe(svg)  # noqa: S308 - built from escaped parts only


def node_sessions_link(*, journey_id: int, failed_since: Any) -> Callable[[str, str], str]:
    """The admin list of a node's live sessions, or of those that failed there since
    `failed_since`: what the diagram counts."""
    base = reverse("admin:journeys_journeysession_changelist")

    def link(node_id: str, which: str) -> str:
        query: dict[str, str] = {"journey__id__exact": str(journey_id), "current_node_id": node_id}
        if which == "live":
            query["status__in"] = ",".join(LIVE_STATUSES)
        else:
            query["status__exact"] = SessionStatus.FAILED
            query["finished_at__gte"] = failed_since.isoformat()
        return f"{base}?{urlencode(query)}"

    return link


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
        "updated",
    )
    list_filter = ("is_active", "allow_reentry")
    search_fields = ("name",)
    readonly_fields = ("flow_diagram", "version", "created_at", "updated_at", "session_counts")

    def get_form(
        self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any
    ) -> Any:
        form = super().get_form(request, obj, change=change, **kwargs)
        form.request_user = request.user  # type: ignore[attr-defined]
        return form

    @admin.display(description="updated", ordering="updated_at")
    def updated(self, journey: Journey) -> str:
        return admin_time(journey.updated_at)

    @admin.display(description="flow diagram")
    def flow_diagram(self, journey: Journey) -> str:
        if journey.pk is None:
            return "-"
        now = timezone.now().replace(microsecond=0)
        since = now - timedelta(hours=24)
        counts = {
            node_id: NodeCounts(live=live, failed_24h=failed)
            for node_id, (live, failed) in selectors.session_counts_by_node(
                journey_id=journey.pk, failed_since=since
            ).items()
        }
        try:
            svg = flow_diagram_svg(
                flow=journey.flow,
                counts=counts,
                links=node_sessions_link(journey_id=journey.pk, failed_since=since),
                title=f"Flow of {journey.name}",
            )
        except FlowInvalid as error:
            return format_html('<p class="errornote">The stored flow is invalid: {}</p>', error)
        return format_html('<div style="overflow-x:auto">{}</div>', svg_safe(svg))

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        # The diagram and the sessions above the JSON they are drawn from.
        if obj is None:
            return JourneyForm.Meta.fields
        return (
            "name",
            "description",
            "is_active",
            "allow_reentry",
            "flow_diagram",
            "session_counts",
            "flow",
            "triggers",
            "default_variables",
            "version",
            "created_at",
            "updated_at",
        )

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
        counts = selectors.session_status_counts(journey_id=journey.pk)
        sessions = reverse("admin:journeys_journeysession_changelist")
        return (
            format_html_join(
                " ",
                '<a href="{}?journey__id__exact={}&status__exact={}" data-status="{}">{} {}</a>',
                (
                    (sessions, journey.pk, status, status, status_badge(status), count)
                    for status, count in counts.items()
                    if count
                ),
            )
            or "no sessions yet"
        )

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
