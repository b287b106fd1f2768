"""Reading an admin changelist in tests: what it lists and how many queries it took."""

from __future__ import annotations

from typing import Any

from django.contrib.admin.views.main import ChangeList
from django.db import connection
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
