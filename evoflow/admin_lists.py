"""Shared pieces of the admin lists the dashboard links to, for tables that grow without bound.

- `QueryStringCheckedAdmin`: the base of every ModelAdmin of the project. A changelist query
  string with a NUL character (which no PostgreSQL text value can hold) is the admin's "?e=1"
  error page, whatever filter or search box it was typed into, never a server error. A change
  page with nothing editable shows no "Save" buttons.
- `since_filter(...)`: a list filter "<time field> >= an ISO 8601 timestamp" (the dashboard's
  "in the last hour / 24 hours" links). A value that is not a timestamp is the admin's usual
  "?e=1" error page, never a server error.
- `ChosenOnlyRelatedFilter`: the foreign-key filter without the list of every related row: it
  keeps the `<field>__id__exact` parameter and shows only the chosen row.
- `HugeTablePaginator`: the changelist's row count without counting millions of rows. What the
  list's header and "select all" show:

  * no filter, and PostgreSQL's statistics say the table holds at least `ESTIMATE_FROM_ROWS`
    rows: the planner's estimate (pg_class.reltuples), shown as "~1,234,567";
  * otherwise: an exact count up to `EXACT_COUNT_LIMIT` rows, shown as is; past that the count
    stops at `EXACT_COUNT_LIMIT + 1` and shows as "10,000+". The pages then go as far as that
    number reaches: narrow the filter to see older rows.

  Lists that use it (through `HugeTableMixin`) also set `show_full_result_count = False`, so
  the unfiltered table is not counted either, and show no facet counts.

Importing this module also re-registers the admins that other packages register (django-q2's
tasks and schedules, Django's groups, DRF's tokens) on the base above, and django-q2's failed and
queued tasks with a `stopped_since` filter and the paginator above; the rest of their behaviour
is their package's, except that their task actions need the matching change and delete
permissions (`evoflow.admin_tasks`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import django_q.admin as django_q_admin
import rest_framework.authtoken.admin as authtoken_admin
from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.auth import admin as auth_admin
from django.contrib.auth.models import Group
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.functional import cached_property
from django_q.models import Failure, OrmQ, Schedule, Success
from rest_framework.authtoken.models import TokenProxy

from evoflow.admin_tasks import FailedTaskActions, SuccessfulTaskActions
from evoflow.db import table_row_estimate

EXACT_COUNT_LIMIT = 10_000
ESTIMATE_FROM_ROWS = 10_000


# -- query strings PostgreSQL cannot take ------------------------------------------------------


class QueryStringCheckedAdmin(admin.ModelAdmin):
    """A ModelAdmin whose changelist refuses a NUL character anywhere in its query string.

    PostgreSQL refuses a NUL inside any text parameter, so a NUL typed into the search box or
    into any filter's value (`?status__exact=%00`) made the list's query fail. It is checked
    once here, before any filter or search reads the query string, and shown as the admin's
    usual error page for a bad lookup.
    """

    def get_changelist_instance(self, request: HttpRequest) -> Any:
        for name, values in request.GET.lists():
            if "\x00" in name or any("\x00" in value for value in values):
                raise IncorrectLookupParameters("a NUL character in the query string")
        return super().get_changelist_instance(request)

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Any = None,
    ) -> Any:
        # A page with nothing to edit (every field read-only, no inline row to change) offers
        # no "Save" buttons: saving it would do nothing, and "Save and add another" would offer
        # to add what is never added here.
        if change and not _has_editable_field(context):
            context.update(
                show_save=False, show_save_and_continue=False, show_save_and_add_another=False
            )
        return super().render_change_form(request, context, add, change, form_url, obj)


def _has_editable_field(context: dict[str, Any]) -> bool:
    adminform = context.get("adminform")
    if adminform is not None and adminform.form.visible_fields():
        return True
    for inline in context.get("inline_admin_formsets", ()):
        formset = inline.formset
        if inline.has_add_permission or any(form.visible_fields() for form in formset.forms):
            return True
    return False


# -- the "since" filter --------------------------------------------------------------------------


def since_parse(value: str) -> datetime:
    """`value` as an aware datetime in UTC; ValueError when it is not an ISO 8601 timestamp.

    A timestamp without an offset is in the current time zone, as the admin shows times. A "+"
    left unencoded in a query string arrives as a space; it is read back as the "+" it was.
    The result is in UTC: PostgreSQL refuses offsets Python accepts (beyond +/-15:59), and a
    moment that falls outside years 1 to 9999 in UTC is refused here rather than there.
    """
    text = value.strip()
    try:
        parsed = parse_datetime(text)
        if parsed is None and " " in text:
            head, _, offset = text.rpartition(" ")
            parsed = parse_datetime(f"{head}+{offset}")
    except ValueError as error:
        raise ValueError(f"not a valid timestamp: {value!r}") from error
    if parsed is None:
        raise ValueError(f"not an ISO 8601 timestamp: {value!r}")
    try:
        if timezone.is_naive(parsed):
            parsed = timezone.make_aware(parsed)
        return parsed.astimezone(UTC)
    except (OverflowError, ValueError) as error:
        raise ValueError(f"not a timestamp within years 1 to 9999: {value!r}") from error


class MarkedListFilter(admin.SimpleListFilter):
    """Rows whose `field_name` (a timestamp that marks a state, e.g. `removed_at`) is set, or is
    not: `?<parameter_name>=yes` / `=no`, labelled by `unset_label` and `set_label`."""

    field_name: str
    unset_label: str
    set_label: str

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("no", self.unset_label), ("yes", self.set_label)]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() in {"yes", "no"}:
            return queryset.filter(**{f"{self.field_name}__isnull": self.value() == "no"})
        return queryset


class SinceListFilter(admin.SimpleListFilter):
    """Rows whose `field_name` is at or after the timestamp in the query string."""

    field_name: str
    # The sidebar's presets; the dashboard links with its own timestamps.
    presets: tuple[tuple[timedelta, str], ...] = (
        (timedelta(hours=1), "last hour"),
        (timedelta(hours=24), "last 24 hours"),
        (timedelta(days=7), "last 7 days"),
    )

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        now = timezone.now().replace(microsecond=0)
        choices = [((now - age).isoformat(), label) for age, label in self.presets]
        current = self.value()
        if current and current not in {value for value, _ in choices}:
            choices.insert(0, (current, f"since {current}"))
        return choices

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        if not value:
            return queryset
        try:
            since = since_parse(value)
        except ValueError as error:
            raise IncorrectLookupParameters(str(error)) from error
        return queryset.filter(**{f"{self.field_name}__gte": since})


def since_filter(
    *, field_name: str, parameter_name: str, title: str | None = None
) -> type[SinceListFilter]:
    """A `SinceListFilter` on `field_name`, read from the `parameter_name` query parameter."""
    return type(
        f"{parameter_name.title().replace('_', '')}Filter",
        (SinceListFilter,),
        {
            "field_name": field_name,
            "parameter_name": parameter_name,
            "title": title or parameter_name.replace("_", " "),
        },
    )


# -- a foreign-key filter that does not list the whole related table -----------------------------


def pk_or_none(value: object) -> int | None:
    """An integer primary key from a URL or query string, None for anything else.

    `isdigit()` alone accepts "²" and other Unicode digits that int() refuses, and a number
    past bigint would fail in the query.
    """
    text = str(value) if value is not None else ""
    if not (text.isascii() and text.isdigit()) or int(text) >= 2**63:
        return None
    return int(text)


class ChosenOnlyRelatedFilter(admin.RelatedFieldListFilter):
    """`<field>__id__exact=<pk>` as Django's own filter reads it, listing only the chosen row.

    Django's filter offers every related row as a choice: one unbounded query and a sidebar
    of thousands of links. The chosen row is reached from its own list or the dashboard.
    """

    def field_choices(self, field: Any, request: HttpRequest, model_admin: Any) -> list:
        pk = pk_or_none(self.lookup_val[-1]) if self.lookup_val else None
        if pk is None:
            return []  # nothing chosen, or not a key: the queryset step reports the latter
        ordering = self.field_admin_ordering(field, request, model_admin)
        return field.get_choices(
            include_blank=False, ordering=ordering, limit_choices_to={"pk": pk}
        )

    def has_output(self) -> bool:
        # Django applies only the filters that have output: with one choice (or none) this one
        # would otherwise be dropped and the list would show every row.
        return True


# -- counting huge tables ------------------------------------------------------------------------


class RowCount(int):
    """A row count the changelist compares and pages with, shown with what kind of count it is."""

    label: str

    def __new__(cls, value: int, label: str) -> RowCount:
        count = super().__new__(cls, value)
        count.label = label
        return count

    def __str__(self) -> str:
        return self.label

    def __format__(self, format_spec: str) -> str:
        return self.label if not format_spec else super().__format__(format_spec)


class HugeTablePaginator(Paginator):
    """The changelist paginator for tables of millions of rows (see the module docstring)."""

    exact_count_limit = EXACT_COUNT_LIMIT
    estimate_from_rows = ESTIMATE_FROM_ROWS

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if not isinstance(queryset, QuerySet):
            return super().count
        if not queryset.query.has_filters():
            estimate = table_row_estimate(queryset.model, using=queryset.db)
            if estimate is not None and estimate >= self.estimate_from_rows:
                return RowCount(estimate, f"~{estimate:,}")
        # At most limit + 1 rows are read: LIMIT inside the counted subquery.
        counted = queryset.order_by().values("pk")[: self.exact_count_limit + 1].count()
        if counted > self.exact_count_limit:
            return RowCount(counted, f"{self.exact_count_limit:,}+")
        return counted


class HugeTableMixin(admin.ModelAdmin):
    """A changelist over a table that grows without bound: `HugeTablePaginator`, no full
    count, no facet counts ("Show counts" would count every filter choice over the whole
    table)."""

    paginator = HugeTablePaginator
    show_facets = admin.ShowFacets.NEVER
    show_full_result_count = False


# -- the admins other packages register ----------------------------------------------------------


class FailureAdmin(
    FailedTaskActions, HugeTableMixin, QueryStringCheckedAdmin, django_q_admin.FailAdmin
):
    """Failed tasks, with "stopped since" for the dashboard's "failed in 24 hours" link.

    django-q2's own "group" and "cluster" filters are left out: each lists its choices with a
    SELECT DISTINCT over every failure ever kept, and failures are never pruned.
    """

    list_filter = (since_filter(field_name="stopped", parameter_name="stopped_since"),)


class QueuedTaskAdmin(HugeTableMixin, QueryStringCheckedAdmin, django_q_admin.QueueAdmin):
    """Queued tasks of the ORM broker: a backlog can grow to millions while workers are down."""


class SuccessfulTaskAdmin(SuccessfulTaskActions, QueryStringCheckedAdmin, django_q_admin.TaskAdmin):
    pass


class ScheduleAdmin(QueryStringCheckedAdmin, django_q_admin.ScheduleAdmin):
    pass


class GroupAdmin(QueryStringCheckedAdmin, auth_admin.GroupAdmin):
    pass


class TokenAdmin(QueryStringCheckedAdmin, authtoken_admin.TokenAdmin):
    pass


THIRD_PARTY_ADMINS: tuple[tuple[type, type[admin.ModelAdmin]], ...] = (
    (Failure, FailureAdmin),
    (OrmQ, QueuedTaskAdmin),
    (Success, SuccessfulTaskAdmin),
    (Schedule, ScheduleAdmin),
    (Group, GroupAdmin),
    (TokenProxy, TokenAdmin),
)


def third_party_admins_register() -> None:
    """Replace the admins other packages registered with the classes above (idempotent).

    The packages' admin modules are imported above, so they have registered theirs whichever
    app's admin imports this module first.
    """
    for model, model_admin in THIRD_PARTY_ADMINS:
        registered = admin.site._registry.get(model)
        if registered is None or isinstance(registered, model_admin):
            continue  # not shown (django-q2 registers the queue only with the ORM broker), or done
        admin.site.unregister(model)
        admin.site.register(model, model_admin)


third_party_admins_register()
