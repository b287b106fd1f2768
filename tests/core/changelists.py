"""Reading an admin changelist in tests: what it lists and how many queries it took."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib.admin.views.main import ChangeList
from django.db import connection
from django.db.models import QuerySet
from django.test import Client
from django.test.utils import CaptureQueriesContext


def changelist_get(client: Client, url: str) -> tuple[ChangeList, int]:
    """The changelist at `url` (which must answer 200) and the queries its request ran.

    A first request fills the process's caches (content types, the admin's permission checks),
    so the measured one counts only what the page itself needs.
    """
    client.get(url)
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url)
    assert response.status_code == 200, (url, response.status_code, response.get("Location"))
    return response.context["cl"], len(queries)


def listed_pks(changelist: ChangeList) -> set[Any]:
    return {row.pk for row in changelist.result_list}


def assert_exact_and_bounded(
    client: Client,
    url: str,
    expected: Callable[[], QuerySet],
    create: Callable[[int], object],
) -> None:
    """`url` lists exactly `expected()` with 10 rows made by `create`, and with 1,000 it takes
    as many queries and still lists only expected rows (a page of them)."""
    create(10)
    changelist, queries_10 = changelist_get(client, url)
    assert listed_pks(changelist) == set(expected().values_list("pk", flat=True))
    assert changelist.result_count == expected().count()

    create(990)
    changelist, queries_1000 = changelist_get(client, url)
    assert queries_1000 == queries_10
    wanted = set(expected().values_list("pk", flat=True))
    assert wanted, "the filter matches none of 1,000 rows: the test proves nothing"
    assert changelist.result_count == len(wanted)
    assert listed_pks(changelist) <= wanted
    assert len(listed_pks(changelist)) == min(len(wanted), changelist.list_per_page)
