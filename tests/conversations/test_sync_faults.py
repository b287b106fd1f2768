"""Acceptance of the Graph sync under faults, against the simulator over HTTP: 5xx, throttling
and slowness; drifted payloads; a refused token; webhooks arriving while a full sync runs."""

from __future__ import annotations

import itertools
import random
import threading
from datetime import timedelta

import pytest
from cryptography.fernet import Fernet
from django.conf import settings as django_settings

from conversations.models import Conversation, Message, SyncRun
from conversations.services.pages import page_upsert
from conversations.services.sync import SyncRefused, sync_request, sync_run_execute
from conversations.simulator.graph import GraphSimulator
from devtools.simulator import Faults
from evoflow.ratelimit import Bucket, RateLimiter
from tests.conversations.sync_helpers import (
    assert_equal_to_truth,
    assert_subset_of_truth,
    drift_when,
    graph_calls,
    sim_page,
    simulator_serving,
    sync_now,
)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _fast(settings):
    settings.GRAPH_PAGE_CALLS_PER_SECOND = 1000
    settings.GRAPH_APP_CALLS_PER_SECOND = 1000
    # A throttled bucket waits what Meta says (the simulator's "1 minute to regain access")
    # only up to this cap: enough to drain the simulator's 1-second window, short enough for
    # a test. The production cap is 15 minutes.
    settings.GRAPH_THROTTLE_MAX_WAIT_SECONDS = 2
    settings.SYNC_BATCH_ATTEMPTS = 2


def test_with_5xx_throttling_and_slow_answers_the_sync_ends_equal_to_the_truth(settings):
    # Given a Graph API that fails 10% of calls with a 5xx, answers slowly, and throttles the
    # page past 8 calls in a 1-second window with code 80006 (the limiter slows down as the
    # usage headers pass 75%, but at 40 calls/s it still overruns such a small quota)
    settings.GRAPH_PAGE_CALLS_PER_SECOND = 40
    settings.GRAPH_THROTTLE_MAX_WAIT_SECONDS = 1
    sim = GraphSimulator(
        conversations=150,
        messages=9_000,
        seed=31,
        faults=Faults(fault_rate=0.10, slow_ms=15, seed=31),
        rate_limit=8,
        rate_window_s=1.0,
        throttle_code=80006,
    )
    with simulator_serving(sim, settings):
        page = sim_page(sim)

        # When full syncs run until one succeeds (a partial run is followed up)
        runs = []
        for _ in range(3):
            runs.append(sync_now(page, "full"))
            if runs[-1].status == "succeeded":
                break
        served = sim.counters.snapshot()

    # Then the faults really happened: 5xx answers were retried and throttling was waited out
    assert runs[-1].status == "succeeded", [(r.status, r.error_code, r.error) for r in runs]
    assert sum(run.throttled_waits for run in runs) >= 1
    made = sum(run.api_calls for run in runs)
    succeeded_calls = sum(
        count for endpoint, count in served["calls"].items() if not endpoint.startswith("control")
    )
    assert made == succeeded_calls  # every attempt, retries included, is counted once
    assert made > 2 + 3 + sum(sim.generated_message_count(i) > 100 for i in range(150))
    assert Message.objects.filter(page=page).count() == 9_000
    # ...and the database equals the truth, nothing duplicated
    assert_equal_to_truth(page, sim)


def _long_thread_in_second_batch(sim: GraphSimulator) -> str:
    for index in range(100, 200):
        if sim.generated_message_count(index) > 100:
            return sim.generated_conversation(index).key
    raise AssertionError("no thread of more than 100 messages in the second batch")


def test_a_drifted_batch_fails_alone_and_the_next_run_retries_it_first(settings):
    # Given the messages edge of one thread of the second batch answering in a drifted shape
    sim = GraphSimulator(conversations=200, messages=12_000, seed=32)
    thread = _long_thread_in_second_batch(sim)
    listings: list[dict[str, str]] = []

    def listing(request) -> bool:
        listings.append(dict(request.query))
        return False

    with simulator_serving(sim, settings):
        page = sim_page(sim)
        with drift_when(sim, "messages", lambda request: thread in request.path) as drifted:
            # When a full sync runs
            first = sync_now(page, "full")

        # Then that batch (after two attempts) is recorded with schema_drift, the others
        # are written, and the run ends partial
        assert len(drifted) == 2
        assert (first.status, first.error_code) == ("partial", "failed_batches")
        assert [(b["folder"], b["error_code"], b["attempts"]) for b in first.failed_batches] == [
            ("inbox", "schema_drift", 2)
        ]
        failed_after = first.failed_batches[0]["after"]
        assert failed_after  # the second page of the inbox
        assert first.conversations_seen == 100
        # ...nothing of the failed batch is stored, and what is stored is true and whole
        batch_threads = {sim.generated_conversation(i).key for i in range(100, 200)}
        assert not Conversation.objects.filter(page=page, thread_id__in=batch_threads).exists()
        assert_subset_of_truth(page, sim)

        # When the next run starts (drift gone)
        with drift_when(sim, "conversations", listing):
            second = sync_now(page, "full")

    # Then its first call is the failed batch, and it completes to the truth
    assert listings[0].get("after") == failed_after
    assert listings[0]["folder"] == "inbox"
    assert (second.status, second.failed_batches) == ("succeeded", [])
    assert_equal_to_truth(page, sim)


def test_drift_on_every_answer_ends_the_run_partial_and_a_clean_run_completes(settings):
    # Given a Graph API whose every answer has drifted (the simulator's own drift variants)
    sim = GraphSimulator(conversations=120, messages=1_200, seed=33, drift_rate=1.0)
    with simulator_serving(sim, settings):
        page = sim_page(sim)

        # When a full sync runs
        drifting = sync_now(page, "full")

        # Then it ends partial with schema_drift, its cursor on the unread page, nothing stored
        assert (drifting.status, drifting.error_code) == ("partial", "schema_drift")
        assert "unexpected response shape" in drifting.error
        assert drifting.cursor is None
        assert drifting.conversations_seen == 0
        assert not Conversation.objects.filter(page=page).exists()
        assert graph_calls(sim) == 2  # two attempts of the first page, no storm

        # When the drift is gone, a later run completes to the truth
        sim.drift_rate = 0.0
        clean = sync_now(page, "full")
    assert clean.status == "succeeded"
    assert_equal_to_truth(page, sim)


def test_a_refused_token_flags_the_page_and_fails_the_run_within_a_call(settings):
    # Given a page whose token is revoked right after the first page of conversations is served
    sim = GraphSimulator(conversations=250, messages=25_000, seed=34)
    revoked: list[str] = []

    def revoke_after_first_listing(request) -> bool:
        if not revoked:
            sim.access_token = "rotated-by-the-user"
            revoked.append(request.path)
        return False

    with simulator_serving(sim, settings):
        page = sim_page(sim)
        with drift_when(sim, "conversations", revoke_after_first_listing):
            # When a full sync runs
            run = sync_now(page, "full")
        calls = graph_calls(sim)

    # Then the run failed at once with token_invalid: one call after the revocation, no retry
    assert (run.status, run.error_code) == ("failed", "token_invalid")
    assert calls == 2
    assert run.api_calls == 2
    assert run.batches_succeeded == 0
    assert not Conversation.objects.filter(page=page).exists()
    # ...the page needs re-authorisation, and no new run starts until it has a new token
    page.refresh_from_db()
    assert page.is_reauthorization_required is True
    with pytest.raises(SyncRefused):
        sync_request(page=page, mode="full", enqueue=False)
    assert SyncRun.objects.filter(page=page).count() == 1


def test_webhooks_during_a_full_sync_end_equal_to_the_truth(settings, live_server):
    # Given a page synced once, and the simulator sending webhooks to the live server
    sim = GraphSimulator(
        conversations=300,
        messages=15_000,
        seed=35,
        webhook_target=f"{live_server.url}/webhooks/messenger/",
        app_secret=django_settings.FB_APP_SECRET,
    )
    with simulator_serving(sim, settings):
        page = sim_page(sim)
        assert sync_now(page, "full").status == "succeeded"

        # When new messages arrive by webhook into conversations across the page while a full
        # sync walks them
        stop = threading.Event()
        statuses: list[int] = []
        newest_seen: dict[int, tuple[object, str]] = {}
        regressions: list[tuple[object, ...]] = []
        watched: list[int] = []
        chooser = random.Random(35)

        def deliver() -> None:
            while not stop.is_set():
                index = chooser.randrange(300)
                added = [
                    sim.message_add(
                        thread_id=sim.generated_conversation(index).key,
                        text=f"live {len(statuses)}",
                        from_page=len(statuses) % 4 == 3,
                    )
                ]
                statuses.append(sim.webhook_emit(added))
                stop.wait(0.02)

        def watch() -> None:
            # No conversation's last message ever moves back in time.
            from django.db import connection

            try:
                while not stop.is_set():
                    for pk, at, mid in Conversation.objects.filter(page=page).values_list(
                        "pk", "last_message_at", "last_message_mid"
                    ):
                        if pk in newest_seen and (at is None or at < newest_seen[pk][0]):
                            regressions.append((pk, newest_seen[pk], (at, mid)))
                        newest_seen[pk] = (at, mid)
                    watched.append(len(newest_seen))
                    stop.wait(0.05)
            except BaseException as error:
                regressions.append(("watcher failed", repr(error)))
                raise
            finally:
                connection.close()

        sim.faults.slow_ms = 300  # the full sync lasts a few seconds
        threads = [threading.Thread(target=deliver), threading.Thread(target=watch)]
        for thread in threads:
            thread.start()
        try:
            run = sync_now(page, "full")
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=30)

    # Then both paths wrote, nothing moved backwards, and the final state equals the truth
    assert run.status == "succeeded", run.error
    assert len(statuses) >= 5
    assert set(statuses) == {200}
    assert regressions == []
    assert len(watched) >= 5  # the watcher looked all along
    assert max(watched) == 300
    assert Message.objects.filter(page=page, source="webhook").count() >= 1
    assert Message.objects.filter(page=page).count() == 15_000 + len(statuses)
    assert_equal_to_truth(page, sim)


def test_callers_queued_behind_a_throttled_bucket_resume_one_rate_slot_apart():
    # Given a page bucket of 4 calls/s that throttling blocked for one second
    limiter = RateLimiter()
    bucket = Bucket("graph:page:queued-test", rate=4)
    assert limiter.reserve([bucket]).wait == 0
    limiter.block(bucket.key, timedelta(seconds=1))

    # When four callers (workers, the prefetching thread) reserve their turn during the block
    reservations = [limiter.reserve([bucket]) for _ in range(4)]

    # Then all of them know they are throttled, the first calls when the block ends, and the
    # others follow at the bucket's rate: no burst at the moment Meta lets the page call again
    # (more calls while limited extend the block)
    assert all(reservation.throttled for reservation in reservations)
    waits = [reservation.wait for reservation in reservations]
    assert waits[0] == pytest.approx(1.0, abs=0.05)
    gaps = [later - earlier for earlier, later in itertools.pairwise(waits)]
    assert min(gaps) > 0.25 - 0.02, waits


def test_a_run_that_cannot_start_fails_and_frees_the_page_lease(settings):
    # Given a page whose stored token the current key cannot decrypt (a dropped key)
    page = page_upsert(page_id="111222333", name="MyShop", access_token="old-token")
    settings.FIELD_ENCRYPTION_KEY = Fernet.generate_key().decode()
    run, _ = sync_request(page=page, mode="full", enqueue=False)

    # When a worker executes the run
    finished = sync_run_execute(run_id=run.pk)

    # Then it failed with its reason, without the lease, and the next request starts a run
    assert (finished.status, finished.error_code) == ("failed", "internal_error")
    assert "DecryptionFailed" in finished.error
    assert finished.lease_token is None
    assert finished.finished_at is not None
    again, created = sync_request(page=page, mode="full", enqueue=False)
    assert created
    assert again.pk != run.pk


# A cursor Meta no longer knows (expired): the simulator answers error 100, as Meta does.
DEAD_CURSOR = "QVFIZXhwaXJlZA"


def test_a_saved_cursor_the_api_rejects_is_walked_from_the_top(settings):
    # Given a run stopped by its time budget after one batch, whose saved cursor then expired
    sim = GraphSimulator(conversations=300, messages=3_000, seed=36)
    with simulator_serving(sim, settings):
        page = sim_page(sim)
        sim.faults.slow_ms = 400
        settings.SYNC_TIME_BUDGET_SECONDS = 0.3
        stopped = sync_now(page, "full")
        sim.faults.slow_ms = 0
        settings.SYNC_TIME_BUDGET_SECONDS = 240
        assert (stopped.status, stopped.conversations_seen) == ("partial", 100)
        SyncRun.objects.filter(pk=stopped.pk).update(
            cursor={"folder": "inbox", "after": DEAD_CURSOR}
        )

        # When the next run resumes there
        resumed = sync_now(page, "full")

    # Then it walked from the top instead of failing at the cursor for ever, and completed
    assert resumed.status == "succeeded", resumed.error
    assert resumed.resumed_from_id == stopped.pk
    assert resumed.conversations_seen == 300
    assert_equal_to_truth(page, sim)


def test_a_recorded_batch_whose_cursor_expired_is_covered_by_a_walk_from_the_top(settings):
    # Given a full run with a failed second batch, stopped on its third page (cursor saved)...
    settings.SYNC_BATCH_ATTEMPTS = 1
    sim = GraphSimulator(conversations=210, messages=12_600, seed=37)
    thread = _long_thread_in_second_batch(sim)
    listed: list[str] = []

    def third_page(request) -> bool:
        after = request.query.get("after")
        if after and after not in listed:
            listed.append(after)
        return bool(after) and after != listed[0]

    with simulator_serving(sim, settings):
        page = sim_page(sim)
        with (
            drift_when(sim, "messages", lambda request: thread in request.path),
            drift_when(sim, "conversations", third_page),
        ):
            stopped = sync_now(page, "full")
        assert (stopped.status, len(stopped.failed_batches)) == ("partial", 1)
        assert stopped.cursor == {"folder": "inbox", "after": listed[1]}
        # ...and the recorded batch's cursor expired since
        SyncRun.objects.filter(pk=stopped.pk).update(
            failed_batches=[{**stopped.failed_batches[0], "after": DEAD_CURSOR}]
        )

        # When the next run retries it
        resumed = sync_now(page, "full")

    # Then the batch is dropped and the walk starts from the top, covering its conversations:
    # the run completes to the truth, nothing soft-deleted, no batch recorded for ever
    assert resumed.status == "succeeded", resumed.error
    assert resumed.failed_batches == []
    assert resumed.conversations_seen == 210
    assert resumed.conversations_soft_deleted == 0
    assert_equal_to_truth(page, sim)


# -- a database error while writing a batch ----------------------------------------------------

_FAIL_BATCH_WRITES = """
CREATE SEQUENCE test_batch_write_attempts;
CREATE FUNCTION test_fail_batch_writes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- A sequence is not rolled back with the failed statement: the first %(failures)s row
    -- inserts fail, whatever transaction they were in, and every later one passes.
    IF nextval('test_batch_write_attempts') <= %(failures)s THEN
        RAISE EXCEPTION 'injected failure of a batch write' USING ERRCODE = 'serialization_failure';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER test_fail_batch_writes BEFORE INSERT ON conversations_message
    FOR EACH ROW EXECUTE FUNCTION test_fail_batch_writes();
"""

_HEAL_BATCH_WRITES = """
DROP TRIGGER IF EXISTS test_fail_batch_writes ON conversations_message;
DROP FUNCTION IF EXISTS test_fail_batch_writes();
DROP SEQUENCE IF EXISTS test_batch_write_attempts;
"""


@pytest.fixture
def failing_batch_writes():
    """`fail(n)`: the next n message inserts fail with a real PostgreSQL error."""
    from django.db import connection

    def fail(failures: int) -> None:
        with connection.cursor() as cursor:
            cursor.execute(_HEAL_BATCH_WRITES)
            cursor.execute(_FAIL_BATCH_WRITES % {"failures": int(failures)})

    yield fail
    with connection.cursor() as cursor:
        cursor.execute(_HEAL_BATCH_WRITES)


def test_a_batch_whose_write_fails_once_is_retried_and_the_run_succeeds(
    settings, failing_batch_writes, caplog
):
    # Given a database that refuses the first batch write once
    sim = GraphSimulator(conversations=30, messages=300, seed=61)
    with simulator_serving(sim, settings):
        page = sim_page(sim)
        failing_batch_writes(1)

        # When a full sync runs
        with caplog.at_level("WARNING", logger="conversations.services.sync.engine"):
            run = sync_now(page, "full")

    # Then the batch was retried in a new transaction and nothing is missing or doubled
    assert (run.status, run.error_code) == ("succeeded", ""), run.error
    assert run.failed_batches == []
    assert run.messages_inserted == 300
    assert any(
        "database_error" in record.getMessage() and "attempt 1 of 2" in record.getMessage()
        for record in caplog.records
    )
    assert_equal_to_truth(page, sim)


def test_a_batch_whose_write_keeps_failing_is_recorded_and_the_next_run_writes_it(
    settings, failing_batch_writes
):
    # Given a database that refuses every attempt of the first batch write
    sim = GraphSimulator(conversations=30, messages=300, seed=62)
    with simulator_serving(sim, settings):
        page = sim_page(sim)
        failing_batch_writes(django_settings.SYNC_BATCH_ATTEMPTS)

        # When a full sync runs
        failed = sync_now(page, "full")

        # Then the run is partial with the batch recorded, and nothing of it half-written
        assert (failed.status, failed.error_code) == ("partial", "failed_batches")
        assert [batch["error_code"] for batch in failed.failed_batches] == ["database_error"]
        assert failed.failed_batches[0]["folder"] == "inbox"
        assert "injected failure" in failed.failed_batches[0]["detail"]
        assert Message.objects.filter(page=page).count() == 0
        assert Conversation.objects.filter(page=page).count() == 0

        # When the next run comes (the database answers again)
        second = sync_now(page, "full")

    # Then it retried the recorded batch first and the page equals the truth
    assert (second.status, second.error_code) == ("succeeded", ""), second.error
    assert second.failed_batches == []
    assert second.messages_inserted == 300
    assert_equal_to_truth(page, sim)
