"""Meta's webhook JSON translated into the ingest service's records: pure, no database.

`payload_from_bytes` parses a POST's bytes and checks the envelope (the one part that may refuse
a payload whole); `payload_events` checks every entry and event on its own, quarantining the
ones that do not fit with their reason; `payload_plan_build` turns the others, given each
page's primary key, into a `PayloadPlan`: the messages, edits, reactions, events and
read/delivery marks to apply, and each event left out (skipped or quarantined) with its
reason. `conversations.services.webhook` supplies the page keys (creating page rows) and applies
the plan.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from conversations.models import Direction, EventKind
from conversations.schemas import (
    MAX_TIMESTAMP_MS,
    MIN_TIMESTAMP_MS,
    NOT_STORED_KINDS,
    MessagingEvent,
    NonFinite,
    PayloadInvalid,
    WebhookPayload,
    body_needs_value_check,
    entry_parse,
    event_kind_of,
    event_parse,
    payload_parse,
)
from conversations.services.ingest import (
    IncomingEdit,
    IncomingEvent,
    IncomingMark,
    IncomingMessage,
    IncomingReaction,
)


def payload_from_bytes(body: bytes) -> LoadedPayload:
    """The POST's bytes as a checked envelope; PayloadInvalid says why they are not a page
    payload at all (the only reason a signed payload is refused whole)."""
    non_finite: list[str] = []

    def number(text: str) -> Any:
        value = float(text)
        if math.isfinite(value):
            return value
        non_finite.append(text)
        return NonFinite(text)

    def constant(name: str) -> Any:
        non_finite.append(name)
        return NonFinite(name)

    try:
        document = json.loads(body, parse_float=number, parse_constant=constant)
    except RecursionError as error:
        raise PayloadInvalid("the body is nested too deeply") from error
    except (ValueError, UnicodeDecodeError) as error:
        raise PayloadInvalid(f"the body is not JSON: {error}") from error
    if isinstance(document, NonFinite):
        raise PayloadInvalid("the body is not a JSON object")
    return LoadedPayload(
        payload=payload_parse(document),
        check_values=bool(non_finite) or body_needs_value_check(body),
    )


@dataclass(frozen=True)
class LoadedPayload:
    """A page payload's envelope, and whether its values need the full storability walk."""

    payload: WebhookPayload
    check_values: bool


@dataclass(frozen=True)
class PayloadEvent:
    """One validated event of a payload, with where it sits in it."""

    entry_index: int
    page_id: str
    channel: str  # "messaging" or "standby"
    index: int
    event: MessagingEvent
    claimed_kind: str  # what its keys say it is (`event_kind_of`)
    entry_time_ms: int | None = None


@dataclass
class PayloadPlan:
    """What a payload asks for, translated to the batch types, plus what was left out: skipped
    on purpose (a kind evoflow does not store, a bad participant) or quarantined (a known kind
    that does not fit its schema: kept for `webhook_reprocess` after a fix)."""

    messages: list[IncomingMessage] = field(default_factory=list)
    events: list[IncomingEvent] = field(default_factory=list)
    marks: list[IncomingMark] = field(default_factory=list)
    edits: list[IncomingEdit] = field(default_factory=list)
    reactions: list[IncomingReaction] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    event_count: int = 0
    unknown_count: int = 0
    # Applied events by kind, for the events metric once the batch has committed.
    kinds: dict[str, int] = field(default_factory=dict)


@dataclass
class PayloadEvents:
    """Every event that passed its schema, and every entry or event quarantined."""

    events: list[PayloadEvent] = field(default_factory=list)
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    not_stored: list[dict[str, Any]] = field(default_factory=list)
    event_count: int = 0


def payload_events(loaded: LoadedPayload) -> PayloadEvents:
    """Every entry's `messaging[]` and `standby[]` events, each checked on its own: one that
    does not fit is quarantined with its reason, the others go on."""
    result = PayloadEvents()
    check = loaded.check_values
    for entry_index, raw_entry in enumerate(loaded.payload.entry):
        counted = _raw_event_count(raw_entry)
        result.event_count += counted
        try:
            entry = entry_parse(raw_entry, check_values=check)
        except PayloadInvalid as error:
            result.quarantined.append(
                {
                    "entry": entry_index,
                    "channel": "entry",
                    "kind": "entry",
                    "reason": str(error),
                    "events": counted,
                }
            )
            continue
        entry_time = (
            entry.time
            if entry.time is not None and MIN_TIMESTAMP_MS <= entry.time < MAX_TIMESTAMP_MS
            else None
        )
        for channel, raw_events in (("messaging", entry.messaging), ("standby", entry.standby)):
            for index, raw in enumerate(raw_events):
                claimed = event_kind_of(raw) if isinstance(raw, dict) else "unknown"
                if claimed in NOT_STORED_KINDS.values():
                    # Read, not stored: nothing of its shape can matter, so none is checked.
                    result.not_stored.append(
                        {
                            "entry": entry_index,
                            "channel": channel,
                            "index": index,
                            "kind": claimed,
                            "reason": f"{claimed} events are not stored",
                        }
                    )
                    continue
                try:
                    event = event_parse(raw, check_values=check)
                except PayloadInvalid as error:
                    result.quarantined.append(
                        {
                            "entry": entry_index,
                            "channel": channel,
                            "index": index,
                            "kind": claimed,
                            "reason": str(error),
                        }
                    )
                    continue
                result.events.append(
                    PayloadEvent(entry_index, entry.id, channel, index, event, claimed, entry_time)
                )
    return result


def _raw_event_count(raw_entry: Any) -> int:
    if not isinstance(raw_entry, dict):
        return 0
    return sum(
        len(value)
        for value in (raw_entry.get("messaging"), raw_entry.get("standby"))
        if isinstance(value, list)
    )


def payload_page_ids(events: Sequence[PayloadEvent]) -> list[str]:
    return sorted({event.page_id for event in events})


def payload_plan_build(parsed: PayloadEvents, page_pks: Mapping[str, int]) -> PayloadPlan:
    """The events as batch items, skip or quarantine reasons; `page_pks` holds every event's
    page."""
    plan = PayloadPlan(event_count=parsed.event_count, quarantined=list(parsed.quarantined))
    for item in parsed.events:
        where = {"entry": item.entry_index, "channel": item.channel, "index": item.index}
        _plan_event(plan, page_pks[item.page_id], item, where)
    # In payload order, whichever way each was left out.
    plan.skipped = sorted(
        [*plan.skipped, *parsed.not_stored],
        key=lambda item: (item["entry"], item["channel"] != "messaging", item["index"]),
    )
    return plan


def _plan_event(plan: PayloadPlan, page_pk: int, item: PayloadEvent, where: dict[str, Any]) -> None:
    event, page_id, channel = item.event, item.page_id, item.channel
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
    occurred_ms = event.occurred_ms(fallback=item.entry_time_ms)
    if occurred_ms is None:
        plan.quarantined.append(
            {**where, "kind": kind, "reason": "no timestamp (neither the event nor its entry)"}
        )
        return
    plan.kinds[kind] = plan.kinds.get(kind, 0) + 1
    occurred_at = _from_ms(occurred_ms)
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
                attachments=[item.model_dump(exclude_unset=True) for item in body.attachments],
                is_echo=body.is_echo,
                app_id="" if body.app_id is None else str(body.app_id),
                reply_to_mid=body.reply_to.mid if body.reply_to else "",
            )
        )
    elif event.message_edit is not None:
        edit = event.message_edit
        plan.edits.append(
            IncomingEdit(
                page_pk=page_pk,
                psid=psid,
                mid=edit.mid,
                text=edit.text,
                num_edit=edit.num_edit,
                occurred_at=occurred_at,
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
                dedupe_key=f"reaction:{reaction.mid}:{psid}:{reaction.action}:{emoji}:{occurred_ms}",
                metadata={
                    "action": reaction.action,
                    "reaction": reaction.reaction,
                    "emoji": reaction.emoji,
                    **standby,
                },
                mid=reaction.mid,
            )
        )
        if emoji or reaction.action == "unreact":  # a nameless react has nothing to put on
            plan.reactions.append(
                IncomingReaction(
                    page_pk=page_pk,
                    psid=psid,
                    mid=reaction.mid,
                    action=reaction.action,
                    reaction=reaction.reaction or "",
                    emoji=reaction.emoji or "",
                    occurred_at=occurred_at,
                )
            )
    elif event.postback is not None:
        postback = event.postback
        dedupe = (
            f"postback:{postback.mid}"
            if postback.mid
            else f"postback:{psid}:{occurred_ms}:"
            + hashlib.sha256(postback.payload.encode()).hexdigest()[:16]
        )
        referral = {"referral": postback.referral} if postback.referral else {}
        plan.events.append(
            IncomingEvent(
                page_pk=page_pk,
                psid=psid,
                kind=EventKind.POSTBACK,
                occurred_at=occurred_at,
                dedupe_key=dedupe,
                metadata={
                    "title": postback.title,
                    "payload": postback.payload,
                    **referral,
                    **standby,
                },
                mid=postback.mid or "",
            )
        )


def _participant(participant: Any, page_id: str) -> tuple[str | None, str | None]:
    """(psid, None) for a usable participant, else (None, reason) (F7)."""
    if participant is not None and participant.id is None and participant.user_ref is not None:
        return None, "participant is a user_ref, not a PSID"
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
