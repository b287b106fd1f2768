"""The shared admin list pieces: the huge-table paginator, "since" filters, the task lists."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from django_q.models import Failure, OrmQ, Success
from django_q.signing import SignedPackage

import evoflow.admin_lists  # noqa: F401  (registers the task lists until evoflow.admin imports it)
from conversations.models import ReceiptStatus, SignatureVerdict, WebhookReceipt
from evoflow.admin_lists import HugeTablePaginator, since_parse
from evoflow.permissions import OPERATORS_GROUP
from tests.core.changelists import changelist_get, listed_pks
from tests.core.factories import UserFactory

pytestmark = pytest.mark.django_db

RECEIPTS = "/admin/conversations/webhookreceipt/"


@pytest.fixture
def admin_client() -> Client:
    client = Client()
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


@pytest.fixture
def operator_client() -> Client:
    operator = UserFactory(is_staff=True)
    operator.groups.add(Group.objects.get(name=OPERATORS_GROUP))
    client = Client()
    client.force_login(operator)
    return client


def receipts_create(count: int, *, status: str = ReceiptStatus.PROCESSED) -> None:
    WebhookReceipt.objects.bulk_create(
        [
            WebhookReceipt(
                body=b"{}",
                body_sha256="0" * 64,
                signature_verdict=SignatureVerdict.VALID,
                status=status,
            )
            for _ in range(count)
        ]
    )


def tasks_create(count: int, *, success: bool = False) -> None:
    now = timezone.now()
    Failure.objects.bulk_create(
        [
            Failure(
                id=uuid.uuid4().hex,
                name=f"task-{index}",
                func="evoflow.tasks.example",
                started=now - timedelta(hours=2 if index % 2 else 30, seconds=1),
                # Every other one stopped more than a day ago.
                stopped=now - timedelta(hours=2 if index % 2 else 30),
                success=success,
            )
            for index in range(count)
        ]
    )


def queue_create(count: int) -> None:
    OrmQ.objects.bulk_create(
        [
            OrmQ(
                key="evoflow",
                payload=SignedPackage.dumps(
                    {"id": uuid.uuid4().hex, "name": f"queued-{index}", "func": "math.floor"}
                ),
            )
            for index in range(count)
        ]
    )


# -- the paginator ------------------------------------------------------------------------------


def test_an_unfiltered_big_table_shows_the_planner_estimate(admin_client, monkeypatch):
    # Given a table the statistics know (ANALYZE), then five more rows they do not
    monkeypatch.setattr(HugeTablePaginator, "estimate_from_rows", 50)
    receipts_create(60)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE conversations_webhookreceipt")
    receipts_create(5)

    # When the unfiltered list opens
    response = admin_client.get(RECEIPTS)

    # Then it shows the estimate, marked as one, and counts nothing
    changelist = response.context["cl"]
    assert changelist.result_count == 60
    assert str(changelist.result_count) == "~60"
    assert "~60 webhook receipts" in response.content.decode()


def test_a_small_or_unknown_table_is_counted_exactly(monkeypatch):
    receipts_create(7)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE conversations_webhookreceipt")

    count = HugeTablePaginator(WebhookReceipt.objects.order_by("-id"), 100).count

    assert count == 7
    assert type(count) is int


def test_a_filtered_list_counts_at_most_the_limit_plus_one(admin_client, monkeypatch):
    # Given more failed receipts than the cap
    monkeypatch.setattr(HugeTablePaginator, "exact_count_limit", 20)
    receipts_create(35, status=ReceiptStatus.FAILED)
    receipts_create(3, status=ReceiptStatus.REJECTED)

    # When the failed ones are listed
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(f"{RECEIPTS}?status__exact=failed")

    # Then the count stops at 21, reads "20+", and its query read no more than that
    changelist = response.context["cl"]
    assert changelist.result_count == 21
    assert "20+ webhook receipts" in response.content.decode()
    counts = [query["sql"] for query in queries.captured_queries if "COUNT(" in query["sql"]]
    assert len(counts) == 1
    assert "LIMIT 21" in counts[0]

    # Under the cap the count is exact.
    response = admin_client.get(f"{RECEIPTS}?status__exact=rejected")
    assert response.context["cl"].result_count == 3
    assert "3 webhook receipts" in response.content.decode()


def test_pages_past_a_capped_count_are_the_admin_error_page(admin_client, monkeypatch):
    monkeypatch.setattr(HugeTablePaginator, "exact_count_limit", 20)
    receipts_create(60, status=ReceiptStatus.FAILED)

    with monkeypatch.context() as patch:
        patch.setattr("conversations.admin.receipts.WebhookReceiptAdmin.list_per_page", 10)
        second = admin_client.get(f"{RECEIPTS}?status__exact=failed&p=2")
        beyond = admin_client.get(f"{RECEIPTS}?status__exact=failed&p=5")

    assert second.status_code == 200
    assert len(second.context["cl"].result_list) == 10
    assert beyond.status_code == 302
    assert beyond["Location"].endswith("?e=1")


# -- "since" -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-23T10:00:00+00:00", datetime(2026, 11, 23, 10, tzinfo=UTC)),
        ("2026-11-23T10:00:00 00:00", datetime(2026, 11, 23, 10, tzinfo=UTC)),
        ("2026-11-23T12:00:00+02:00", datetime(2026, 11, 23, 10, tzinfo=UTC)),
        ("2026-11-23T10:00:00Z", datetime(2026, 11, 23, 10, tzinfo=UTC)),
        ("2026-11-23T10:00:00", datetime(2026, 11, 23, 10, tzinfo=UTC)),  # TIME_ZONE is UTC
    ],
)
def test_since_reads_iso_8601(text, expected):
    assert since_parse(text) == expected


@pytest.mark.parametrize("text", ["", "now", "2026-02-30T10:00:00", "10:00", "2026-11-23T10:00+99"])
def test_since_refuses_what_is_not_a_timestamp(text):
    with pytest.raises(ValueError, match="timestamp"):
        since_parse(text)


def test_since_is_in_utc_whatever_offset_python_accepts():
    # PostgreSQL takes offsets up to 15:59 only; Python up to 23:59.
    parsed = since_parse("2026-01-01T00:00:00+16:00")

    assert parsed == datetime(2025, 12, 31, 8, tzinfo=UTC)
    assert parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "text", ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+14:00", "9999-12-31T23:00:00-01:00"]
)
def test_since_refuses_a_moment_past_the_year_limits(text):
    with pytest.raises(ValueError, match="timestamp"):
        since_parse(text)


SINCE_LISTS = [
    f"{RECEIPTS}?received_since=",
    "/admin/deliveries/userlinkaudit/?created_since=",
    "/admin/django_q/failure/?stopped_since=",
]


@pytest.mark.parametrize("url", SINCE_LISTS)
def test_a_since_offset_postgresql_refuses_still_filters(admin_client, url):
    changelist, _ = changelist_get(admin_client, url + quote("2026-01-01T00:00:00+16:00"))

    assert changelist.result_count == 0  # the tables are empty: the page answered, filtered


@pytest.mark.parametrize("url", SINCE_LISTS)
@pytest.mark.parametrize("value", ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+14:00"])
def test_a_since_past_the_year_limits_is_the_admin_error_page(admin_client, url, value):
    response = admin_client.get(url + quote(value))

    assert response.status_code == 302
    assert response["Location"].endswith("?e=1")


# -- django-q2's task lists ----------------------------------------------------------------------


def test_failed_tasks_stopped_since(admin_client):
    since = (timezone.now() - timedelta(hours=24)).replace(microsecond=0)
    url = f"/admin/django_q/failure/?stopped_since={quote(since.isoformat())}"

    tasks_create(10)
    tasks_create(4, success=True)  # successes are not failures, even recent ones
    changelist, queries_10 = changelist_get(admin_client, url)
    expected = Failure.objects.filter(stopped__gte=since)
    assert listed_pks(changelist) == set(expected.values_list("pk", flat=True))
    assert len(listed_pks(changelist)) == 5

    tasks_create(990)
    changelist, queries_1000 = changelist_get(admin_client, url)
    assert queries_1000 == queries_10
    assert changelist.result_count == expected.count() == 500
    assert listed_pks(changelist) <= set(expected.values_list("pk", flat=True))
    assert Success.objects.count() == 4


def test_a_bad_stopped_since_is_the_admin_error_page(admin_client):
    response = admin_client.get("/admin/django_q/failure/?stopped_since=2026-99-01")

    assert response.status_code == 302
    assert response["Location"].endswith("?e=1")


def test_queued_tasks_list_is_bounded(admin_client):
    queue_create(10)
    changelist, queries_10 = changelist_get(admin_client, "/admin/django_q/ormq/")
    assert listed_pks(changelist) == set(OrmQ.objects.values_list("pk", flat=True))

    queue_create(990)
    changelist, queries_1000 = changelist_get(admin_client, "/admin/django_q/ormq/")
    assert queries_1000 == queries_10
    assert changelist.result_count == 1000


# -- operators -----------------------------------------------------------------------------------


def test_an_operator_opens_the_linked_lists(operator_client):
    since = quote((timezone.now() - timedelta(hours=3)).replace(microsecond=0).isoformat())
    receipts_create(3, status=ReceiptStatus.FAILED)
    tasks_create(4)
    urls = [
        "/admin/journeys/journeysession/?status__exact=waiting",
        "/admin/journeys/journeysession/?overdue=yes",
        "/admin/journeys/contact/?enrichment=stub",
        "/admin/conversations/facebookpage/?is_reauthorization_required__exact=1",
        "/admin/conversations/syncrun/?status__exact=running",
        "/admin/conversations/syncrun/?page__id__exact=1",
        f"{RECEIPTS}?status__exact=failed&received_since={since}",
        "/admin/deliveries/messagedelivery/?consistency=inconsistent",
        f"/admin/deliveries/userlinkaudit/?outcome__exact=linked&created_since={since}",
        "/admin/deliveries/featureflag/",
        "/admin/django_q/ormq/",
        f"/admin/django_q/failure/?stopped_since={since}",
    ]

    responses = {url: operator_client.get(url) for url in urls}

    assert {url: response.status_code for url, response in responses.items()} == dict.fromkeys(
        urls, 200
    )
    receipts = responses[f"{RECEIPTS}?status__exact=failed&received_since={since}"]
    assert len(receipts.context["cl"].result_list) == 3
    failures = responses[f"/admin/django_q/failure/?stopped_since={since}"]
    assert len(failures.context["cl"].result_list) == 2


# -- what PostgreSQL cannot take, on every list --------------------------------------------------


def changelist_url(model: type) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")


@pytest.mark.parametrize(
    "model", list(admin.site._registry), ids=lambda model: model._meta.label_lower
)
def test_a_nul_in_any_list_query_string_is_the_admin_error_page(admin_client, model):
    url = changelist_url(model)
    filters = changelist_get(admin_client, url)[0].filter_specs
    # The search box, a parameter's name, and the first filter's own parameter.
    queries = ["q=%00", "%00=1"]
    if filters:
        queries.append(f"{filters[0].expected_parameters()[0]}=%00")

    responses = {query: admin_client.get(f"{url}?{query}") for query in queries}

    assert {query: response.status_code for query, response in responses.items()} == dict.fromkeys(
        queries, 302
    )
    assert all(response["Location"].endswith("?e=1") for response in responses.values())
