"""The sync runs in the admin: the list, the read-only detail, and the sync actions."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils.html import strip_tags

from conversations.models import FacebookPage, SyncRun, SyncStatus
from conversations.services.pages import page_upsert
from conversations.services.sync import sync_request
from tests.conversations.conftest import PAGE_ID
from tests.core.factories import UserFactory

SECRET_TOKEN = "EAAB-page-secret-token"
RUNS = "/admin/conversations/syncrun/"
PAGES = "/admin/conversations/facebookpage/"


@pytest.fixture
def token_page(db) -> FacebookPage:
    return page_upsert(page_id=PAGE_ID, name="MyShop", access_token=SECRET_TOKEN)


def _run(page: FacebookPage, status: str = SyncStatus.SUCCEEDED, **fields: Any) -> SyncRun:
    run, created = sync_request(page=page, mode="full", enqueue=False)
    assert created
    if status != SyncStatus.QUEUED:
        SyncRun.objects.filter(pk=run.pk).update(status=SyncStatus.RUNNING)
    if status not in (SyncStatus.QUEUED, SyncStatus.RUNNING):
        SyncRun.objects.filter(pk=run.pk).update(status=status)
    if fields:
        SyncRun.objects.filter(pk=run.pk).update(**fields)
    run.refresh_from_db()
    return run


def _messages(response) -> list[str]:
    # The text an operator reads (a message may link to the run it names).
    return [strip_tags(str(message)) for message in response.context["messages"]]


def _operator_client(*codenames: str) -> Client:
    user = UserFactory(is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


def test_the_run_list_shows_status_counters_and_errors(admin_client, token_page):
    run = _run(
        token_page,
        SyncStatus.PARTIAL,
        api_calls=321,
        messages_inserted=4567,
        failed_batches=[{"folder": "inbox", "error_code": "server_error"}] * 2,
        error_code="failed_batches",
    )

    response = admin_client.get(RUNS)

    assert response.status_code == 200
    content = response.content.decode()
    for text in ("321", "4567", "failed_batches", "partial", "MyShop", f">{run.pk}<"):
        assert text in content
    assert SECRET_TOKEN not in content
    assert admin_client.get(RUNS, {"status__exact": "succeeded"}).content.count(b"partial<") == 0
    found = admin_client.get(RUNS, {"q": run.request_id}).content.decode()
    assert f">{run.pk}<" in found
    assert f">{run.pk}<" not in admin_client.get(RUNS, {"q": "no-such-id"}).content.decode()


def test_the_run_list_takes_the_same_queries_for_10_and_100_runs(admin_client, token_page):
    def queries_for_list() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert admin_client.get(RUNS).status_code == 200
        return len(captured)

    others = [
        page_upsert(page_id=str(500_000 + n), name=f"P{n}", access_token="t") for n in range(3)
    ]
    pages = [token_page, *others]
    for n in range(10):
        _run(pages[n % len(pages)], failed_batches=[{"folder": "inbox"}])
    with_10 = queries_for_list()
    for n in range(90):
        _run(pages[n % len(pages)], SyncStatus.FAILED)
    with_100 = queries_for_list()

    assert with_10 == with_100


def test_the_run_detail_is_read_only_and_shows_failed_batches_and_cursor(admin_client, token_page):
    run = _run(
        token_page,
        SyncStatus.PARTIAL,
        cursor={"folder": "other", "after": "QVFIUk"},
        failed_batches=[{"folder": "inbox", "after": "QVFIX", "error_code": "schema_drift"}],
        skipped=[{"thread_id": "t_1", "reason": "no participant besides the page"}],
        error="1 batch(es) failed",
    )

    response = admin_client.get(f"{RUNS}{run.pk}/change/")

    assert response.status_code == 200
    content = response.content.decode()
    assert "&quot;error_code&quot;: &quot;schema_drift&quot;" in content
    assert "QVFIUk" in content
    assert "no participant besides the page" in content
    assert SECRET_TOKEN not in content
    assert 'name="_save"' not in content
    assert admin_client.get(f"{RUNS}add/").status_code == 403
    assert admin_client.post(f"{RUNS}{run.pk}/delete/", {"post": "yes"}).status_code == 403
    assert SyncRun.objects.filter(pk=run.pk).exists()


def test_a_sync_action_asks_first_and_starts_nothing_until_confirmed(admin_client, token_page):
    asked = admin_client.post(
        PAGES, {"action": "sync_full_now", "_selected_action": [token_page.pk]}
    )

    assert asked.status_code == 200
    assert 'data-testid="action-confirm"' in asked.content.decode()
    assert "Start a full sync of these pages now?" in asked.content.decode()
    assert SyncRun.objects.count() == 0


def test_page_actions_start_syncs_and_report_live_runs_and_refusals(admin_client, token_page):
    flagged = page_upsert(page_id="444555666", name="Flagged", access_token="t")
    FacebookPage.objects.filter(pk=flagged.pk).update(is_reauthorization_required=True)

    response = admin_client.post(
        PAGES,
        {
            "action": "sync_incremental_now",
            "confirm": "yes",
            "_selected_action": [token_page.pk, flagged.pk],
        },
        follow=True,
    )

    run = SyncRun.objects.get()
    assert (run.page_id, run.mode, run.trigger, run.status) == (
        token_page.pk,
        "incremental",
        "admin",
        "queued",
    )
    assert _messages(response) == [
        f"Page {PAGE_ID}: incremental sync queued as run {run.pk} "
        "(its page follows it as it runs).",
        "Page 444555666: page 444555666 needs re-authorisation (a new access token).",
    ]
    again = admin_client.post(
        PAGES,
        {"action": "sync_full_now", "confirm": "yes", "_selected_action": [token_page.pk]},
        follow=True,
    )
    assert _messages(again) == [
        f"Page {PAGE_ID}: a sync is already queued (run {run.pk}); nothing new was started."
    ]
    assert SyncRun.objects.count() == 1

    # The page list shows the latest run and the re-authorisation flag, never the token
    listing = admin_client.get(PAGES).content.decode()
    assert f'href="/admin/conversations/syncrun/{run.pk}/change/"' in listing
    assert "re-authorisation required" in listing
    assert SECRET_TOKEN not in listing
    detail = admin_client.get(f"{PAGES}{token_page.pk}/change/").content.decode()
    assert f"run {run.pk}" in detail
    assert SECRET_TOKEN not in detail


def test_full_sync_now_queues_a_full_run(admin_client, token_page):
    admin_client.post(
        PAGES, {"action": "sync_full_now", "confirm": "yes", "_selected_action": [token_page.pk]}
    )
    assert SyncRun.objects.get().mode == "full"


def test_retry_failed_batches_starts_a_run_that_takes_them_over(admin_client, token_page):
    failed = _run(
        token_page,
        SyncStatus.PARTIAL,
        failed_batches=[{"folder": "inbox", "after": "QVFI", "error_code": "server_error"}],
    )

    response = admin_client.post(
        RUNS,
        {"action": "retry_failed_batches", "confirm": "yes", "_selected_action": [failed.pk]},
        follow=True,
    )

    retry = SyncRun.objects.exclude(pk=failed.pk).get()
    assert (retry.mode, retry.status, retry.trigger) == ("incremental", "queued", "admin")
    assert _messages(response) == [
        f"Page {PAGE_ID}: retry of failed batches queued as run {retry.pk} "
        "(its page follows it as it runs)."
    ]
    again = admin_client.post(
        PAGES,
        {"action": "retry_failed_batches", "confirm": "yes", "_selected_action": [token_page.pk]},
        follow=True,
    )
    assert _messages(again) == [
        f"Page {PAGE_ID}: a sync is already queued (run {retry.pk}); nothing new was started."
    ]


def test_cancel_stops_live_runs_and_leaves_finished_ones(admin_client, token_page):
    finished = _run(token_page, SyncStatus.SUCCEEDED)
    live = _run(token_page, SyncStatus.RUNNING)

    response = admin_client.post(
        RUNS,
        {"action": "cancel_runs", "confirm": "yes", "_selected_action": [finished.pk, live.pk]},
        follow=True,
    )

    live.refresh_from_db()
    finished.refresh_from_db()
    assert (live.status, live.error_code) == ("cancelled", "cancelled")
    assert finished.status == "succeeded"
    assert _messages(response) == [
        f"Cancelled run {live.pk}.",
        f"Not live, so left as it was: run {finished.pk}.",
    ]


def test_the_sync_actions_need_the_add_syncrun_permission(token_page):
    viewer = _operator_client("view_syncrun", "view_facebookpage", "change_facebookpage")
    live = _run(token_page, SyncStatus.RUNNING)

    assert b"cancel_runs" not in viewer.get(RUNS).content
    assert b"sync_full_now" not in viewer.get(PAGES).content
    viewer.post(RUNS, {"action": "cancel_runs", "confirm": "yes", "_selected_action": [live.pk]})
    viewer.post(
        PAGES, {"action": "sync_full_now", "confirm": "yes", "_selected_action": [token_page.pk]}
    )
    live.refresh_from_db()
    assert live.status == "running"
    assert SyncRun.objects.count() == 1

    operator = _operator_client(
        "view_syncrun", "add_syncrun", "view_facebookpage", "change_facebookpage"
    )
    assert b"cancel_runs" in operator.get(RUNS).content
    operator.post(RUNS, {"action": "cancel_runs", "confirm": "yes", "_selected_action": [live.pk]})
    live.refresh_from_db()
    assert live.status == "cancelled"


def test_the_watermark_is_read_only_and_a_page_save_keeps_what_the_sync_wrote(token_page):
    from datetime import UTC, datetime

    client = _operator_client("view_facebookpage", "change_facebookpage")
    url = f"{PAGES}{token_page.pk}/change/"
    form = client.get(url)
    # A sync completes while the operator has the form open.
    synced = datetime(2025, 3, 1, tzinfo=UTC)
    FacebookPage.objects.filter(pk=token_page.pk).update(sync_watermark=synced)

    response = client.post(
        url,
        {"page_id": PAGE_ID, "name": "Renamed", "sync_watermark": "2099-01-01 00:00:00"},
    )

    assert form.status_code == 200
    assert response.status_code == 302
    token_page.refresh_from_db()
    assert token_page.name == "Renamed"
    assert token_page.sync_watermark == synced
    assert token_page.access_token() == SECRET_TOKEN
