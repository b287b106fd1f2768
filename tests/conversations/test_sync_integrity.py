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


# -- conversations.sync_failing (F18: a page whose syncs keep failing alerts) -------------------

FAILING = "conversations.sync_failing"


def _finished_run(page: FacebookPage, status: str, *, hours_ago: float) -> SyncRun:
    """A run that ended `hours_ago` (inserted finished: the status trigger guards updates)."""
    at = datetime.now(UTC) - timedelta(hours=hours_ago)
    run = SyncRun.objects.create(page=page, mode="incremental", status=status)
    SyncRun.objects.filter(pk=run.pk).update(created_at=at, started_at=at, finished_at=at)
    return run


def _failing() -> tuple[int, str, int, list[str]]:
    code, results = _results(FAILING)
    result = results[FAILING]
    return code, result["status"], result["failing_count"], result["sample_ids"]


@pytest.fixture
def failing_limits(settings):
    settings.SYNC_FAILING_WARNING_RUNS = 3
    settings.SYNC_FAILING_ERROR_RUNS = 5
    settings.SYNC_FAILING_WARNING_HOURS = 6
    settings.SYNC_FAILING_ERROR_HOURS = 24


def test_sync_failing_counts_the_unsuccessful_runs_since_the_last_success(
    token_page, failing_limits
):
    # Given a success, then two partial runs and a cancelled one
    _finished_run(token_page, "succeeded", hours_ago=1)
    _finished_run(token_page, "partial", hours_ago=0.8)
    _finished_run(token_page, "cancelled", hours_ago=0.7)
    _finished_run(token_page, "failed", hours_ago=0.6)
    # Then two is below the warning (a cancelled run does not count)
    assert _failing() == (0, "ok", 0, [])

    # When a third one fails
    _finished_run(token_page, "partial", hours_ago=0.5)
    # Then the page is a warning, named by its id
    assert _failing() == (1, "warning", 1, [str(token_page.pk)])

    # When two more do (five since the success)
    _finished_run(token_page, "partial", hours_ago=0.4)
    _finished_run(token_page, "failed", hours_ago=0.3)
    # Then it is an error
    assert _failing() == (2, "error", 1, [str(token_page.pk)])

    # When a run succeeds again
    _finished_run(token_page, "succeeded", hours_ago=0.1)
    # Then the streak is over
    assert _failing() == (0, "ok", 0, [])


def test_sync_failing_reports_a_page_without_a_success_for_hours(token_page, failing_limits):
    other = page_upsert(page_id="999000111", name="Other", access_token="token-2")
    # Given one page whose last success is 7 hours old, with one failure since
    _finished_run(token_page, "succeeded", hours_ago=7)
    _finished_run(token_page, "failed", hours_ago=2)
    # ...and a healthy page
    _finished_run(other, "succeeded", hours_ago=0.2)
    assert _failing() == (1, "warning", 1, [str(token_page.pk)])

    # When the success is 25 hours old
    SyncRun.objects.filter(page=token_page, status="succeeded").update(
        finished_at=datetime.now(UTC) - timedelta(hours=25)
    )
    assert _failing() == (2, "error", 1, [str(token_page.pk)])

    # A removed page is not synced any more, and is left out (even with a token)
    FacebookPage.objects.filter(pk=token_page.pk).update(removed_at=datetime.now(UTC))
    assert _failing() == (0, "ok", 0, [])
    FacebookPage.objects.filter(pk=token_page.pk).update(removed_at=None)
    assert _failing()[1] == "error"

    # A page flagged for re-authorisation has a check of its own, and is left out here
    FacebookPage.objects.filter(pk=token_page.pk).update(is_reauthorization_required=True)
    assert _failing() == (0, "ok", 0, [])


def test_sync_failing_is_quiet_for_a_new_page_and_counts_hours_from_its_creation(
    token_page, failing_limits
):
    # A page created now that has not synced yet is not failing
    assert _failing() == (0, "ok", 0, [])
    # A page that never synced successfully in 7 hours is
    FacebookPage.objects.filter(pk=token_page.pk).update(
        created_at=datetime.now(UTC) - timedelta(hours=7)
    )
    assert _failing() == (1, "warning", 1, [str(token_page.pk)])


@pytest.mark.django_db(transaction=True)
def test_sync_failing_enters_warning_and_the_alert_is_posted(token_page, failing_limits, settings):
    """The existing alert path fires for it: one post when the check enters warning."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received: list[dict] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings.ALERT_WEBHOOK_URL = f"http://127.0.0.1:{server.server_address[1]}/alerts"
    try:
        assert _failing()[1] == "ok"
        for hours in (0.5, 0.4, 0.3):
            _finished_run(token_page, "partial", hours_ago=hours)
        assert _failing()[1] == "warning"
        assert _failing()[1] == "warning"  # still warning: no second alert
    finally:
        server.shutdown()

    assert [(alert["check_id"], alert["status"]) for alert in received] == [(FAILING, "warning")]
    assert received[0]["sample_ids"] == [str(token_page.pk)]
