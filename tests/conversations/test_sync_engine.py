"""Acceptance of the Graph sync engine in this process, against the simulator over HTTP: a full
sync equals the truth and is idempotent, an incremental one costs O(k) calls, soft deletes only
after a complete run, and a run stopped by its time budget resumes where it stopped."""

from __future__ import annotations

import pytest
import requests

from conversations.models import Conversation, InteractionEvent, Message
from conversations.simulator.graph import GraphSimulator
from conversations.simulator.world import BAD_PARTICIPANT_KINDS
from tests.conversations.sync_helpers import (
    assert_equal_to_truth,
    assert_subset_of_truth,
    drift_when,
    graph_calls,
    long_thread_in_batch,
    sim_page,
    simulator_serving,
    sync_now,
)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

# What the sync records for each wrong shape the simulator serves (F7).
EXPECTED_REASONS = {
    "no_id": "participant without an id (deleted account)",
    "page_only": "no participant besides the page",
    "not_psid": "participant id is not a page-scoped id",
    "two_people": "more than one participant besides the page",
}


@pytest.fixture(autouse=True)
def _fast_limiter(settings):
    # The limiter itself is tested with worker processes; here it must not set the pace.
    settings.GRAPH_PAGE_CALLS_PER_SECOND = 1000
    settings.GRAPH_APP_CALLS_PER_SECOND = 1000
    settings.SYNC_BATCH_ATTEMPTS = 1


def test_a_full_sync_equals_the_truth_and_a_second_one_changes_nothing(settings):
    # Given 200 conversations of 0..~180 messages (threads past 100 are paged on the messages
    # edge), 15% of them in the "other" folder
    sim = GraphSimulator(conversations=200, messages=18_000, seed=21, other_folder_share=0.15)
    lengths = [sim.generated_message_count(index) for index in range(200)]
    assert max(lengths) > 150
    assert sum(length > 100 for length in lengths) >= 20
    with simulator_serving(sim, settings):
        page = sim_page(sim)

        # When a full sync runs
        run = sync_now(page, "full")

        # Then it succeeded and the database equals the truth
        assert (run.status, run.error_code, run.failed_batches) == ("succeeded", "", [])
        assert_equal_to_truth(page, sim)
        assert Message.objects.filter(page=page).count() == 18_000
        assert run.messages_inserted == 18_000
        assert run.events_inserted == 18_000
        assert run.conversations_seen == 200
        assert run.conversations_inserted == 200
        assert run.cursor is None
        counters = sim.counters.snapshot()["calls"]
        long_threads = sum(length > 100 for length in lengths)
        assert counters["messages"] >= long_threads  # the messages edge was paged
        first_calls = graph_calls(sim)
        assert run.api_calls == first_calls

        # When a second full sync runs
        sim.counters.reset()
        second = sync_now(page, "full")

    # Then it inserted and duplicated nothing
    assert second.status == "succeeded"
    assert (
        second.messages_inserted,
        second.events_inserted,
        second.conversations_inserted,
        second.conversations_updated,
        second.conversations_soft_deleted,
    ) == (0, 0, 0, 0, 0)
    assert second.conversations_seen == 200
    assert second.api_calls == first_calls
    assert Message.objects.filter(page=page).count() == 18_000
    assert InteractionEvent.objects.filter(page=page).count() == 18_000
    assert Conversation.objects.filter(page=page).count() == 200
    assert_equal_to_truth(page, sim)


def test_an_incremental_sync_costs_calls_in_proportion_to_the_changes(settings):
    # Given a page fully synced
    sim = GraphSimulator(conversations=3_000, messages=6_000, seed=22)
    with simulator_serving(sim, settings):
        page = sim_page(sim)
        full = sync_now(page, "full")
        assert full.status == "succeeded"
        full_calls = graph_calls(sim)
        page.refresh_from_db()
        watermark_after_full = page.sync_watermark
        assert watermark_after_full is not None

        # ...and k = 4 changes: three threads get messages (one of them 130, more than a page of
        # the messages edge), one new conversation
        sim.message_add(thread_id=sim.generated_conversation(5).key, text="where is it?")
        sim.message_add(thread_id=sim.generated_conversation(120).key, text="hello again")
        sim.message_add(
            thread_id=sim.generated_conversation(120).key, text="we answer", from_page=True
        )
        for number in range(130):
            sim.message_add(thread_id=sim.generated_conversation(2_999).key, text=f"n{number}")
        new = sim.page().conversation_add(psid="7000000000001", name="Newcomer")
        sim.message_add(thread_id=new.key, text="first contact")

        # When an incremental sync fails on drifted pages, the watermark stays
        sim.counters.reset()
        sim.drift_rate = 1.0
        failed = sync_now(page, "incremental")
        assert (failed.status, failed.error_code) == ("partial", "schema_drift")
        page.refresh_from_db()
        assert page.sync_watermark == watermark_after_full
        sim.drift_rate = 0.0

        # When an incremental sync runs
        sim.counters.reset()
        run = sync_now(page, "incremental")

    # Then it made O(k) calls: one page of conversations per folder, and one more page of the
    # messages edge for the thread with 131 new messages
    calls = graph_calls(sim)
    folders = len(settings.SYNC_FOLDERS)
    assert run.status == "succeeded", run.error
    assert calls == run.api_calls
    assert calls <= folders + 4
    assert calls * 5 < full_calls
    assert sim.counters.snapshot()["calls"].get("messages", 0) == 1
    assert run.messages_inserted == 1 + 2 + 130 + 1
    assert run.conversations_inserted == 1
    # ...and the database equals the truth again, the watermark moved to the newest update
    assert_equal_to_truth(page, sim)
    page.refresh_from_db()
    assert page.sync_watermark > watermark_after_full
    newest = max(c["updated_timestamp_ms"] for c in sim.truth()["conversations"]) // 1000
    assert int(page.sync_watermark.timestamp()) == newest


def _stop_after_one_batch(sim: GraphSimulator, settings) -> None:
    """A run's budget is checked before each batch: with every call taking 0.4 s and a budget
    of 0.3 s, a run writes exactly one batch, then stops."""
    sim.faults.slow_ms = 400
    settings.SYNC_TIME_BUDGET_SECONDS = 0.3


def _unlimited(sim: GraphSimulator, settings) -> None:
    sim.faults.slow_ms = 0
    settings.SYNC_TIME_BUDGET_SECONDS = 240


def test_soft_delete_after_a_complete_full_run_only(settings):
    # Given a page fully synced, then three of its conversations deleted on Facebook
    sim = GraphSimulator(conversations=230, messages=2_300, seed=23)
    with simulator_serving(sim, settings):
        page = sim_page(sim)
        assert sync_now(page, "full").status == "succeeded"
        gone = [sim.generated_conversation(index).key for index in (3, 150, 229)]
        for key in gone:
            assert sim.page().conversation_delete(key)

        # When a full run is stopped by its time budget after its first batch
        _stop_after_one_batch(sim, settings)
        stopped = sync_now(page, "full")
        _unlimited(sim, settings)
        assert (stopped.status, stopped.error_code) == ("partial", "time_budget")
        assert stopped.conversations_seen == 100
        # ...and its follow-up fails on the next page of conversations (drifted)
        with drift_when(sim, "conversations", lambda request: "after" in request.query) as hits:
            failing = sync_now(page, "full")
        assert hits
        assert (failing.status, failing.error_code) == ("partial", "schema_drift")
        assert failing.resumed_from_id == stopped.pk
        assert failing.cursor == stopped.cursor

        # Then neither partial run soft-deleted anything
        assert stopped.conversations_soft_deleted == failing.conversations_soft_deleted == 0
        assert not Conversation.objects.filter(page=page, deleted_at__isnull=False).exists()

        # When the chain completes
        complete = sync_now(page, "full")

    # Then exactly the deleted conversations are soft-deleted, their rows kept
    assert complete.status == "succeeded", complete.error
    assert complete.resumed_from_id == failing.pk
    assert complete.chain_id == stopped.pk
    assert complete.conversations_seen == 230 - 3 - 100
    assert complete.conversations_soft_deleted == 3
    deleted = Conversation.objects.filter(page=page, deleted_at__isnull=False)
    assert sorted(deleted.values_list("thread_id", flat=True)) == sorted(gone)
    assert Message.objects.filter(conversation__in=deleted).count() == sum(
        sim.generated_message_count(index) for index in (3, 150, 229)
    )
    assert_equal_to_truth(page, sim)


def test_a_run_out_of_time_stops_partial_and_the_next_resumes_where_it_stopped(settings):
    # Given 300 conversations (three batches in the inbox)
    sim = GraphSimulator(conversations=300, messages=3_000, seed=24)
    with simulator_serving(sim, settings):
        page = sim_page(sim)

        # When a run's budget is over after its first batch
        _stop_after_one_batch(sim, settings)
        first = sync_now(page, "full")
        _unlimited(sim, settings)

        # Then it stopped partial with its cursor saved after the first batch
        assert (first.status, first.error_code) == ("partial", "time_budget")
        assert first.conversations_seen == 100
        assert first.cursor is not None
        assert first.cursor["folder"] == "inbox"
        assert first.cursor["after"]
        assert first.chain_id == first.pk
        assert_subset_of_truth(page, sim)
        assert Conversation.objects.filter(page=page).count() == 100

        # When the next run has time
        sim.counters.reset()
        second = sync_now(page, "full")

    # Then it resumed there, in the same chain, and completed
    assert second.status == "succeeded", second.error
    assert second.resumed_from_id == first.pk
    assert second.chain_id == first.pk
    assert second.conversations_seen == 200
    assert second.messages_inserted + first.messages_inserted == 3_000
    assert sim.counters.snapshot()["calls"]["conversations"] == 2 + 3  # inbox 2, 3 folders
    assert_equal_to_truth(page, sim)


def test_an_incremental_sync_completes_history_the_webhook_got_ahead_of(settings, post_webhook):
    # Given a page never synced, whose webhook already delivered the newest message of a
    # conversation with a long history (and of a second one, after a lost webhook)
    sim = GraphSimulator(conversations=120, messages=6_000, seed=25)
    with simulator_serving(sim, settings):
        page = sim_page(sim)
        started = sim.generated_conversation(7).key
        added = [sim.message_add(thread_id=started, text="hello, still there?")]
        assert post_webhook(sim.webhook_document_for(added)).status_code == 200
        assert Message.objects.filter(page=page).count() == 1

        # When incremental syncs run (the schedule's kind)
        first = sync_now(page, "incremental")
        assert first.status == "succeeded", first.error
        assert_equal_to_truth(page, sim)

        # ...and, later, a webhook is lost (the message before the delivered one)
        lost = sim.message_add(thread_id=started, text="this webhook never arrived")
        delivered = [sim.message_add(thread_id=started, text="and this one did")]
        assert post_webhook(sim.webhook_document_for(delivered)).status_code == 200
        assert not Message.objects.filter(mid=lost[1].mid).exists()
        second = sync_now(page, "incremental")

    # Then the history before the webhook's message is fetched too: the database equals
    # the truth
    assert second.status == "succeeded", second.error
    assert Message.objects.filter(mid=lost[1].mid).count() == 1
    assert_equal_to_truth(page, sim)


def test_a_full_batch_retried_by_an_incremental_run_counts_as_seen_by_its_chain(settings):
    # Given a page synced once (so an incremental walk stops at its watermark)
    sim = GraphSimulator(conversations=210, messages=12_600, seed=26)
    thread = long_thread_in_batch(sim, 1)
    with simulator_serving(sim, settings):
        page = sim_page(sim)
        assert sync_now(page, "full").status == "succeeded"

        # ...and a full run whose second batch fails (a drifted thread), and which stops on
        # its third page of conversations (drifted too), its cursor saved there
        listed: list[str] = []

        def third_page(request) -> bool:
            after = request.query.get("after")
            if after and after not in listed:
                listed.append(after)
            return bool(after) and after != listed[0]

        with (
            drift_when(sim, "messages", lambda request: thread in request.path),
            drift_when(sim, "conversations", third_page),
        ):
            stopped = sync_now(page, "full")
        assert (stopped.status, stopped.error_code) == ("partial", "schema_drift")
        assert [batch["after"] for batch in stopped.failed_batches] == [listed[0]]
        assert stopped.cursor == {"folder": "inbox", "after": listed[1]}

        # When an incremental run (the admin's "retry failed batches") retries that batch
        retried = sync_now(page, "incremental")
        assert (retried.status, retried.failed_batches) == ("succeeded", [])
        # ...and a full run resumes the chain and completes it
        completed = sync_now(page, "full")

    # Then the retried batch counted as seen by the chain: nothing is soft-deleted
    assert completed.status == "succeeded", completed.error
    assert completed.resumed_from_id == stopped.pk
    assert completed.chain_id == stopped.pk
    assert completed.conversations_soft_deleted == 0
    assert not Conversation.objects.filter(page=page, deleted_at__isnull=False).exists()
    assert_equal_to_truth(page, sim)


def test_a_chain_whose_batches_do_not_fit_the_budget_still_progresses(settings):
    # Given long threads: the first 100 conversations need 111 calls, the first 25 need 28;
    # at 60 calls/s with a budget of 1 s, a batch of 100 cannot fit, one of 25 can
    sim = GraphSimulator(conversations=100, messages=16_000, seed=27)
    settings.GRAPH_PAGE_CALLS_PER_SECOND = 60
    settings.SYNC_TIME_BUDGET_SECONDS = 1
    with simulator_serving(sim, settings):
        page = sim_page(sim)

        # When a run is stopped by the budget inside its first batch
        stopped = sync_now(page, "full")
        # Then it wrote nothing and asks the next run for pages a quarter the size
        assert (stopped.status, stopped.error_code) == ("partial", "time_budget")
        assert stopped.batches_succeeded == 0
        assert stopped.cursor == {"folder": "inbox", "after": None, "limit": 25}

        # When the next run has the same budget, it progresses with the smaller pages
        progressing = sync_now(page, "full")
        assert progressing.batches_succeeded >= 1
        assert progressing.conversations_seen == 25 * progressing.batches_succeeded
        assert progressing.cursor["limit"] == 25
        # ...and the chain completes
        settings.SYNC_TIME_BUDGET_SECONDS = 240
        completed = sync_now(page, "full")

    assert completed.status == "succeeded", completed.error
    assert completed.chain_id == progressing.chain_id == stopped.pk
    assert_equal_to_truth(page, sim)


def test_threads_with_unusable_participants_are_skipped_with_their_reason(settings):
    """F7 through the real client and planner: the simulator serves four threads' participants
    wrong (over its control API, as Meta sends them); the sync skips exactly those, records
    why, stores everything else, and never soft-deletes a skipped thread stored earlier."""
    sim = GraphSimulator(conversations=30, messages=300, seed=29)
    with simulator_serving(sim, settings) as base:
        page = sim_page(sim)
        # Given thread 7 stored by a first sync, then four threads served wrong
        assert sync_now(page, "full").status == "succeeded"
        broken = {
            sim.generated_conversation(index).key: kind
            for index, kind in zip((3, 7, 12, 25), BAD_PARTICIPANT_KINDS, strict=True)
        }
        for thread, kind in broken.items():
            answer = requests.post(
                f"{base}/_control/participants",
                json={"conversation": thread, "kind": kind},
                timeout=5,
            )
            assert answer.status_code == 200, answer.text
        # When a full sync reads the page
        second = sync_now(page, "full")

    # Then each broken thread is skipped with the reason for its kind, and only those
    assert second.status == "succeeded", second.error
    assert second.conversations_skipped == 4
    assert {item["thread_id"]: item["reason"] for item in second.skipped} == {
        thread: EXPECTED_REASONS[kind] for thread, kind in broken.items()
    }
    assert second.conversations_seen == 30 - 4
    # ...and a skipped thread stored earlier stays live (it is still on Facebook)
    assert second.conversations_soft_deleted == 0
    assert not Conversation.objects.filter(page=page, deleted_at__isnull=False).exists()


def test_a_thread_first_seen_with_unusable_participants_is_not_stored(settings):
    sim = GraphSimulator(conversations=12, messages=60, seed=30)
    with simulator_serving(sim, settings):
        page = sim_page(sim)
        unusable = sim.generated_conversation(5).key
        assert sim.page().participants_break(unusable, "no_id")

        run = sync_now(page, "full")

    assert run.status == "succeeded", run.error
    assert run.skipped == [
        {"thread_id": unusable, "reason": "participant without an id (deleted account)"}
    ]
    assert not Conversation.objects.filter(page=page, thread_id=unusable).exists()
    assert Conversation.objects.filter(page=page).count() == 11
    assert Message.objects.filter(page=page).count() == 60 - sim.generated_message_count(5)


def test_a_graph_error_that_cannot_change_is_not_retried(settings):
    """A 4xx other than throttling (here: the page is not known to the API) gets the same
    answer every time: one call, no backoff, the run ends partial with Meta's code."""
    settings.SYNC_BATCH_ATTEMPTS = 3
    from conversations.services.pages import page_upsert

    sim = GraphSimulator(conversations=5, messages=20, seed=31)
    with simulator_serving(sim, settings):
        unknown = page_upsert(page_id="555000555", name="Unknown", access_token="sim-page-token")
        run = sync_now(unknown, "full")

    assert (run.status, run.error_code) == ("partial", "graph_error")
    assert run.api_calls == 1
    assert "code 100" in run.error


def test_the_schedule_continues_an_unfinished_full_chain_until_it_completes(settings):
    from conversations.models import SyncRun
    from conversations.services.sync import sync_pages_scheduled, sync_run_execute

    # Given a page fully synced, two conversations deleted on Facebook, and a full run that
    # stopped after its first batch (time budget)
    sim = GraphSimulator(conversations=230, messages=2_300, seed=33)
    with simulator_serving(sim, settings):
        page = sim_page(sim)
        assert sync_now(page, "full").status == "succeeded"
        gone = [sim.generated_conversation(index).key for index in (120, 228)]
        for key in gone:
            assert sim.page().conversation_delete(key)
        _stop_after_one_batch(sim, settings)
        stopped = sync_now(page, "full")
        assert (stopped.status, stopped.error_code) == ("partial", "time_budget")

        # When the schedule comes round, twice (each run of the chain stopping after a batch)
        scheduled = []
        for _ in range(2):
            assert sync_pages_scheduled(trigger="schedule") == 1
            run = SyncRun.objects.get(page=page, status="queued")
            scheduled.append(sync_run_execute(run_id=run.pk))
        _unlimited(sim, settings)
        assert sync_pages_scheduled(trigger="schedule") == 1
        last = sync_run_execute(run_id=SyncRun.objects.get(page=page, status="queued").pk)

        # Then every scheduled run was a full one resuming the chain, the last completing it
        runs = [*scheduled, last]
        assert [(run.mode, run.trigger) for run in runs] == [("full", "schedule")] * 3
        assert [run.resumed_from_id for run in runs] == [stopped.pk, runs[0].pk, runs[1].pk]
        assert {run.chain_id for run in runs} == {stopped.pk}
        assert [run.status for run in runs] == ["partial", "partial", "succeeded"]
        assert last.conversations_soft_deleted == 2
        deleted = Conversation.objects.filter(page=page, deleted_at__isnull=False)
        assert sorted(deleted.values_list("thread_id", flat=True)) == sorted(gone)

        # When the schedule comes round once the chain is complete
        assert sync_pages_scheduled(trigger="schedule") == 1
        after = SyncRun.objects.get(page=page, status="queued")

    # Then it is back to incremental runs
    assert after.mode == "incremental"
    assert_equal_to_truth(page, sim)


def test_the_schedule_does_not_restart_a_full_run_an_operator_cancelled(settings):
    from conversations.models import SyncRun
    from conversations.services.sync import sync_pages_scheduled, sync_request, sync_run_cancel

    sim = GraphSimulator(conversations=5, messages=10, seed=34)
    with simulator_serving(sim, settings):
        page = sim_page(sim)
        run, _ = sync_request(page=page, mode="full", enqueue=False)
        SyncRun.objects.filter(pk=run.pk).update(cursor={"folder": "inbox", "after": "x"})
        assert sync_run_cancel(run_id=run.pk)

        assert sync_pages_scheduled(trigger="schedule") == 1

    assert SyncRun.objects.get(page=page, status="queued").mode == "incremental"
