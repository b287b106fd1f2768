"""Checks that read only what changed since the previous run, between full sweeps: what they
find, what waits for the next full sweep, and when the runner sweeps fully.

`conversations.messages_without_event` stands for every check with a `changed_sql`: the runner
decides the same way for each (evoflow/integrity/runner.py, `evaluation_plan`)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection

from conversations.models import EventKind, InteractionEvent
from evoflow.integrity import get_check
from evoflow.integrity.registry import SAMPLE_LIMIT
from evoflow.integrity.runner import integrity_run
from evoflow.models import IntegrityCheckResult, IntegrityRun
from tests.conversations.factories import ConversationFactory, MessageFactory

pytestmark = pytest.mark.django_db

CHECK = "conversations.messages_without_event"


def _message_with_event(conversation, *, days_old: int = 0):
    message = MessageFactory(conversation=conversation)
    InteractionEvent.objects.create(
        page=conversation.page,
        conversation=conversation,
        message=message,
        kind=EventKind.MESSAGE_RECEIVED,
        occurred_at=message.sent_at,
        dedupe_key=f"message:{message.mid}",
        source="sync",
    )
    if days_old:
        # Stored long before the runs below (created_at is the database's own clock).
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE conversations_message SET created_at = now() - %s WHERE id = %s",
                [timedelta(days=days_old), message.pk],
            )
    return message


def _result(run: IntegrityRun) -> IntegrityCheckResult:
    return run.results.get(check_id=CHECK)


def _run(**options) -> IntegrityCheckResult:
    return _result(integrity_run(check_ids=[CHECK], **options))


def test_the_first_run_sweeps_fully_and_the_next_reads_only_what_changed(settings):
    settings.INTEGRITY_CHANGE_OVERLAP_SECONDS = 60
    conversation = ConversationFactory()
    _message_with_event(conversation, days_old=3)

    first = _run()
    second = _run()

    assert (first.status, first.since, first.swept_at) == ("ok", None, first.run.started_at)
    assert second.status == "ok"
    assert second.since == first.run.started_at - timedelta(seconds=60)
    # The incremental result still builds on the first run's sweep.
    assert second.swept_at == first.run.started_at
    assert get_check(CHECK).is_incremental


def test_a_message_stored_since_the_previous_run_without_its_event_is_found_incrementally():
    conversation = ConversationFactory()
    _message_with_event(conversation, days_old=3)
    _run()
    # Given a message written behind the service since: no event
    late = MessageFactory(conversation=conversation)

    result = _run()

    assert result.since is not None
    assert (result.status, result.failing_count) == ("error", 1)
    assert result.sample_ids == [str(late.pk)]
    assert result.tracked_ids == [str(late.pk)]


def test_a_failing_row_keeps_failing_in_incremental_runs_until_it_is_repaired(settings):
    # No overlap: the failing message is older than every window below, only the ids the
    # previous result tracked bring it back.
    settings.INTEGRITY_CHANGE_OVERLAP_SECONDS = 0
    conversation = ConversationFactory()
    message = _message_with_event(conversation, days_old=3)
    InteractionEvent.objects.filter(message=message).delete()
    found = _run(full=True)
    assert (found.failing_count, found.since) == (1, None)

    again = _run()
    repaired = _result(integrity_run(check_ids=[CHECK], fix=True))
    after = _run()

    assert (again.since is not None, again.failing_count, again.sample_ids) == (
        True,
        1,
        [str(message.pk)],
    )
    assert (repaired.status, repaired.repaired_count, repaired.tracked_ids) == ("ok", 1, [])
    assert (after.status, after.since is not None) == ("ok", True)


def test_an_older_row_broken_without_a_trace_waits_for_the_full_sweep():
    # The trade-off, shown: an event deleted from a message stored before the window leaves
    # nothing an incremental run reads; the full sweep (daily, or `integrity --full`) finds it.
    conversation = ConversationFactory()
    message = _message_with_event(conversation, days_old=3)
    _run()
    InteractionEvent.objects.filter(message=message).delete()

    incremental = _run()
    full = _run(full=True)

    assert (incremental.since is not None, incremental.failing_count) == (True, 0)
    assert (full.since, full.failing_count, full.sample_ids) == (None, 1, [str(message.pk)])


def test_a_full_sweep_older_than_the_limit_makes_the_next_run_sweep_again(settings):
    settings.INTEGRITY_FULL_SWEEP_HOURS = 26
    conversation = ConversationFactory()
    _message_with_event(conversation, days_old=3)
    swept = _run()
    IntegrityCheckResult.objects.filter(pk=swept.pk).update(
        swept_at=swept.swept_at - timedelta(hours=27)
    )

    result = _run()

    assert (result.since, result.swept_at) == (None, result.run.started_at)


def test_more_failing_rows_than_tracked_make_the_next_run_sweep_fully():
    conversation = ConversationFactory()
    for _ in range(3):
        _message_with_event(conversation, days_old=3)
    InteractionEvent.objects.all().delete()
    found = _run(full=True)
    # As if the check had found more than it could track.
    IntegrityCheckResult.objects.filter(pk=found.pk).update(tracked_ids=found.tracked_ids[:2])

    result = _run()

    assert (found.failing_count, len(found.sample_ids) <= SAMPLE_LIMIT) == (3, True)
    assert (result.since, result.failing_count) == (None, 3)


def test_the_schedule_always_sweeps_fully():
    from evoflow.integrity.tasks import integrity_run_scheduled

    ConversationFactory()
    _run()

    run = IntegrityRun.objects.get(pk=integrity_run_scheduled())

    assert _result(run).since is None
