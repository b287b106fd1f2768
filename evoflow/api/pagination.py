"""The one cursor pagination of every list endpoint: stable while rows are inserted, never a
COUNT(*) over a big table, and a tampered cursor or page size is the client's error, never a 500.

Every list view derives from `CursorListApi` (or, for a generic view, gets
`CheckedCursorPagination` from the settings). Ordering: `-id` by default, which every model has
and which never changes; a list whose rows are better read by time sets `pagination_class =
cursor_pagination(ordering=...)` with a unique, immutable column pair such as
`("-updated_at", "-id")`.

The cursor is DRF's (base64 of `o=<offset>&r=<reverse>&p=<position>`). It is checked before it
reaches a query: it must be strict base64 of ASCII, and its position must be a value of the
ordering's first column (an integer within the column's range, a date-time, ...). Anything else
is **400 `invalid_cursor`** (DRF alone answers 404 for an undecodable cursor and lets a bad
position reach the database).

The page size rule, the same for every list: `page_size` absent means `page_size` of the class
(50); a positive integer above `max_page_size` is clamped to it (500 by default, lower where a
list's rows are heavy); anything that is not a positive decimal integer (`0`, `-1`, `abc`,
`null`, empty) is **400 `invalid_page_size`**.

No list takes a `page` parameter: pages are followed with `cursor`, and a filter by Facebook
page is `page_id`. A client that sends `page` (expecting page numbers, or the filter's old name)
gets **400 `validation_error`** on `page`, never a silently different list (docs/api.md).
"""

from __future__ import annotations

import binascii
from base64 import b64decode
from collections.abc import Sequence
from typing import Any

from django.core.exceptions import FieldDoesNotExist, ValidationError
from django.db import connection, models
from django.db.models import QuerySet
from rest_framework.exceptions import NotFound
from rest_framework.exceptions import ValidationError as ApiValidationError
from rest_framework.pagination import Cursor, CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import BaseSerializer
from rest_framework.views import APIView

from evoflow.errors import DomainError

# More digits than any page size worth reading; also keeps int() away from Python's limit on
# the length of a converted string.
_MAX_PAGE_SIZE_DIGITS = 9


# The name pagination schemes and the old Facebook page filter both used (module docstring).
REFUSED_QUERY_PARAMETER = "page"


class InvalidCursor(DomainError):
    code = "invalid_cursor"
    status = 400
    default_detail = "Invalid cursor."


class InvalidPageSize(DomainError):
    code = "invalid_page_size"
    status = 400


class CheckedCursorPagination(CursorPagination):
    """DRF's cursor pagination with the cursor and the page size checked (module docstring)."""

    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500
    ordering: str | tuple[str, ...] = "-id"

    # The model field the position is compared with, found when a queryset is paginated.
    _position_field: models.Field | None = None

    def paginate_queryset(
        self,
        queryset: QuerySet[Any, Any] | Sequence[Any],
        request: Request,
        view: APIView | None = None,
    ) -> list[Any] | None:
        if REFUSED_QUERY_PARAMETER in request.query_params:
            raise ApiValidationError(
                {
                    REFUSED_QUERY_PARAMETER: [
                        "Lists take no `page`: follow `next` (a `cursor`); the filter by Facebook "
                        "page is `page_id`."
                    ]
                }
            )
        self._position_field = (
            self._ordering_field(queryset) if isinstance(queryset, QuerySet) else None
        )
        return super().paginate_queryset(queryset, request, view=view)

    def _ordering_field(self, queryset: QuerySet[Any, Any]) -> models.Field | None:
        ordering = (self.ordering,) if isinstance(self.ordering, str) else self.ordering
        name = ordering[0].lstrip("-")
        try:
            field = queryset.model._meta.get_field("id" if name == "pk" else name)
        except FieldDoesNotExist:
            return None
        return field if isinstance(field, models.Field) else None

    def get_schema_operation_parameters(self, view: APIView) -> list[dict[str, Any]]:
        """DRF's parameters, with `page_size` saying what it accepts: a whole number from 1."""
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_size_query_param:
                parameter["schema"] = {"type": "integer", "minimum": 1}
                parameter["description"] = (
                    f"Rows per page, from 1; above {self.max_page_size} the page holds "
                    f"{self.max_page_size}. Default {self.page_size}."
                )
            elif parameter["name"] == self.cursor_query_param:
                parameter["description"] = (
                    "Opaque: the `cursor` of a `next` or `previous` link of this list, never "
                    "made by a client. Any other value is 400 `invalid_cursor`."
                )
        return parameters

    def get_page_size(self, request: Request) -> int:
        assert self.page_size_query_param is not None
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        digits = raw.lstrip("0")
        if not (raw.isascii() and raw.isdigit()) or not digits:
            raise InvalidPageSize(
                f"page_size must be a whole number from 1 (at most {self.max_page_size} are "
                "returned)."
            )
        if len(digits) > _MAX_PAGE_SIZE_DIGITS:
            return self.max_page_size
        return min(int(digits), self.max_page_size)

    def decode_cursor(self, request: Request) -> Cursor | None:
        encoded = request.query_params.get(self.cursor_query_param)
        if encoded is None:
            return None
        try:
            # DRF's decoder skips characters that are not base64 (a NUL, say): refuse them.
            b64decode(encoded.encode("ascii"), validate=True)
        except (UnicodeEncodeError, binascii.Error):
            raise InvalidCursor() from None
        try:
            cursor = super().decode_cursor(request)
        except NotFound:
            raise InvalidCursor() from None
        if cursor is not None and cursor.position is not None:
            self._position_check(str(cursor.position))
        return cursor

    def _position_check(self, position: str) -> None:
        """The position is compared with the ordering's first column: it must be one of its
        values, or the query fails (a 500) instead of answering."""
        if "\x00" in position:
            raise InvalidCursor()
        field = self._position_field
        if field is None:
            return
        try:
            value = field.to_python(position)
        except (ValidationError, ValueError, TypeError, OverflowError):
            raise InvalidCursor() from None
        if value is None:
            raise InvalidCursor()
        if isinstance(field, models.IntegerField):
            low, high = connection.ops.integer_field_range(field.get_internal_type())
            if (low is not None and value < low) or (high is not None and value > high):
                raise InvalidCursor()


def cursor_pagination(
    *, ordering: str | tuple[str, ...], max_page_size: int = CheckedCursorPagination.max_page_size
) -> type[CheckedCursorPagination]:
    """The checked pagination with another ordering (and maximum page size): a class, since a
    paginator holds the state of one request."""
    attributes = {"ordering": ordering, "max_page_size": max_page_size}
    return type("CheckedCursorPagination", (CheckedCursorPagination,), attributes)


# An API view whose GET answers a list, a page at a time with `pagination_class`. Every list
# endpoint derives from it, which is how the tests find them all. (A comment, not a docstring:
# the schema would show a docstring as the description of every list that has none.)
class CursorListApi(APIView):
    pagination_class: type[CheckedCursorPagination] = CheckedCursorPagination

    def paginated_response(
        self, request: Request, queryset: QuerySet[Any], serializer: type[BaseSerializer[Any]]
    ) -> Response:
        """One page of `queryset`, serialised, with its `next` and `previous` links."""
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(queryset, request, view=self)
        return paginator.get_paginated_response(serializer(page, many=True).data)
