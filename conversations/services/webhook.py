"""The Messenger webhook: a payload is stored before it is acknowledged (C7), then applied.

`webhook_receive` is the view's entry point. It validates the payload, then applies it AND
inserts its receipt (raw bytes, status `processed`) in one SQL statement, which commits on its
own: the batch and its receipt are durable together, in one round trip (a payload with marks,
reactions or postbacks takes a second statement in the same transaction; see the ingest
service). If that fails, nothing of it was applied and the receipt is then inserted on
its own as `failed`, with the error and a next attempt time; only after one of these inserts has
committed does the view answer 200. A process dying in between answers nothing, so Meta
delivers again: no acknowledged payload is ever lost. A payload that is not a Messenger page
payload is stored as `rejected` (400).

`webhook_receipt_process` re-applies a stored receipt (the retry schedule with exponential
backoff, the admin's retry action) in one durable transaction that locks the receipt. Because
every insert is `ON CONFLICT DO NOTHING` on the right key, applying a payload twice (a retry
after an unknown outcome, or Meta delivering it again) changes nothing the second time (C2, C3).
"""

from __future__ import annotations

import hashlib
import json
import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from conversations import metrics
from conversations.models import (
    Direction,
    EventKind,
    ReceiptStatus,
    SignatureVerdict,
    Source,
    WebhookReceipt,
)
from conversations.schemas import (
    MessagingEvent,
    PayloadInvalid,
    WebhookPayload,
    event_parse,
    payload_parse,
)
from conversations.services.ingest import (
    ApplyResult,
    IncomingEvent,
    IncomingMark,
    IncomingMessage,
    TrailingStatement,
    batch_apply,
)
from conversations.services.pages import page_pk_cache_clear, page_pks_ensure
from evoflow.jsonvalues import json_loads_storable

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


@dataclass
class PayloadPlan:
    """What a payload asks for, translated to the batch types, plus what was left out."""

    messages: list[IncomingMessage] = field(default_factory=list)
    events: list[IncomingEvent] = field(default_factory=list)
    marks: list[IncomingMark] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    event_count: int = 0
    unknown_count: int = 0
    # Applied events by kind, for the events metric once the batch has committed.
    kinds: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ProcessOutcome:
    status: str
    receipt_id: int | None = None
    error: str = ""
    applied: ApplyResult | None = None


# -- receiving ---------------------------------------------------------------------------------

_RECEIPT_INSERT_PROCESSED = """
    INSERT INTO conversations_webhookreceipt (
        body, body_sha256, signature_verdict, status, attempts, error, event_count,
        unknown_event_count, skipped_events, received_at, processed_at, updated_at)
    VALUES (%s, %s, %s, 'processed', 1, '', %s, %s, %s::jsonb, now(), now(), now())
    RETURNING id
"""

_RECEIPT_UPDATE_PROCESSED = """
    UPDATE conversations_webhookreceipt SET status = 'processed', error = '',
        attempts = attempts + 1, event_count = %s, unknown_event_count = %s,
        skipped_events = %s::jsonb, processed_at = now(), next_attempt_at = NULL,
        updated_at = now()
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
        plan = payload_plan(_payload_from_bytes(body))
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
    receipt_sql = TrailingStatement(
        _RECEIPT_INSERT_PROCESSED,
        [
            body,
            body_sha256,
            signature_verdict,
            plan.event_count,
            plan.unknown_count,
            json.dumps(plan.skipped),
        ],
    )
    try:
        try:
            applied, receipt_id = _apply_with_receipt(plan, receipt_sql)
        except IntegrityError as error:
            if not _is_foreign_key_violation(error):
                raise
            # A page cached by this process was deleted (by another process, whose own cache
            # was cleared): forget the cached ids and plan once more with fresh ones.
            page_pk_cache_clear()
            plan = payload_plan(_payload_from_bytes(body))
            applied, receipt_id = _apply_with_receipt(plan, receipt_sql)
    except Exception as error:
        if isinstance(error, IntegrityError) and _is_foreign_key_violation(error):
            page_pk_cache_clear()
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
    _count_events_on_commit(plan)
    metrics.WEBHOOK_RECEIPTS.labels(ReceiptStatus.PROCESSED).inc()
    return ProcessOutcome(ReceiptStatus.PROCESSED, int(receipt_id), applied=applied)


def _apply_with_receipt(
    plan: PayloadPlan, receipt_sql: TrailingStatement
) -> tuple[ApplyResult, Any]:
    # No transaction: one statement, atomic and committed on its own (one round trip). Called
    # inside someone's transaction (a test, a script), a savepoint contains a failure instead.
    enclosing = transaction.atomic() if connection.in_atomic_block else nullcontext()
    with enclosing:
        return batch_apply(
            messages=plan.messages,
            events=plan.events,
            marks=plan.marks,
            source=Source.WEBHOOK,
            trailing=receipt_sql,
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


def webhook_receipt_process(*, receipt_id: int, force: bool = False) -> ProcessOutcome:
    """Apply one stored receipt again. Idempotent: a processed receipt is left alone, and a
    failed one whose next attempt is not due yet too, unless `force` (an operator's retry)."""
    seen_attempts: int | None = None
    try:
        with transaction.atomic(durable=True):
            locked = _receipt_lock(receipt_id, force=force)
            if locked is None:
                return ProcessOutcome(status="skipped", receipt_id=receipt_id)
            body, seen_attempts = locked
            try:
                plan = payload_plan(_payload_from_bytes(body))
            except PayloadInvalid as error:
                _receipt_finish(
                    receipt_id=receipt_id,
                    status=ReceiptStatus.REJECTED,
                    error=str(error),
                    plan=None,
                )
                metrics.WEBHOOK_RECEIPTS.labels(ReceiptStatus.REJECTED).inc()
                return ProcessOutcome(ReceiptStatus.REJECTED, receipt_id, str(error))
            applied, _ = batch_apply(
                messages=plan.messages,
                events=plan.events,
                marks=plan.marks,
                source=Source.WEBHOOK,
                trailing=TrailingStatement(
                    _RECEIPT_UPDATE_PROCESSED,
                    [plan.event_count, plan.unknown_count, json.dumps(plan.skipped), receipt_id],
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
    metrics.WEBHOOK_RECEIPTS.labels(ReceiptStatus.PROCESSED).inc()
    return ProcessOutcome(ReceiptStatus.PROCESSED, receipt_id, applied=applied)


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
    batches (short transactions); failed ones are kept until retried. Returns rows deleted."""
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


def _payload_from_bytes(body: bytes) -> WebhookPayload:
    try:
        # NaN, Infinity and 1e400 are refused here: jsonb could never store the payload.
        document = json_loads_storable(body)
    except RecursionError as error:
        raise PayloadInvalid("the body is nested too deeply") from error
    except (ValueError, UnicodeDecodeError) as error:
        raise PayloadInvalid(f"the body is not JSON: {error}") from error
    try:
        return payload_parse(document, raw=body)
    except RecursionError as error:  # the NUL / surrogate walks, near the parser's own limit
        raise PayloadInvalid("the body is nested too deeply") from error


def _receipt_lock(receipt_id: int, *, force: bool = False) -> tuple[bytes, int] | None:
    """Lock an unprocessed receipt for this transaction: (body, attempts so far), or None if it
    is done, held by another, or failed with its next attempt not due yet (unless `force`)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT body, attempts FROM conversations_webhookreceipt WHERE id = %s"
            " AND (status = 'received' OR (status = 'failed'"
            " AND (%s OR next_attempt_at <= %s)))"
            " FOR UPDATE SKIP LOCKED",
            [receipt_id, force, timezone.now()],
        )
        row = cursor.fetchone()
    return (bytes(row[0]), int(row[1])) if row else None


def _receipt_finish(*, receipt_id: int, status: str, error: str, plan: PayloadPlan | None) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE conversations_webhookreceipt SET status = %s, error = %s,"
            " attempts = attempts + 1, event_count = %s, unknown_event_count = %s,"
            " skipped_events = %s::jsonb, processed_at = now(), next_attempt_at = NULL,"
            " updated_at = now() WHERE id = %s",
            [
                status,
                error[:ERROR_MAX_CHARS],
                plan.event_count if plan else 0,
                plan.unknown_count if plan else 0,
                json.dumps(plan.skipped if plan else []),
                receipt_id,
            ],
        )


def _receipt_fail(*, receipt_id: int, error: str, seen_attempts: int) -> None:
    """Record a failed attempt, unless someone else handled the receipt since this attempt
    locked it: a concurrent retry that processed it (or recorded its own failure) wins."""
    attempts = seen_attempts + 1
    next_attempt_at = timezone.now() + retry_delay(attempts) if attempts < MAX_ATTEMPTS else None
    with transaction.atomic(durable=True), connection.cursor() as cursor:
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


# -- translating a payload ---------------------------------------------------------------------


def payload_plan(payload: WebhookPayload) -> PayloadPlan:
    """Every entry's `messaging[]` and `standby[]` events, as batch items or skip reasons.

    Raises PayloadInvalid when an event of a known kind is malformed: the whole payload is then
    rejected, so nothing of it is half-applied.
    """
    # Every event is validated before anything is written (not even a new page row).
    parsed = [
        (entry_index, entry.id, channel, event_index, event_parse(raw))
        for entry_index, entry in enumerate(payload.entry)
        for channel, raw_events in (("messaging", entry.messaging), ("standby", entry.standby))
        for event_index, raw in enumerate(raw_events)
    ]
    plan = PayloadPlan(event_count=len(parsed))
    if not parsed:
        return plan
    page_pks = page_pks_ensure(page_ids=sorted({page_id for _, page_id, *_ in parsed}))
    for entry_index, page_id, channel, event_index, event in parsed:
        where = {"entry": entry_index, "channel": channel, "index": event_index}
        _plan_event(plan, page_pks[page_id], page_id, channel, event, where)
    return plan


def _plan_event(
    plan: PayloadPlan,
    page_pk: int,
    page_id: str,
    channel: str,
    event: MessagingEvent,
    where: dict[str, Any],
) -> None:
    kind = event.kind
    if kind is None:
        plan.unknown_count += 1
        plan.skipped.append({**where, "kind": "unknown", "reason": "unknown event kind"})
        return
    is_echo = kind == "message" and event.message is not None and event.message.is_echo
    # The person is the sender, except in echoes (the page wrote to them).
    person = event.recipient if is_echo else event.sender
    page_side = event.sender if is_echo else event.recipient
    psid, reason = _participant(person, page_id)
    if reason is None and page_side is not None and page_side.id not in (None, page_id):
        reason = "the page side of the event is another page"
    if reason is not None:
        plan.skipped.append({**where, "kind": kind, "reason": reason})
        return
    assert psid is not None
    plan.kinds[kind] = plan.kinds.get(kind, 0) + 1
    occurred_at = event.occurred_at
    standby = {"channel": "standby"} if channel == "standby" else {}
    if event.message is not None:
        body = event.message
        plan.messages.append(
            IncomingMessage(
                page_pk=page_pk,
                psid=psid,
                mid=body.mid,
                direction=Direction.OUTBOUND if body.is_echo else Direction.INBOUND,
                sent_at=occurred_at,
                text=body.text,
                attachments=[item.model_dump(exclude_none=True) for item in body.attachments],
                is_echo=body.is_echo,
                app_id="" if body.app_id is None else str(body.app_id),
                reply_to_mid=body.reply_to.mid if body.reply_to else "",
            )
        )
    elif event.delivery is not None:
        watermark = _from_ms(event.delivery.watermark)
        plan.marks.append(IncomingMark(page_pk, psid, EventKind.DELIVERED, watermark))
        plan.events.append(
            IncomingEvent(
                page_pk=page_pk,
                psid=psid,
                kind=EventKind.DELIVERED,
                occurred_at=occurred_at,
                dedupe_key=f"delivered:{psid}:{event.delivery.watermark}",
                metadata={
                    "watermark": event.delivery.watermark,
                    "mids": event.delivery.mids or [],
                    **standby,
                },
            )
        )
    elif event.read is not None:
        watermark = _from_ms(event.read.watermark)
        plan.marks.append(IncomingMark(page_pk, psid, EventKind.READ, watermark))
        plan.events.append(
            IncomingEvent(
                page_pk=page_pk,
                psid=psid,
                kind=EventKind.READ,
                occurred_at=occurred_at,
                dedupe_key=f"read:{psid}:{event.read.watermark}",
                metadata={"watermark": event.read.watermark, **standby},
            )
        )
    elif event.reaction is not None:
        reaction = event.reaction
        emoji = reaction.reaction or reaction.emoji or ""
        plan.events.append(
            IncomingEvent(
                page_pk=page_pk,
                psid=psid,
                kind=EventKind.REACTION,
                occurred_at=occurred_at,
                dedupe_key=(
                    f"reaction:{reaction.mid}:{psid}:{reaction.action}:{emoji}:{event.timestamp}"
                ),
                metadata={
                    "action": reaction.action,
                    "reaction": reaction.reaction,
                    "emoji": reaction.emoji,
                    **standby,
                },
                mid=reaction.mid,
            )
        )
    elif event.postback is not None:
        postback = event.postback
        dedupe = (
            f"postback:{postback.mid}"
            if postback.mid
            else f"postback:{psid}:{event.timestamp}:"
            + hashlib.sha256(postback.payload.encode()).hexdigest()[:16]
        )
        plan.events.append(
            IncomingEvent(
                page_pk=page_pk,
                psid=psid,
                kind=EventKind.POSTBACK,
                occurred_at=occurred_at,
                dedupe_key=dedupe,
                metadata={"title": postback.title, "payload": postback.payload, **standby},
                mid=postback.mid or "",
            )
        )


def _participant(participant: Any, page_id: str) -> tuple[str | None, str | None]:
    """(psid, None) for a usable participant, else (None, reason) (F7)."""
    if participant is None or participant.id is None:
        return None, "participant id missing"
    psid = participant.id
    if not isinstance(psid, str):
        return None, "participant id is not a string"
    if not psid or len(psid) > 64 or not psid.isascii() or not psid.isdigit():
        return None, "participant id is not a PSID"
    if psid == page_id:
        return None, "participant is the page itself"
    return psid, None


def _from_ms(milliseconds: int) -> datetime:
    return datetime.fromtimestamp(milliseconds / 1000, tz=UTC)
