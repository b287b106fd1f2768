"""Shared pieces of the admin lists the dashboard links to, for tables that grow without bound.

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

  Lists that use it also set `show_full_result_count = False`, so the unfiltered table is not
  counted either.

Importing this module also re-registers django-q2's admin for failed and queued tasks with a
`stopped_since` filter and the paginator above; the rest of their behaviour is django-q2's.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import django_q.admin as django_q_admin
from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.functional import cached_property
from django_q.models import Failure, OrmQ

from evoflow.db import table_row_estimate

EXACT_COUNT_LIMIT = 10_000
ESTIMATE_FROM_ROWS = 10_000


# -- the "since" filter --------------------------------------------------------------------------


def since_parse(value: str) -> datetime:
    """`value` as an aware datetime; ValueError when it is not an ISO 8601 timestamp.

    A timestamp without an offset is in the current time zone, as the admin shows times. A "+"
    left unencoded in a query string arrives as a space; it is read back as the "+" it was.
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
    if timezone.is_naive(parsed):
        parsed = timezone.make_aware(parsed)
    return parsed


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


class ChosenOnlyRelatedFilter(admin.RelatedFieldListFilter):
    """`<field>__id__exact=<pk>` as Django's own filter reads it, listing only the chosen row.

    Django's filter offers every related row as a choice: one unbounded query and a sidebar
    of thousands of links. The chosen row is reached from its own list or the dashboard.
    """

    def field_choices(self, field: Any, request: HttpRequest, model_admin: Any) -> list:
        value = self.lookup_val[-1] if self.lookup_val else None
        if value is None or not str(value).isascii() or not str(value).isdigit():
            return []  # nothing chosen, or not a key: the queryset step reports the latter
        ordering = self.field_admin_ordering(field, request, model_admin)
        return field.get_choices(
            include_blank=False, ordering=ordering, limit_choices_to={"pk": int(value)}
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


# -- django-q2's task lists ----------------------------------------------------------------------


class FailureAdmin(django_q_admin.FailAdmin):
    """Failed tasks, with "stopped since" for the dashboard's "failed in 24 hours" link."""

    list_filter = (
        since_filter(field_name="stopped", parameter_name="stopped_since"),
        *django_q_admin.FailAdmin.list_filter,
    )
    paginator = HugeTablePaginator
    show_full_result_count = False


class QueuedTaskAdmin(django_q_admin.QueueAdmin):
    """Queued tasks of the ORM broker: a backlog can grow to millions while workers are down."""

    paginator = HugeTablePaginator
    show_full_result_count = False


def django_q_admin_register() -> None:
    """Replace django-q2's admin of failed and queued tasks with the classes above (idempotent)."""
    for model, model_admin in ((Failure, FailureAdmin), (OrmQ, QueuedTaskAdmin)):
        registered = admin.site._registry.get(model)
        if isinstance(registered, model_admin):
            continue
        if registered is None and model is OrmQ:
            continue  # django-q2 registers the queue only with the ORM broker
        if registered is not None:
            admin.site.unregister(model)
        admin.site.register(model, model_admin)


django_q_admin_register()
