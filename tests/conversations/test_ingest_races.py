"""Races between concurrent writers, with real threads on separate PostgreSQL connections.

Each test makes one writer wait on a row lock another one holds (checked in pg_stat_activity,
not guessed with sleeps), then lets the holder commit: the waiter's statement snapshot was
taken before that commit, which is exactly where a one-statement write loses data.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from unittest import mock

import pytest
from django.db import connection, transaction
from django.utils import timezone
from prometheus_client import REGISTRY

from conversations.models import (
    Conversation,
    Direction,
    EventKind,
    InteractionEvent,
    Message,
    ReceiptStatus,
    WebhookReceipt,
)
from conversations.services import webhook as webhook_service
from conversations.services.ingest import (
    IncomingEvent,
    IncomingMark,
    IncomingMessage,
    batch_apply,
)
from conversations.services.repairs import conversation_message_counts_repair
from conversations.signatures import meta_json_bytes
from conversations.simulator.payloads import message_event, webhook_document
from tests.conversations.factories import FacebookPageFactory

PAGE_ID = "111222333"
PSID = "7000000001"
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
WAIT_SECONDS = 10


class Worker(threading.Thread):
    """Runs `target` on its own database connection; re-raises its exception on `result()`."""

    def __init__(self, target: Callable[[], object]) -> None:
        super().__init__(daemon=True)
        self._target_call = target
        self.error: BaseException | None = None
        self.value: object = None
        self.backend_pid: int | None = None
        self.started_db = threading.Event()

    def run(self) -> None:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                self.backend_pid = cursor.fetchone()[0]
            self.started_db.set()
            self.value = self._target_call()
        except BaseException as error:
            self.error = error
        finally:
            self.started_db.set()
            connection.close()

    def result(self) -> object:
        self.join(WAIT_SECONDS)
        assert not self.is_alive(), "worker did not finish"
        if self.error is not None:
            raise self.error
        return self.value


def wait_until_blocked_on_a_lock(worker: Worker) -> None:
    """Return once the worker's backend waits for a lock held by another transaction."""
    assert worker.started_db.wait(WAIT_SECONDS)
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                [worker.backend_pid],
            )
            row = cursor.fetchone()
        if row is not None and row[0] == "Lock":
            return
        assert worker.error is None, worker.error
        time.sleep(0.01)
    raise AssertionError("the worker never waited for the lock")


@pytest.mark.django_db(transaction=True)
def test_marks_and_reaction_links_see_a_message_committed_while_waiting_for_the_lock():
    # Given a conversation, and batch A holding its lock with a new outbound m1 (12:00:10)
    page = FacebookPageFactory(page_id=PAGE_ID)
    batch_apply(messages=[IncomingMessage(page.pk, PSID, "m0", Direction.INBOUND, T0)])
    a_inserted, a_may_commit = threading.Event(), threading.Event()

    def batch_a() -> None:
        with transaction.atomic():
            sent = T0 + timedelta(seconds=10)
            batch_apply(messages=[IncomingMessage(page.pk, PSID, "m1", Direction.OUTBOUND, sent)])
            a_inserted.set()
            assert a_may_commit.wait(WAIT_SECONDS)

    watermark = T0 + timedelta(seconds=20)

    def batch_b() -> None:
        batch_apply(
            marks=[IncomingMark(page.pk, PSID, EventKind.READ, watermark)],
            events=[
                IncomingEvent(page.pk, PSID, EventKind.READ, watermark, f"read:{PSID}:1"),
                IncomingEvent(
                    page.pk, PSID, EventKind.REACTION, watermark, "reaction:m1:1", mid="m1"
                ),
            ],
        )

    worker_a = Worker(batch_a)
    worker_a.start()
    assert a_inserted.wait(WAIT_SECONDS)

    # When batch B (a read mark up to 12:00:20 and a reaction to m1) starts, waits for the
    # conversation lock, and A commits
    worker_b = Worker(batch_b)
    worker_b.start()
    wait_until_blocked_on_a_lock(worker_b)
    a_may_commit.set()
    worker_a.result()
    worker_b.result()

    # Then m1 is read and delivered at the watermark, and the reaction is linked to m1
    m1 = Message.objects.get(mid="m1")
    assert (m1.delivered_at, m1.read_at) == (watermark, watermark)
    reaction = InteractionEvent.objects.get(kind=EventKind.REACTION)
    assert reaction.message_id == m1.pk
    conversation = Conversation.objects.get()
    assert (conversation.read_watermark, conversation.message_count) == (watermark, 2)


def _failed_receipt(*, attempts: int, next_attempt_at: datetime) -> WebhookReceipt:
    body = meta_json_bytes(
        webhook_document(
            PAGE_ID,
            [
                message_event(
                    page_id=PAGE_ID, psid=PSID, mid="m_retry", timestamp_ms=1_741_000_000_000
                )
            ],
        )
    )
    return WebhookReceipt.objects.create(
        body=body,
        body_sha256="0" * 64,
        signature_verdict="valid",
        status=ReceiptStatus.FAILED,
        attempts=attempts,
        next_attempt_at=next_attempt_at,
    )


@pytest.mark.django_db(transaction=True)
def test_a_failed_attempt_does_not_flip_back_a_receipt_a_concurrent_retry_processed():
    # Given a due failed receipt for a conversation whose row another transaction locks
    page = FacebookPageFactory(page_id=PAGE_ID)
    batch_apply(messages=[IncomingMessage(page.pk, PSID, "m0", Direction.INBOUND, T0)])
    receipt = _failed_receipt(attempts=1, next_attempt_at=timezone.now())
    holder_locked, release_holder = threading.Event(), threading.Event()

    def hold_conversation_lock() -> None:
        with transaction.atomic():
            list(Conversation.objects.select_for_update().values_list("id"))
            holder_locked.set()
            assert release_holder.wait(WAIT_SECONDS)

    holder = Worker(hold_conversation_lock)
    holder.start()
    assert holder_locked.wait(WAIT_SECONDS)

    # When attempt A times out on that lock and, between its rollback and recording its
    # failure, attempt B processes the receipt
    a_rolled_back, b_done = threading.Event(), threading.Event()
    record_failure = webhook_service._receipt_fail

    def record_failure_after_b(**kwargs) -> None:
        a_rolled_back.set()
        assert b_done.wait(WAIT_SECONDS)
        record_failure(**kwargs)

    def attempt_a() -> str:
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '200ms'")
        return webhook_service.webhook_receipt_process(receipt_id=receipt.pk).status

    with mock.patch.object(webhook_service, "_receipt_fail", record_failure_after_b):
        worker_a = Worker(attempt_a)
        worker_a.start()
        assert a_rolled_back.wait(WAIT_SECONDS)
        release_holder.set()
        holder.result()
        status_b = webhook_service.webhook_receipt_process(receipt_id=receipt.pk).status
        b_done.set()
        status_a = worker_a.result()

    # Then B's outcome stands: processed, two attempts, the message stored once
    receipt.refresh_from_db()
    assert (status_a, status_b) == (ReceiptStatus.FAILED, ReceiptStatus.PROCESSED)
    assert (receipt.status, receipt.attempts, receipt.next_attempt_at) == (
        ReceiptStatus.PROCESSED,
        2,
        None,
    )
    assert list(Message.objects.order_by("mid").values_list("mid", flat=True)) == [
        "m0",
        "m_retry",
    ]


@pytest.mark.django_db(transaction=True)
def test_a_scheduled_retry_waits_for_the_next_attempt_time_and_an_operator_retry_does_not():
    # Given a failed receipt whose next attempt is in ten minutes
    FacebookPageFactory(page_id=PAGE_ID)
    receipt = _failed_receipt(attempts=1, next_attempt_at=timezone.now() + timedelta(minutes=10))

    # When the processing task reaches it early, then an operator retries it
    early = webhook_service.webhook_receipt_process(receipt_id=receipt.pk)
    receipt.refresh_from_db()
    status_after_early = (receipt.status, receipt.attempts)
    forced = webhook_service.webhook_receipt_retry(receipt_id=receipt.pk)

    # Then the early call leaves it alone and the operator's retry processes it
    assert early.status == "skipped"
    assert status_after_early == (ReceiptStatus.FAILED, 1)
    assert forced.status == ReceiptStatus.PROCESSED
    receipt.refresh_from_db()
    assert (receipt.status, receipt.attempts) == (ReceiptStatus.PROCESSED, 2)
    assert Message.objects.filter(mid="m_retry").count() == 1


@pytest.mark.django_db(transaction=True)
def test_the_count_repair_recounts_after_a_concurrent_insert_commits():
    # Given a conversation with 2 messages whose count says 5
    page = FacebookPageFactory(page_id=PAGE_ID)
    batch_apply(
        messages=[
            IncomingMessage(page.pk, PSID, f"m{n}", Direction.INBOUND, T0 + timedelta(seconds=n))
            for n in range(2)
        ]
    )
    Conversation.objects.update(message_count=5)
    a_inserted, a_may_commit = threading.Event(), threading.Event()

    def insert_a_third_message() -> None:
        with transaction.atomic():
            sent = T0 + timedelta(seconds=9)
            batch_apply(messages=[IncomingMessage(page.pk, PSID, "m9", Direction.INBOUND, sent)])
            a_inserted.set()
            assert a_may_commit.wait(WAIT_SECONDS)

    worker_a = Worker(insert_a_third_message)
    worker_a.start()
    assert a_inserted.wait(WAIT_SECONDS)

    # When the repair runs while that insert holds the conversation, which then commits
    repair = Worker(lambda: conversation_message_counts_repair(dry_run=False))
    repair.start()
    wait_until_blocked_on_a_lock(repair)
    a_may_commit.set()
    worker_a.result()
    repaired = repair.result()

    # Then the count is the 3 stored messages
    assert repaired == 1
    assert Conversation.objects.get().message_count == 3
    assert Message.objects.count() == 3


def _events_metric(kind: str) -> float:
    return REGISTRY.get_sample_value("evoflow_webhook_events_total", {"kind": kind}) or 0.0


@pytest.mark.django_db(transaction=True)
def test_events_are_counted_once_applied_not_when_an_attempt_fails():
    # Given a conversation whose row another transaction holds, and a short lock timeout
    page = FacebookPageFactory(page_id=PAGE_ID)
    batch_apply(messages=[IncomingMessage(page.pk, PSID, "m0", Direction.INBOUND, T0)])
    holder_locked, release_holder = threading.Event(), threading.Event()

    def hold_conversation_lock() -> None:
        with transaction.atomic():
            list(Conversation.objects.select_for_update().values_list("id"))
            holder_locked.set()
            assert release_holder.wait(WAIT_SECONDS)

    holder = Worker(hold_conversation_lock)
    holder.start()
    assert holder_locked.wait(WAIT_SECONDS)
    before = _events_metric("message")
    body = meta_json_bytes(
        webhook_document(
            PAGE_ID,
            [message_event(page_id=PAGE_ID, psid=PSID, mid="m_1", timestamp_ms=1_741_000_000_000)],
        )
    )

    # When a payload with one message fails on the lock, then is retried once the lock is gone
    with connection.cursor() as cursor:
        cursor.execute("SET lock_timeout = '200ms'")
    try:
        failed = webhook_service.webhook_receive(body=body)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET lock_timeout")
    after_failure = _events_metric("message")
    release_holder.set()
    holder.result()
    retried = webhook_service.webhook_receipt_retry(receipt_id=failed.receipt_id)

    # Then the message is counted once, by the attempt that applied it
    assert (failed.status, retried.status) == (ReceiptStatus.FAILED, ReceiptStatus.PROCESSED)
    assert (after_failure - before, _events_metric("message") - before) == (0.0, 1.0)
