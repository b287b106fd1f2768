"""Meta's webhook JSON translated into the ingest service's records: pure, no database.

`payload_from_bytes` parses a POST's bytes into a checked `WebhookPayload` (refusing JSON that
jsonb could not store); `payload_events` validates every event of every entry before anything
is written; `payload_plan_build` turns those events, given each page's primary key, into a
`PayloadPlan`: the messages, events and read/delivery marks to apply, and each event left out
with its reason. `conversations.services.webhook` supplies the page keys (creating page rows)
and applies the plan.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from conversations.models import Direction, EventKind
from conversations.schemas import (
    MessagingEvent,
    PayloadInvalid,
    WebhookPayload,
    event_parse,
    payload_parse,
)
from conversations.services.ingest import IncomingEvent, IncomingMark, IncomingMessage
from evoflow.jsonvalues import json_loads_storable


def payload_from_bytes(body: bytes) -> WebhookPayload:
    """The POST's bytes as a checked payload; PayloadInvalid says why they are not one."""
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


@dataclass(frozen=True)
class PayloadEvent:
    """One validated event of a payload, with where it sits in it."""

    entry_index: int
    page_id: str
    channel: str  # "messaging" or "standby"
    index: int
    event: MessagingEvent


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


def payload_events(payload: WebhookPayload) -> list[PayloadEvent]:
    """Every entry's `messaging[]` and `standby[]` events, each validated.

    Raises PayloadInvalid when an event of a known kind is malformed: the whole payload is then
    rejected, so nothing of it is half-applied.
    """
    return [
        PayloadEvent(entry_index, entry.id, channel, event_index, event_parse(raw))
        for entry_index, entry in enumerate(payload.entry)
        for channel, raw_events in (("messaging", entry.messaging), ("standby", entry.standby))
        for event_index, raw in enumerate(raw_events)
    ]


def payload_page_ids(events: Sequence[PayloadEvent]) -> list[str]:
    return sorted({event.page_id for event in events})


def payload_plan_build(events: Sequence[PayloadEvent], page_pks: Mapping[str, int]) -> PayloadPlan:
    """The events as batch items or skip reasons; `page_pks` holds every event's page."""
    plan = PayloadPlan(event_count=len(events))
    for item in events:
        where = {"entry": item.entry_index, "channel": item.channel, "index": item.index}
        _plan_event(plan, page_pks[item.page_id], item.page_id, item.channel, item.event, where)
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
