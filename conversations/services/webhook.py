"""The Messenger webhook: a payload is stored before it is acknowledged (C7), then applied.

`webhook_receive` is the view's entry point. It checks the payload, then applies it AND
inserts its receipt (raw bytes, status `processed`) in one SQL statement, which commits on its
own: the batch and its receipt are durable together, in one round trip (a payload with marks,
edits, reactions or postbacks takes a second statement in the same transaction; see the ingest
service). That commit waits for the WAL flush whatever the server's `synchronous_commit`
(`RECEIPT_COMMIT_DURABLE`), so a crash of PostgreSQL cannot lose an acknowledged payload. If
applying fails, nothing of it was applied and the receipt is then inserted on its own as
`failed`, with the error and a next attempt time; only after one of these inserts has committed
does the view answer 200. A process dying in between answers nothing, so Meta delivers again:
no acknowledged payload is ever lost; when the database cannot be reached at all, the error
reaches the view (503). An entry or event that fits no schema is quarantined with its reason
and the rest applied (status `quarantined`); only a payload that is no page payload at all is
stored as `rejected` (400).

`webhook_receipt_process` re-applies a stored receipt (the retry schedule with exponential
backoff, the admin's retry action, `webhook_reprocess`) in one durable transaction that locks
the receipt. Because every insert is `ON CONFLICT DO NOTHING` on the right key and edits and
reactions only move forward, applying a payload twice (a retry after an unknown outcome, or Meta
delivering it again) changes nothing the second time (C2, C3, C9).

Translating Meta's JSON into the batch's records is `webhook_payload` (pure, no database);
this module ensures the pages' rows, applies the records and keeps the receipts.
"""

from __future__ import annotations

import hashlib
import json
import logging
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from conversations import metrics
from conversations.models import ReceiptStatus, SignatureVerdict, Source, WebhookReceipt
from conversations.schemas import PayloadInvalid
from conversations.services.ingest import ApplyResult, TrailingStatement, batch_apply
from conversations.services.pages import page_pk_cache_clear, page_pks_ensure
from conversations.services.webhook_payload import (
    LoadedPayload,
    PayloadPlan,
    payload_events,
    payload_from_bytes,
    payload_page_ids,
    payload_plan_build,
)

logger = logging.getLogger(__name__)

# Backoff of failed receipts: 1, 2, 4, ... minutes, at most 6 h apart; after the last attempt
# the receipt stays failed (and the integrity check reports it) for an operator to retry.
RETRY_BASE_MINUTES = 1
RETRY_MAX_MINUTES = 360
MAX_ATTEMPTS = 12
# A receipt still `received` this long after arrival lost its process mid-way: retry it.
STALE_RECEIVED_AFTER = timedelta(minutes=5)
ERROR_MAX_CHARS = 2_000
# Processed and rejected receipts are kept this long (for audits and replays), then deleted.
RECEIPT_RETENTION = timedelta(days=30)
PRUNE_BATCH = 5_000


@dataclass(frozen=True)
class ProcessOutcome:
    status: str
    receipt_id: int | None = None
    error: str = ""
    applied: ApplyResult | None = None


def payload_plan(loaded: LoadedPayload) -> PayloadPlan:
    """Every entry's `messaging[]` and `standby[]` events, as batch items, skip reasons or
    quarantine reasons (`webhook_payload`), with a page row ensured for every page the usable
    events name."""
    parsed = payload_events(loaded)
    pages = payload_page_ids(parsed.events)
    page_pks = page_pks_ensure(page_ids=pages) if pages else {}
    return payload_plan_build(parsed, page_pks)


# Every transaction that stores a receipt commits with `synchronous_commit = on` (C7), whatever
# the server's setting (the local cluster runs with it off): a receipt answered 200 must survive
# a crash of PostgreSQL. Not a setting: only the benchmark turns it off, to measure its cost.
RECEIPT_COMMIT_DURABLE = True


def durable_commit_require() -> None:
    """Make the current transaction's COMMIT wait for its WAL flush (`SET LOCAL`: it ends with
    the transaction, so nothing leaks to a pooled session)."""
    if RECEIPT_COMMIT_DURABLE:
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL synchronous_commit = on")


def _status_of(plan: PayloadPlan) -> str:
    return ReceiptStatus.QUARANTINED if plan.quarantined else ReceiptStatus.PROCESSED


# -- receiving ---------------------------------------------------------------------------------

_RECEIPT_INSERT_PROCESSED = """
    INSERT INTO conversations_webhookreceipt (
        body, body_sha256, signature_verdict, status, attempts, error, event_count,
        unknown_event_count, skipped_events, quarantined_events, received_at, processed_at,
        updated_at)
    VALUES (%s, %s, %s, %s, 1, '', %s, %s, %s::jsonb, %s::jsonb, now(), now(), now())
    RETURNING id
"""

_RECEIPT_UPDATE_PROCESSED = """
    UPDATE conversations_webhookreceipt SET status = %s, error = '',
        attempts = attempts + 1, event_count = %s, unknown_event_count = %s,
        skipped_events = %s::jsonb, quarantined_events = %s::jsonb, processed_at = now(),
        next_attempt_at = NULL, updated_at = now()
    WHERE id = %s
    RETURNING id
"""


def webhook_receive(
    *, body: bytes, signature_verdict: str = SignatureVerdict.VALID
) -> ProcessOutcome:
    """Validate, apply and store one payload; returns once its receipt is durable."""
    # The POST's processing time, from its bytes in hand to its receipt stored (and applied).
    with metrics.WEBHOOK_PROCESSING_SECONDS.time():
        return _webhook_receive(body=body, signature_verdict=signature_verdict)


def _webhook_receive(*, body: bytes, signature_verdict: str) -> ProcessOutcome:
    body_sha256 = hashlib.sha256(body).hexdigest()
    try:
        loaded = payload_from_bytes(body)
    except PayloadInvalid as error:
        receipt = _receipt_insert(
            body=body,
            body_sha256=body_sha256,
            signature_verdict=signature_verdict,
            status=ReceiptStatus.REJECTED,
            error=str(error),
        )
        metrics.WEBHOOK_RECEIPTS.labels(ReceiptStatus.REJECTED).inc()
        return ProcessOutcome(ReceiptStatus.REJECTED, receipt.pk, str(error))
    plan = payload_plan(loaded)

    def receipt_sql(plan: PayloadPlan) -> TrailingStatement:
        return TrailingStatement(
            _RECEIPT_INSERT_PROCESSED,
            [
                body,
                body_sha256,
                signature_verdict,
                _status_of(plan),
                plan.event_count,
                plan.unknown_count,
                json.dumps(plan.skipped),
                json.dumps(plan.quarantined),
            ],
        )

    try:
        try:
            applied, receipt_id = _apply_with_receipt(plan, receipt_sql(plan))
        except IntegrityError as error:
            if not _is_foreign_key_violation(error):
                raise
            # A page cached by this process was deleted (by another process, whose own cache
            # was cleared): forget the cached ids and plan once more with fresh ones.
            page_pk_cache_clear()
            plan = payload_plan(loaded)
            applied, receipt_id = _apply_with_receipt(plan, receipt_sql(plan))
    except Exception as error:
        # Kept as `failed` for the retry schedule. When the database itself is unreachable,
        # storing that fails too and the error reaches the view: 503, nothing acknowledged.
        if isinstance(error, IntegrityError) and _is_foreign_key_violation(error):
            page_pk_cache_clear()
        return _stored_failed(body, body_sha256, signature_verdict, error)
    _count_events_on_commit(plan)
    status = _status_of(plan)
    metrics.WEBHOOK_RECEIPTS.labels(status).inc()
    return ProcessOutcome(status, int(receipt_id), applied=applied)


def _stored_failed(
    body: bytes, body_sha256: str, signature_verdict: str, error: Exception
) -> ProcessOutcome:
    """The payload could not be applied: keep it as `failed` for the retry schedule."""
    logger.exception("webhook payload failed; stored for retry")
    receipt = _receipt_insert(
        body=body,
        body_sha256=body_sha256,
        signature_verdict=signature_verdict,
        status=ReceiptStatus.FAILED,
        error=f"{type(error).__name__}: {error}",
        attempts=1,
        next_attempt_at=timezone.now() + retry_delay(1),
    )
    metrics.WEBHOOK_RECEIPTS.labels(ReceiptStatus.FAILED).inc()
    return ProcessOutcome(ReceiptStatus.FAILED, receipt.pk, str(error))


def _apply_with_receipt(
    plan: PayloadPlan, receipt_sql: TrailingStatement
) -> tuple[ApplyResult, Any]:
    # A batch of messages only is one statement, atomic and committed on its own (one round
    # trip); its commit waits for the WAL flush (C7) through the statement itself. Called
    # inside someone's transaction (a test, a script), a savepoint contains a failure instead.
    enclosing = transaction.atomic() if connection.in_atomic_block else nullcontext()
    with enclosing:
        return batch_apply(
            messages=plan.messages,
            events=plan.events,
            marks=plan.marks,
            edits=plan.edits,
            reactions=plan.reactions,
            source=Source.WEBHOOK,
            trailing=receipt_sql,
            durable_commit=RECEIPT_COMMIT_DURABLE,
        )


def _count_events_on_commit(plan: PayloadPlan) -> None:
    # Counted once applied: a failed attempt and its retries count the events once.
    def count() -> None:
        for kind, total in plan.kinds.items():
            metrics.WEBHOOK_EVENTS.labels(kind).inc(total)

    transaction.on_commit(count)


def _is_foreign_key_violation(error: IntegrityError) -> bool:
    return getattr(error.__cause__, "sqlstate", None) == "23503"


@transaction.atomic(durable=True)
def _receipt_insert(
    *,
    body: bytes,
    body_sha256: str,
    signature_verdict: str,
    status: str,
    error: str,
    attempts: int = 0,
    next_attempt_at: datetime | None = None,
) -> WebhookReceipt:
    durable_commit_require()
    return WebhookReceipt.objects.create(
        body=body,
        body_sha256=body_sha256,
        signature_verdict=signature_verdict,
        status=status,
        error=error[:ERROR_MAX_CHARS],
        attempts=attempts,
        next_attempt_at=next_attempt_at,
        processed_at=timezone.now() if status == ReceiptStatus.REJECTED else None,
    )


# -- processing a stored receipt --------------------------------------------------------------


def webhook_receipt_process(
    *, receipt_id: int, force: bool = False, reprocess: bool = False
) -> ProcessOutcome:
    """Apply one stored receipt again, in one durable transaction that locks it.

    Idempotent: applying a payload twice changes nothing the second time (every write is
    keyed). By default only a received receipt, or a failed one whose next attempt is due (any
    failed one with `force`, an operator's retry), is taken; `reprocess` (the
    `webhook_reprocess` command, the admin's reprocess action) takes a receipt of any status, so
    that events quarantined or rejected before a code fix are applied by the fixed code.
    A receipt another process holds is skipped."""
    seen_attempts: int | None = None
    try:
        with transaction.atomic(durable=True):
            durable_commit_require()
            locked = _receipt_lock(receipt_id, force=force, any_status=reprocess)
            if locked is None:
                return ProcessOutcome(status="skipped", receipt_id=receipt_id)
            body, seen_attempts = locked
            try:
                plan = payload_plan(payload_from_bytes(body))
            except PayloadInvalid as error:
                _receipt_finish(
                    receipt_id=receipt_id,
                    status=ReceiptStatus.REJECTED,
                    error=str(error),
                    plan=None,
                )
                metrics.WEBHOOK_RECEIPTS.labels(ReceiptStatus.REJECTED).inc()
                return ProcessOutcome(ReceiptStatus.REJECTED, receipt_id, str(error))
            status = _status_of(plan)
            applied, _ = batch_apply(
                messages=plan.messages,
                events=plan.events,
                marks=plan.marks,
                edits=plan.edits,
                reactions=plan.reactions,
                source=Source.WEBHOOK,
                trailing=TrailingStatement(
                    _RECEIPT_UPDATE_PROCESSED,
                    [
                        status,
                        plan.event_count,
                        plan.unknown_count,
                        json.dumps(plan.skipped),
                        json.dumps(plan.quarantined),
                        receipt_id,
                    ],
                ),
            )
            _count_events_on_commit(plan)
    except Exception as error:
        # Nothing of the payload was applied (the transaction rolled back). Record why, and
        # leave the receipt for the retry schedule.
        logger.exception("webhook receipt %s failed", receipt_id)
        if isinstance(error, IntegrityError) and _is_foreign_key_violation(error):
            page_pk_cache_clear()  # a cached page was deleted: the next attempt reads afresh
        if seen_attempts is not None:
            _receipt_fail(
                receipt_id=receipt_id,
                error=f"{type(error).__name__}: {error}",
                seen_attempts=seen_attempts,
            )
        return ProcessOutcome(ReceiptStatus.FAILED, receipt_id, str(error))
    metrics.WEBHOOK_RECEIPTS.labels(status).inc()
    return ProcessOutcome(status, receipt_id, applied=applied)


def webhook_receipts_retry_due(*, limit: int = 100) -> int:
    """Process receipts whose retry time has come (and ones abandoned mid-way); returns count."""
    now = timezone.now()
    due = list(
        WebhookReceipt.objects.filter(status=ReceiptStatus.FAILED, next_attempt_at__lte=now)
        .order_by("next_attempt_at", "id")
        .values_list("id", flat=True)[:limit]
    )
    stale = list(
        WebhookReceipt.objects.filter(
            status=ReceiptStatus.RECEIVED, received_at__lte=now - STALE_RECEIVED_AFTER
        )
        .order_by("id")
        .values_list("id", flat=True)[: max(0, limit - len(due))]
    )
    for receipt_id in (*due, *stale):
        webhook_receipt_process(receipt_id=receipt_id)
    return len(due) + len(stale)


def webhook_receipts_prune(*, older_than: timedelta = RECEIPT_RETENTION) -> int:
    """Delete processed and rejected receipts received before `older_than` ago, in bounded
    batches (short transactions); failed ones are kept until retried, quarantined ones until
    reprocessed. Returns rows deleted."""
    cutoff = timezone.now() - older_than
    deleted = 0
    while True:
        with transaction.atomic(durable=True), connection.cursor() as cursor:
            cursor.execute(
                "DELETE FROM conversations_webhookreceipt WHERE id IN ("
                " SELECT id FROM conversations_webhookreceipt"
                " WHERE status IN ('processed', 'rejected') AND received_at < %s"
                " ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED)",
                [cutoff, PRUNE_BATCH],
            )
            batch = cursor.rowcount
        deleted += batch
        if batch < PRUNE_BATCH:
            return deleted


def webhook_receipt_retry(*, receipt_id: int) -> ProcessOutcome:
    """An operator's retry (admin action): processes now, whatever the backoff says."""
    return webhook_receipt_process(receipt_id=receipt_id, force=True)


def _receipt_lock(
    receipt_id: int, *, force: bool = False, any_status: bool = False
) -> tuple[bytes, int] | None:
    """Lock an unprocessed receipt for this transaction: (body, attempts so far), or None if it
    is done, held by another, or failed with its next attempt not due yet (unless `force`).
    With `any_status`, any receipt not held by another."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT body, attempts FROM conversations_webhookreceipt WHERE id = %s"
            " AND (%s OR status = 'received' OR (status = 'failed'"
            " AND (%s OR next_attempt_at <= %s)))"
            " FOR UPDATE SKIP LOCKED",
            [receipt_id, any_status, force, timezone.now()],
        )
        row = cursor.fetchone()
    return (bytes(row[0]), int(row[1])) if row else None


def _receipt_finish(*, receipt_id: int, status: str, error: str, plan: PayloadPlan | None) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE conversations_webhookreceipt SET status = %s, error = %s,"
            " attempts = attempts + 1, event_count = %s, unknown_event_count = %s,"
            " skipped_events = %s::jsonb, quarantined_events = %s::jsonb, processed_at = now(),"
            " next_attempt_at = NULL, updated_at = now() WHERE id = %s",
            [
                status,
                error[:ERROR_MAX_CHARS],
                plan.event_count if plan else 0,
                plan.unknown_count if plan else 0,
                json.dumps(plan.skipped if plan else []),
                json.dumps(plan.quarantined if plan else []),
                receipt_id,
            ],
        )


def _receipt_fail(*, receipt_id: int, error: str, seen_attempts: int) -> None:
    """Record a failed attempt, unless someone else handled the receipt since this attempt
    locked it: a concurrent retry that processed it (or recorded its own failure) wins."""
    attempts = seen_attempts + 1
    next_attempt_at = timezone.now() + retry_delay(attempts) if attempts < MAX_ATTEMPTS else None
    with transaction.atomic(durable=True), connection.cursor() as cursor:
        cursor.execute("SET LOCAL synchronous_commit = on")
        cursor.execute(
            "UPDATE conversations_webhookreceipt SET status = 'failed', attempts = %s,"
            " error = %s, next_attempt_at = %s, updated_at = now()"
            " WHERE id = %s AND status IN ('received', 'failed') AND attempts = %s",
            [attempts, error[:ERROR_MAX_CHARS], next_attempt_at, receipt_id, seen_attempts],
        )
        recorded = cursor.rowcount == 1
    if recorded:
        metrics.WEBHOOK_RECEIPTS.labels(ReceiptStatus.FAILED).inc()


def retry_delay(attempts: int) -> timedelta:
    minutes = min(RETRY_MAX_MINUTES, RETRY_BASE_MINUTES * 2 ** max(0, attempts - 1))
    return timedelta(minutes=minutes)
