"""Cursor pagination: stable while rows are inserted, and never a COUNT(*) over a big table.

The default orders by `-id`, which every model has and which never changes; a view whose
rows are better read by time sets `ordering` to a unique, immutable column pair such as
`("-created_at", "-id")`.
"""

from rest_framework.pagination import CursorPagination


class IdCursorPagination(CursorPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500
    ordering = "-id"
