"""The conversations lists the dashboard links to: exact rows, bounded queries, the page filter
that does not list every page, and "received since"."""

from __future__ import annotations

import itertools
from datetime import timedelta
from urllib.parse import quote

import pytest
from django.test import Client
from django.utils import timezone

from conversations.models import (
    Conversation,
    EventKind,
    FacebookPage,
    InteractionEvent,
    Message,
    ReceiptStatus,
    SignatureVerdict,
    SyncMode,
    SyncRun,
    SyncStatus,
    WebhookReceipt,
)
from tests.conversations.factories import ConversationFactory, MessageFactory
from tests.core.changelists import assert_exact_and_bounded, changelist_get, listed_pks
from tests.core.factories import UserFactory

pytestmark = pytest.mark.django_db

_page_numbers = itertools.count(1)


@pytest.fixture
def admin_client() -> Client:
    client = Client()
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


def pages_create(count: int) -> list[FacebookPage]:
    numbers = [next(_page_numbers) for _ in range(count)]
    return FacebookPage.objects.bulk_create(
        [
            FacebookPage(
                page_id=str(800_000_000 + number),
                name=f"Page {number}",
                access_token_encrypted="",
                is_reauthorization_required=number % 4 == 0,
            )
            for number in numbers
        ]
    )


# One page has a run of each kind; the others have one run each, cycling through the statuses
# (a live run per page at most, as the partial unique index wants).
_RUN_STATUSES = [
    SyncStatus.RUNNING,
    SyncStatus.SUCCEEDED,
    SyncStatus.FAILED,
    SyncStatus.QUEUED,
    SyncStatus.PARTIAL,
    SyncStatus.CANCELLED,
]


def sync_runs_create(count: int) -> None:
    pages = pages_create(count)
    SyncRun.objects.bulk_create(
        [
            SyncRun(page=page, mode=SyncMode.INCREMENTAL, status=_RUN_STATUSES[index % 6])
            for index, page in enumerate(pages)
        ]
    )


def receipts_create(count: int) -> None:
    now = timezone.now()
    statuses = ReceiptStatus.values
    WebhookReceipt.objects.bulk_create(
        [
            WebhookReceipt(
                body=b'{"object": "page", "entry": []}',
                body_sha256="0" * 64,
                signature_verdict=SignatureVerdict.VALID,
                status=statuses[index % len(statuses)],
                # Of each status, every other one arrived more than an hour ago.
                received_at=now - timedelta(minutes=10 if index // len(statuses) % 2 else 90),
            )
            for index in range(count)
        ]
    )


def test_pages_needing_reauthorisation(admin_client):
    assert_exact_and_bounded(
        admin_client,
        "/admin/conversations/facebookpage/?is_reauthorization_required__exact=1",
        lambda: FacebookPage.objects.filter(is_reauthorization_required=True),
        pages_create,
    )


def test_running_sync_runs(admin_client):
    assert_exact_and_bounded(
        admin_client,
        "/admin/conversations/syncrun/?status__exact=running",
        lambda: SyncRun.objects.filter(status=SyncStatus.RUNNING),
        sync_runs_create,
    )


def test_sync_runs_of_one_page_without_listing_every_page(admin_client):
    page = pages_create(1)[0]
    SyncRun.objects.bulk_create(
        [SyncRun(page=page, mode=SyncMode.FULL, status=SyncStatus.SUCCEEDED) for _ in range(3)]
    )
    url = f"/admin/conversations/syncrun/?page__id__exact={page.pk}"

    assert_exact_and_bounded(
        admin_client, url, lambda: SyncRun.objects.filter(page=page), sync_runs_create
    )

    # The sidebar offers the chosen page, not the thousand others.
    response = admin_client.get(url)
    page_filter = next(spec for spec in response.context["cl"].filter_specs if spec.title == "page")
    assert [choice["display"] for choice in page_filter.choices(response.context["cl"])] == [
        "All",
        str(page),
    ]
    # And composes with the status filter.
    changelist, _ = changelist_get(admin_client, f"{url}&status__exact=running")
    assert listed_pks(changelist) == set()


@pytest.mark.parametrize("value", ["abc", "²", "1.5"])
def test_a_page_filter_value_that_is_not_a_key_is_the_admin_error_page(admin_client, value):
    response = admin_client.get(f"/admin/conversations/syncrun/?page__id__exact={quote(value)}")

    assert response.status_code == 302
    assert response["Location"].endswith("?e=1")


def test_a_page_that_does_not_exist_lists_nothing(admin_client):
    sync_runs_create(3)

    for value in ("0", "99999999999999999999"):
        changelist, _ = changelist_get(
            admin_client, f"/admin/conversations/syncrun/?page__id__exact={value}"
        )
        assert listed_pks(changelist) == set()


@pytest.mark.parametrize("status", ReceiptStatus.values)
def test_receipts_by_status_received_since(admin_client, status):
    since = (timezone.now() - timedelta(hours=1)).replace(microsecond=0)
    url = (
        "/admin/conversations/webhookreceipt/"
        f"?status__exact={status}&received_since={quote(since.isoformat())}"
    )
    assert_exact_and_bounded(
        admin_client,
        url,
        lambda: WebhookReceipt.objects.filter(status=status, received_at__gte=since),
        receipts_create,
    )


def test_received_since_alone_and_with_an_unencoded_plus(admin_client):
    receipts_create(2 * len(ReceiptStatus.values))  # one recent and one old of each status
    since = (timezone.now() - timedelta(hours=1)).replace(microsecond=0)
    expected = set(
        WebhookReceipt.objects.filter(received_at__gte=since).values_list("pk", flat=True)
    )

    # "+00:00" written into the URL without encoding arrives as " 00:00".
    for value in (quote(since.isoformat()), since.isoformat(), since.isoformat()[:19] + "Z"):
        changelist, _ = changelist_get(
            admin_client, f"/admin/conversations/webhookreceipt/?received_since={value}"
        )
        assert listed_pks(changelist) == expected
        assert len(expected) == len(ReceiptStatus.values)


@pytest.mark.parametrize(
    "value", ["yesterday", "2026-13-45T10:00:00+00:00", "2026-11-23T25:00", "%00", ""]
)
def test_a_bad_received_since_is_the_admin_error_page_not_a_500(admin_client, value):
    response = admin_client.get(f"/admin/conversations/webhookreceipt/?received_since={value}")

    if value:
        assert response.status_code == 302
        assert response["Location"].endswith("?e=1")
        assert admin_client.get(response["Location"]).status_code == 200
    else:
        assert response.status_code == 200


def test_conversation_message_and_event_lists_query_no_row_twice(admin_client):
    """The unbounded lists: as many queries for a page of 1,000 rows as of 10."""
    urls = [
        "/admin/conversations/conversation/",
        "/admin/conversations/message/",
        "/admin/conversations/interactionevent/",
        "/admin/conversations/webhookreceipt/",
        "/admin/conversations/syncrun/",
    ]

    def create(count: int) -> None:
        conversations = ConversationFactory.create_batch(count // 10 or 1)
        messages = Message.objects.bulk_create(
            [
                MessageFactory.build(conversation=conversations[index % len(conversations)])
                for index in range(count)
            ]
        )
        InteractionEvent.objects.bulk_create(
            [
                InteractionEvent(
                    page_id=message.page_id,
                    conversation_id=message.conversation_id,
                    message=message,
                    kind=EventKind.MESSAGE_RECEIVED,
                    occurred_at=message.sent_at,
                    dedupe_key=f"message:{message.mid}",
                    source=message.source,
                )
                for message in messages
            ]
        )
        receipts_create(count)
        sync_runs_create(count)

    create(10)
    counts_10 = [changelist_get(admin_client, url)[1] for url in urls]
    create(990)
    results = [changelist_get(admin_client, url) for url in urls]

    assert [queries for _, queries in results] == counts_10
    assert InteractionEvent.objects.count() == Message.objects.count() == 1000
    assert [len(changelist.result_list) for changelist, _ in results] == [100] * 5
    assert Conversation.objects.count() == 100
