"""Admin for events, guests, deliveries, the link audit and the feature flags.

Thin: every change goes through `deliveries.services`. Actions that change who may read
messages (linking guests, flipping a flag) show a confirmation page first. Guests, messages,
deliveries and the audit grow without bound: their lists count with the huge-table paginator
(evoflow.admin_lists).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.widgets import AutocompleteSelect
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html

from deliveries import selectors, services
from deliveries.models import (
    LINK_REASONS,
    Event,
    EventGuest,
    FeatureFlag,
    Message,
    MessageDelivery,
    UserLinkAudit,
)
from deliveries.permissions import LINK_GUEST_PERMISSION
from evoflow.admin_base import NoAddMixin, NoDeleteMixin, ReadOnlyAdmin, model_page_response
from evoflow.admin_display import admin_time, plural, status_badge
from evoflow.admin_lists import HugeTableMixin, QueryStringCheckedAdmin, since_filter
from evoflow.models import User

CONFIRM_TEMPLATE = "admin/deliveries/action_confirm.html"
BACKFILL_PREVIEW_ROWS = 20


def _confirmation_page(
    request: HttpRequest,
    model_admin: admin.ModelAdmin,
    queryset: QuerySet,
    *,
    action: str,
    title: str,
    question: str,
    form: forms.Form | None = None,
    extra: dict[str, Any] | None = None,
) -> TemplateResponse:
    context = {
        **(extra or {}),
        "question": question,
        "objects": list(queryset[:100]),
        "object_count": queryset.count(),
        "selected_ids": [str(pk) for pk in queryset.values_list("pk", flat=True)],
        "action": action,
        "form": form,
        "action_checkbox_name": ACTION_CHECKBOX_NAME,
    }
    return model_page_response(
        model_admin, request, template=CONFIRM_TEMPLATE, title=title, context=context
    )


def _actor(request: HttpRequest) -> User | None:
    return request.user if isinstance(request.user, User) else None


# -- events ---------------------------------------------------------------------------------------


class EventGuestInline(NoAddMixin, admin.TabularInline):
    model = EventGuest
    fields = ("name", "phone", "phone_e164", "user", "removed_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True


@admin.register(Event)
class EventAdmin(QueryStringCheckedAdmin):
    list_display = ("id", "name", "starts_at", "host", "created_at")
    search_fields = ("name", "host__username")
    date_hierarchy = "starts_at"
    raw_id_fields = ("host",)
    readonly_fields = ("created_at",)
    inlines = [EventGuestInline]
    list_select_related = ("host",)


# -- guests ---------------------------------------------------------------------------------------


class GuestLinkStateFilter(admin.SimpleListFilter):
    title = "link state"
    parameter_name = "link_state"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [
            ("linked", "linked (active)"),
            ("unlinked", "unlinked (active)"),
            ("removed", "removed"),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "linked":
            return queryset.filter(user__isnull=False, removed_at__isnull=True)
        if self.value() == "unlinked":
            return queryset.filter(user__isnull=True, removed_at__isnull=True)
        if self.value() == "removed":
            return queryset.filter(removed_at__isnull=False)
        return queryset


class GuestLinkForm(forms.Form):
    user = forms.ModelChoiceField(
        queryset=User.objects.filter(is_active=True),
        # Searched by username, name, email or phone (the users admin's search fields).
        widget=AutocompleteSelect(EventGuest._meta.get_field("user"), admin.site),
        help_text="type a name, username, email or phone number to find the user",
        error_messages={"invalid_choice": "That user does not exist or is not active."},
    )
    relink = forms.BooleanField(
        required=False,
        help_text=(
            "also move guests already linked to another user (and their deliveries) to this one"
        ),
    )


@admin.register(EventGuest)
class EventGuestAdmin(NoAddMixin, HugeTableMixin, QueryStringCheckedAdmin):
    list_display = ("id", "name", "phone_e164", "event", "user", "removed")
    list_filter = (GuestLinkStateFilter,)
    search_fields = ("name", "phone", "phone_e164", "event__name")
    list_select_related = ("event", "user")
    # Read-only: guests change through the API and the actions here, which call the services
    # (the change form's own transaction could not hold their durable ones).
    readonly_fields = (
        "event",
        "name",
        "phone",
        "phone_e164",
        "user",
        "removed_at",
        "created_at",
        "updated_at",
    )
    actions = ["link_to_user"]

    @admin.display(description="removed", ordering="removed_at")
    def removed(self, guest: EventGuest) -> str:
        return admin_time(guest.removed_at)

    def has_link_guest_to_any_user_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(LINK_GUEST_PERMISSION)

    # Linking decides who reads the guests' messages: an operator permission of its own.
    @admin.action(
        description="Link selected guests to a user (asks to confirm)",
        permissions=["link_guest_to_any_user"],
    )
    def link_to_user(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        form = GuestLinkForm(request.POST if "confirm" in request.POST else None)
        if "confirm" not in request.POST or not form.is_valid():
            guest_ids = list(queryset.values_list("pk", flat=True))
            backfill = selectors.deliveries_to_backfill_for_guests(guest_ids=guest_ids)
            return _confirmation_page(
                request,
                self,
                queryset,
                action="link_to_user",
                title="Link guests to a user",
                question=(
                    "Their deliveries without a user get that user, and the user can read them."
                ),
                form=form,
                extra={
                    "backfill_count": backfill.count(),
                    "backfill_rows": list(backfill[:BACKFILL_PREVIEW_ROWS]),
                    "already_linked": list(
                        queryset.filter(user__isnull=False).select_related("user")[:100]
                    ),
                },
            )
        user, relink = form.cleaned_data["user"], form.cleaned_data["relink"]
        # The audit rows of this link are those of these guests after the newest row now (ids,
        # not times: the rows carry the database's transaction time, not this server's clock).
        audit_before = UserLinkAudit.objects.order_by("-id").values_list("id", flat=True).first()
        guest_ids = []
        linked = skipped = 0
        for guest in queryset.order_by("pk"):
            if guest.user_id is not None and guest.user_id != user.pk and not relink:
                skipped += 1
                continue
            if relink:
                services.guest_relink_user(guest=guest, user=user, actor=_actor(request))
            else:
                services.guest_link_user(guest=guest, user=user, actor=_actor(request))
            guest_ids.append(guest.pk)
            linked += 1
        if linked:
            audit = (
                reverse("admin:deliveries_userlinkaudit_changelist")
                + "?"
                + urlencode(
                    {
                        "guest__id__in": ",".join(str(pk) for pk in guest_ids),
                        "id__gt": audit_before or 0,
                    }
                )
            )
            self.message_user(
                request,
                format_html(
                    '{} linked to {} (user {}). <a href="{}" data-testid="link-audit">'
                    "See the audit rows of this link</a>.",
                    plural(linked, "guest"),
                    user,
                    user.pk,
                    audit,
                ),
                messages.SUCCESS,
            )
        if skipped:
            self.message_user(
                request,
                f"{plural(skipped, 'guest')} already linked to another user "
                f"{'was' if skipped == 1 else 'were'} left alone (tick 'relink' to move them).",
                messages.WARNING,
            )
        return None


# -- messages and deliveries ----------------------------------------------------------------------


@admin.register(Message)
class MessageAdmin(NoAddMixin, HugeTableMixin, QueryStringCheckedAdmin):
    list_display = ("id", "event", "sender", "created_at")
    search_fields = ("body", "event__name")
    list_select_related = ("event", "sender")
    readonly_fields = ("event", "sender", "body", "created_at")


class InconsistentFilter(admin.SimpleListFilter):
    title = "consistency"
    parameter_name = "consistency"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("inconsistent", "inconsistent (no user, guest linked)")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "inconsistent":
            # The selector's conditions joined in, not `pk IN (selector)`: planned on stale
            # statistics (a table analysed while empty), the IN form became a nested semi-join
            # that ran past the statement timeout on 1,000 rows; the join stays a single loop.
            return queryset & selectors.deliveries_inconsistent()
        return queryset


@admin.register(MessageDelivery)
class MessageDeliveryAdmin(NoAddMixin, HugeTableMixin, QueryStringCheckedAdmin):
    list_display = ("id", "message", "guest", "user", "phone_e164", "status_badge", "created")
    list_filter = (InconsistentFilter, "status")
    search_fields = ("phone_e164", "guest__name")
    list_select_related = ("message", "guest", "user")
    readonly_fields = [field.name for field in MessageDelivery._meta.fields]
    actions = ["backfill_selected"]

    @admin.display(description="status", ordering="status")
    def status_badge(self, delivery: MessageDelivery) -> str:
        return status_badge(delivery.status)

    @admin.display(description="created", ordering="created_at")
    def created(self, delivery: MessageDelivery) -> str:
        return admin_time(delivery.created_at)

    @admin.action(
        description="Backfill the user of selected deliveries (asks to confirm)",
        permissions=["change"],
    )
    def backfill_selected(self, request: HttpRequest, queryset: QuerySet) -> Any:
        if "confirm" not in request.POST:
            return _confirmation_page(
                request,
                self,
                queryset,
                action="backfill_selected",
                title="Backfill deliveries",
                question="Give each selected delivery without a user its guest's user (or its "
                "phone's single user, where the fallback flag allows), audited? That user can "
                "then read the message.",
            )
        outcomes = services.deliveries_backfill_selected(
            delivery_ids=list(queryset.values_list("pk", flat=True)), actor=_actor(request)
        )
        summary = ", ".join(
            f"{plural(count, 'delivery', 'deliveries')} {outcome}"
            for outcome, count in sorted(outcomes.items())
        )
        self.message_user(
            request,
            f"Backfill: {summary}." if summary else "Every selected delivery already has a user.",
            messages.SUCCESS,
        )
        return None


# -- the audit log --------------------------------------------------------------------------------


class LinkReasonFilter(admin.SimpleListFilter):
    """The audit's `details.reason` (why `no_match`, why `skipped`...), the names the
    requirements' runbook searches for (`?reason=ambiguous_users`)."""

    title = "reason"
    parameter_name = "reason"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [(reason, reason.replace("_", " ")) for reason in LINK_REASONS]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() in LINK_REASONS:
            return queryset.filter(details__reason=self.value())
        return queryset


@admin.register(UserLinkAudit)
class UserLinkAuditAdmin(HugeTableMixin, ReadOnlyAdmin):
    list_display = (
        "id",
        "created",
        "outcome_badge",
        "reason",
        "method",
        "delivery_id",
        "guest_id",
        "user_id",
    )
    list_filter = (
        "outcome",
        LinkReasonFilter,
        "method",
        ("created_at", admin.DateFieldListFilter),
        since_filter(field_name="created_at", parameter_name="created_since"),
    )
    search_fields = ("=delivery__id", "=guest__id", "=user__id")
    readonly_fields = [field.name for field in UserLinkAudit._meta.fields]
    # No date_hierarchy: on every page view it reads the min and max created_at and the distinct
    # years or months of the whole table, a scan of every row (a BRIN index cannot answer them).
    change_list_template = "admin/deliveries/userlinkaudit/change_list.html"

    @admin.display(description="created", ordering="created_at")
    def created(self, audit: UserLinkAudit) -> str:
        return admin_time(audit.created_at)

    @admin.display(description="outcome", ordering="outcome")
    def outcome_badge(self, audit: UserLinkAudit) -> str:
        return status_badge(audit.outcome)

    @admin.display(description="reason")
    def reason(self, audit: UserLinkAudit) -> str:
        return str(audit.details.get("reason", "")) if isinstance(audit.details, dict) else ""

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        extra_context = {
            **(extra_context or {}),
            "outcome_counts_24h": selectors.link_audit_outcome_counts(),
        }
        return super().changelist_view(request, extra_context=extra_context)


# -- feature flags --------------------------------------------------------------------------------


@admin.register(FeatureFlag)
class FeatureFlagAdmin(NoAddMixin, NoDeleteMixin, QueryStringCheckedAdmin):
    list_display = ("name", "enabled", "updated_by", "updated_at", "description")
    list_select_related = ("updated_by",)
    # Flags change only through the confirmed actions, which record who and when.
    readonly_fields = ("name", "enabled", "description", "updated_by", "updated_at")
    fields = readonly_fields
    actions = ["turn_on", "turn_off"]

    def _switch(self, request: HttpRequest, queryset: QuerySet, *, enabled: bool) -> Any:
        word = "on" if enabled else "off"
        if "confirm" not in request.POST:
            return _confirmation_page(
                request,
                self,
                queryset,
                action=f"turn_{word}",
                title=f"Turn feature flags {word}",
                question=(
                    f"Turn these flags {word}? Linking changes with the very next delivery, "
                    "on every server, without a restart."
                ),
            )
        for flag in queryset.order_by("name"):
            services.feature_flag_set(name=flag.name, enabled=enabled, actor=_actor(request))
        self.message_user(
            request, f"{plural(queryset.count(), 'flag')} turned {word}.", messages.SUCCESS
        )
        return None

    @admin.action(description="Turn selected flags on (asks to confirm)", permissions=["change"])
    def turn_on(self, request: HttpRequest, queryset: QuerySet) -> Any:
        return self._switch(request, queryset, enabled=True)

    @admin.action(description="Turn selected flags off (asks to confirm)", permissions=["change"])
    def turn_off(self, request: HttpRequest, queryset: QuerySet) -> Any:
        return self._switch(request, queryset, enabled=False)
