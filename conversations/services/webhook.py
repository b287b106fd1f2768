"""The Messenger webhook: receipts stored before they are acknowledged (C7), then applied.

`webhook_receipt_store` writes the raw bytes in their own short transaction; the view answers
200 as soon as that has committed. `webhook_receipt_process` then applies the payload in one
durable transaction (receipt status included), through `batch_apply`; if anything fails, the
transaction leaves nothing behind and the receipt is marked `failed` with the error and a next
attempt time, which the retry schedule honours with exponential backoff. Because every insert
is `ON CONFLICT DO NOTHING` on the right key, applying a payload twice (a retry after an
unknown outcome, or Meta delivering it again) changes nothing the second time (C2, C3).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import connection, transaction
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
    batch_apply,
)
from conversations.services.pages import page_pks_ensure

logger = logging.getLogger(__name__)

# Backoff of failed receipts: 1, 2, 4, ... minutes, at most 6 h apart; after the last attempt
# the receipt stays failed (and the integrity check reports it) for an operator to retry.
RETRY_BASE_MINUTES = 1
RETRY_MAX_MINUTES = 360
MAX_ATTEMPTS = 12
# A receipt still `received` this long after arrival lost its process mid-way: retry it.
STALE_RECEIVED_AFTER = timedelta(minutes=5)
ERROR_MAX_CHARS = 2_000


@dataclass
class PayloadPlan:
    """What a payload asks for, translated to the batch types, plus what was left out."""

    messages: list[IncomingMessage] = field(default_factory=list)
    events: list[IncomingEvent] = field(default_factory=list)
    marks: list[IncomingMark] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    event_count: int = 0
    unknown_count: int = 0


@dataclass(frozen=True)
class ProcessOutcome:
    status: str
    error: str = ""
    applied: ApplyResult | None = None


# -- storing -------------------------------------------------------------------------------------


def webhook_receipt_store(
    *, body: bytes, signature_verdict: str = SignatureVerdict.VALID
) -> WebhookReceipt:
    """Durably store the raw bytes; returns once committed (the caller may then answer 200)."""
    with transaction.atomic(durable=True):
        return WebhookReceipt.objects.create(
            body=body,
            body_sha256=hashlib.sha256(body).hexdigest(),
            signature_verdict=signature_verdict,
            status=ReceiptStatus.RECEIVED,
        )


# -- processing ----------------------------------------------------------------------------------


def webhook_receipt_process(*, receipt_id: int, body: bytes | None = None) -> ProcessOutcome:
    """Apply one stored receipt. Idempotent: a processed receipt is left alone.

    `body` saves re-reading the bytes when the caller (the view) has them in hand.
    """
    try:
        payload = _payload_from_bytes(body) if body is not None else None
    except PayloadInvalid as error:
        return _receipt_reject(receipt_id=receipt_id, error=str(error))
    try:
        with transaction.atomic(durable=True):
            if payload is None:
                locked = _receipt_lock(receipt_id)
                if locked is None:
                    return ProcessOutcome(status="skipped")
                try:
                    payload = _payload_from_bytes(locked)
                except PayloadInvalid as error:
                    _receipt_finish(
                        receipt_id=receipt_id,
                        status=ReceiptStatus.REJECTED,
                        error=str(error),
                        plan=None,
                    )
                    metrics.WEBHOOK_RECEIPTS.labels(ReceiptStatus.REJECTED).inc()
                    return ProcessOutcome(status=ReceiptStatus.REJECTED, error=str(error))
            plan = payload_plan(payload)
            applied = batch_apply(
                messages=plan.messages, events=plan.events, marks=plan.marks, source=Source.WEBHOOK
            )
            _receipt_finish(
                receipt_id=receipt_id, status=ReceiptStatus.PROCESSED, error="", plan=plan
            )
    except PayloadInvalid as error:
        return _receipt_reject(receipt_id=receipt_id, error=str(error))
    except Exception as error:
        # Nothing of the payload was applied (the transaction rolled back). Record why, and
        # leave the receipt for the retry schedule.
        logger.exception("webhook receipt %s failed", receipt_id)
        _receipt_fail(receipt_id=receipt_id, error=f"{type(error).__name__}: {error}")
        return ProcessOutcome(status=ReceiptStatus.FAILED, error=str(error))
    metrics.WEBHOOK_RECEIPTS.labels(ReceiptStatus.PROCESSED).inc()
    for item in plan.skipped:
        metrics.WEBHOOK_EVENTS.labels(item.get("kind") or "unknown").inc()
    return ProcessOutcome(status=ReceiptStatus.PROCESSED, applied=applied)


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


def webhook_receipt_retry(*, receipt_id: int) -> ProcessOutcome:
    """An operator's retry (admin action): processes now, whatever the backoff says."""
    return webhook_receipt_process(receipt_id=receipt_id)


def _payload_from_bytes(body: bytes) -> WebhookPayload:
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise PayloadInvalid(f"the body is not JSON: {error}") from error
    return payload_parse(document)


def _receipt_lock(receipt_id: int) -> bytes | None:
    """Lock an unprocessed receipt for this transaction; None if done or held by another."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT body FROM conversations_webhookreceipt WHERE id = %s"
            " AND status IN ('received', 'failed') FOR UPDATE SKIP LOCKED",
            [receipt_id],
        )
        row = cursor.fetchone()
    return bytes(row[0]) if row else None


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


def _receipt_reject(*, receipt_id: int, error: str) -> ProcessOutcome:
    with transaction.atomic(durable=True):
        _receipt_finish(
            receipt_id=receipt_id, status=ReceiptStatus.REJECTED, error=error, plan=None
        )
    metrics.WEBHOOK_RECEIPTS.labels(ReceiptStatus.REJECTED).inc()
    return ProcessOutcome(status=ReceiptStatus.REJECTED, error=error)


def _receipt_fail(*, receipt_id: int, error: str) -> None:
    with transaction.atomic(durable=True):
        receipt = WebhookReceipt.objects.select_for_update().get(pk=receipt_id)
        receipt.attempts += 1
        receipt.status = ReceiptStatus.FAILED
        receipt.error = error[:ERROR_MAX_CHARS]
        receipt.next_attempt_at = (
            timezone.now() + retry_delay(receipt.attempts)
            if receipt.attempts < MAX_ATTEMPTS
            else None
        )
        receipt.updated_at = timezone.now()
        receipt.save(update_fields=["attempts", "status", "error", "next_attempt_at", "updated_at"])
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
    plan = PayloadPlan()
    page_pks = page_pks_ensure(page_ids=sorted({entry.id for entry in payload.entry}))
    for entry_index, entry in enumerate(payload.entry):
        page_pk = page_pks[entry.id]
        for channel, raw_events in (("messaging", entry.messaging), ("standby", entry.standby)):
            for event_index, raw in enumerate(raw_events):
                plan.event_count += 1
                where = {"entry": entry_index, "channel": channel, "index": event_index}
                event = event_parse(raw)
                _plan_event(plan, page_pk, entry.id, channel, event, where)
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
    metrics.WEBHOOK_EVENTS.labels(kind).inc()
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
