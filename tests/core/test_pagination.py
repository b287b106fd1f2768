"""Lists page with opaque cursors, newest first, without counting the table."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.core.factories import UserFactory

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.core.urls")]


def test_cursor_pages_walk_every_row_once_newest_first(api_client):
    users = UserFactory.create_batch(5)
    expected = [user.username for user in reversed(users)]

    seen: list[str] = []
    url: str | None = "/api/test/users/?page_size=2"
    pages = 0
    while url:
        body = api_client.get(url).json()
        seen += [row["username"] for row in body["results"]]
        url = body["next"]
        pages += 1

    assert seen == expected
    assert pages == 3


def test_a_page_never_counts_the_table(api_client):
    UserFactory.create_batch(3)

    with CaptureQueriesContext(connection) as queries:
        body = api_client.get("/api/test/users/?page_size=2").json()

    assert set(body) == {"next", "previous", "results"}
    assert not [query for query in queries if "COUNT(" in query["sql"].upper()]


def test_page_size_is_capped(api_client):
    UserFactory.create_batch(3)

    body = api_client.get("/api/test/users/?page_size=100000").json()

    assert len(body["results"]) == 3
