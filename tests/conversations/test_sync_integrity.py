"""The sync's integrity checks: live runs per page, stale runs, re-authorisation, C4 behind."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection

from conversations.models import Conversation, FacebookPage, SyncRun, SyncStatus
from conversations.services.pages import page_upsert
from conversations.services.sync import sync_request
from tests.conversations.conftest import PAGE_ID
from tests.conversations.factories import ConversationFactory, MessageFactory

LIVE = "conversations.sync_runs_live_per_page"
STALE = "conversations.sync_runs_stale"
REAUTH = "conversations.pages_reauthorization_required"
BEHIND = "conversations.last_message_behind"
CHECKS = [LIVE, STALE, REAUTH, BEHIND]


def run_integrity(*args: str) -> tuple[int, dict]:
    out = StringIO()
    try:
        call_command("integrity", "--json", *args, stdout=out, stderr=StringIO())
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    return code, json.loads(out.getvalue())


def _results(*checks: str, fix: bool = False) -> tuple[int, dict[str, dict]]:
    args = [arg for check in checks for arg in ("--check", check)]
    code, document = run_integrity(*args, *(["--fix"] if fix else []))
    return code, {result["id"]: result for result in document["checks"]}


@pytest.fixture
def token_page(db) -> FacebookPage:
    return page_upsert(page_id=PAGE_ID, name="MyShop", access_token="sim-page-token")


def test_the_sync_checks_are_healthy_on_normal_state(token_page):
    run, _ = sync_request(page=token_page, mode="full", enqueue=False)
    conversation = ConversationFactory(page=token_page)
    MessageFactory.create_batch(3, conversation=conversation)

    code, results = _results(*CHECKS)

    assert code == 0
    statuses = {check: (r["status"], r["failing_count"]) for check, r in results.items()}
    assert statuses == dict.fromkeys(CHECKS, ("ok", 0))


def test_more_than_one_live_run_of_a_page_is_an_error(token_page):
    # Given two live runs of one page: impossible while the partial unique index exists, so
    # the index is dropped inside this test's transaction only (rolled back at its end)
    with connection.cursor() as cursor:
        cursor.execute("DROP INDEX syncrun_one_live_per_page")
        cursor.execute(
            "INSERT INTO conversations_syncrun (page_id, mode, status)"
            " VALUES (%s, 'full', 'queued'), (%s, 'incremental', 'running')",
            [token_page.pk, token_page.pk],
        )

    code, results = _results(LIVE)

    assert code == 2
    result = results[LIVE]
    assert (result["status"], result["failing_count"]) == ("error", 1)
    assert result["sample_ids"] == [str(token_page.pk)]


def test_stale_live_runs_are_a_warning_and_the_repair_fails_them(token_page, settings):
    settings.SYNC_LEASE_SECONDS = 60
    settings.SYNC_QUEUED_EXPIRY_SECONDS = 90
    other = page_upsert(page_id="444555666", name="Other", access_token="t")
    third = page_upsert(page_id="777888999", name="Third", access_token="t")
    waiting = page_upsert(page_id="121212121", name="Waiting", access_token="t")
    # A running run without a heartbeat for 10 minutes, a queued run never picked up, a
    # running run that beat a moment ago, and a queued run waiting behind a busy queue for less
    # than the queued expiry (older than the lease: a busy queue is not a dead worker)
    hung, _ = sync_request(page=token_page, mode="full", enqueue=False)
    SyncRun.objects.filter(pk=hung.pk).update(status=SyncStatus.RUNNING)
    never_picked, _ = sync_request(page=other, mode="incremental", enqueue=False)
    healthy, _ = sync_request(page=third, mode="full", enqueue=False)
    SyncRun.objects.filter(pk=healthy.pk).update(status=SyncStatus.RUNNING)
    queued, _ = sync_request(page=waiting, mode="full", enqueue=False)
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE conversations_syncrun SET created_at = now() - interval '80 seconds'"
            " WHERE id = %s",
            [queued.pk],
        )
        cursor.execute(
            "UPDATE conversations_syncrun SET heartbeat_at = now() - interval '10 minutes'"
            " WHERE id = %s",
            [hung.pk],
        )
        cursor.execute(
            "UPDATE conversations_syncrun SET created_at = now() - interval '2 minutes'"
            " WHERE id = %s",
            [never_picked.pk],
        )
        cursor.execute(
            "UPDATE conversations_syncrun SET heartbeat_at = now(),"
            " created_at = now() - interval '1 hour' WHERE id = %s",
            [healthy.pk],
        )

    code, results = _results(STALE)
    assert code == 1
    result = results[STALE]
    assert (result["status"], result["failing_count"], result["population"]) == ("warning", 2, 4)
    assert result["sample_ids"] == [str(hung.pk), str(never_picked.pk)]

    code, results = _results(STALE, fix=True)

    assert code == 0
    assert results[STALE]["repaired_count"] == 2
    for run in (hung, never_picked):
        run.refresh_from_db()
        assert (run.status, run.error_code) == ("failed", "lease_expired")
        assert run.finished_at is not None
        assert run.lease_token is None
    healthy.refresh_from_db()
    assert healthy.status == "running"
    queued.refresh_from_db()
    assert queued.status == "queued"
    # The page's next request is free to start
    _, created = sync_request(page=token_page, mode="full", enqueue=False)
    assert created is True


def test_pages_needing_reauthorisation_are_a_warning(token_page):
    page_upsert(page_id="444555666", name="Fine", access_token="t")
    FacebookPage.objects.filter(pk=token_page.pk).update(is_reauthorization_required=True)

    code, results = _results(REAUTH)

    assert code == 1
    result = results[REAUTH]
    assert (result["status"], result["failing_count"], result["population"]) == ("warning", 1, 2)
    assert result["sample_ids"] == [str(token_page.pk)]


def test_a_last_message_behind_the_newest_stored_one_is_an_error_repaired_forward(token_page):
    base = datetime(2025, 3, 1, tzinfo=UTC)
    level = ConversationFactory(page=token_page)
    MessageFactory(conversation=level, sent_at=base, mid="m_level")
    behind = ConversationFactory(page=token_page)
    MessageFactory(conversation=behind, sent_at=base, mid="m_old", text="old")
    never_set = ConversationFactory(page=token_page)
    # Given newer messages stored behind the message trigger's back (disabled inside this
    # test's transaction only: the database otherwise keeps last_message_* level)
    with connection.cursor() as cursor:
        # (Deferred foreign-key checks first: ALTER TABLE refuses pending trigger events.)
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute("ALTER TABLE conversations_message DISABLE TRIGGER USER")
    MessageFactory(conversation=behind, sent_at=base + timedelta(hours=1), mid="m_new", text="new")
    MessageFactory(conversation=never_set, sent_at=base, mid="m_only", text="only")
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute("ALTER TABLE conversations_message ENABLE TRIGGER USER")

    code, results = _results(BEHIND)
    assert code == 2
    result = results[BEHIND]
    assert (result["status"], result["failing_count"], result["population"]) == ("error", 2, 3)
    assert result["sample_ids"] == [str(behind.pk), str(never_set.pk)]

    code, results = _results(BEHIND, fix=True)

    assert results[BEHIND]["repaired_count"] == 2
    assert (results[BEHIND]["status"], results[BEHIND]["failing_count"]) == ("ok", 0)
    rows = {
        row.pk: (row.last_message_at, row.last_message_mid, row.last_message_text)
        for row in Conversation.objects.all()
    }
    assert rows[behind.pk] == (base + timedelta(hours=1), "m_new", "new")
    assert rows[never_set.pk] == (base, "m_only", "only")
    assert rows[level.pk][1] == "m_level"
