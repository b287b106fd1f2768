"""Explicit shapes of Messenger webhook payloads (F9, F23), validated with pydantic.

The envelope (`object`, `entry[]`, `messaging[]`/`standby[]`) and every event kind evoflow
understands are strict: a field of the wrong type rejects the whole payload, so nothing of it is
half-applied. Two things are deliberately lenient, because the issue wants them skipped and
recorded rather than rejected: the participants (`sender.id` / `recipient.id` are checked by
the processing rules, F7), and event kinds evoflow does not know (kept in the receipt, counted).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from evoflow.jsonvalues import NUL, UnstorableJson, json_value_check

# Epoch milliseconds between 2000 and 2100: anything else is not a Messenger timestamp (and
# would overflow PostgreSQL's timestamp range if taken at face value).
MIN_TIMESTAMP_MS = 946_684_800_000
MAX_TIMESTAMP_MS = 4_102_444_800_000

TimestampMs = Annotated[int, Field(strict=True, ge=MIN_TIMESTAMP_MS, lt=MAX_TIMESTAMP_MS)]
MessageId = Annotated[str, Field(strict=True, min_length=1, max_length=255)]
ShortText = Annotated[str, Field(strict=True, max_length=2_000)]
# Stored in a varchar(64): an integer app id has at most 64 digits.
AppId = (
    Annotated[int, Field(strict=True, ge=0, lt=10**64)]
    | Annotated[str, Field(strict=True, max_length=64)]
)
# A reaction name or emoji is part of the event's dedupe key (varchar(400)): with a mid of 255
# characters and a PSID of 64 the longest key is 384 characters.
ReactionText = Annotated[str, Field(strict=True, max_length=32)]


class _Lenient(BaseModel):
    # Meta adds fields over time; unknown ones are kept in the raw receipt, not rejected.
    model_config = ConfigDict(extra="ignore", frozen=True)


class Participant(_Lenient):
    # Any type: a bad id skips the event with a reason instead of rejecting the payload (F7).
    id: Any = None


# Attachment payloads are stored as given (jsonb): deeper than this is not an attachment, and a
# document nested near Python's recursion limit could be read but not written back.
ATTACHMENT_MAX_DEPTH = 32


class Attachment(_Lenient):
    type: Annotated[str, Field(strict=True, max_length=64)]
    payload: dict[str, Any] | None = None

    @field_validator("payload")
    @classmethod
    def _not_too_deep(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and _depth(value) > ATTACHMENT_MAX_DEPTH:
            raise ValueError(f"nested deeper than {ATTACHMENT_MAX_DEPTH} levels")
        return value


def _depth(value: Any, level: int = 1) -> int:
    if level > ATTACHMENT_MAX_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(item, level + 1) for item in value.values()), default=level)
    if isinstance(value, list):
        return max((_depth(item, level + 1) for item in value), default=level)
    return level


class ReplyTo(_Lenient):
    mid: MessageId


class MessageBody(_Lenient):
    mid: MessageId
    text: Annotated[str, Field(strict=True, max_length=20_000)] = ""
    attachments: list[Attachment] = Field(default_factory=list, max_length=100)
    reply_to: ReplyTo | None = None
    is_echo: Annotated[bool, Field(strict=True)] = False
    app_id: AppId | None = None
    metadata: ShortText | None = None
    quick_reply: dict[str, Any] | None = None


class Delivery(_Lenient):
    watermark: TimestampMs
    mids: list[MessageId] | None = Field(default=None, max_length=1_000)


class Read(_Lenient):
    watermark: TimestampMs


class Reaction(_Lenient):
    mid: MessageId
    action: Literal["react", "unreact"]
    reaction: ReactionText | None = None
    emoji: ReactionText | None = None


class Postback(_Lenient):
    mid: MessageId | None = None
    title: ShortText = ""
    payload: ShortText = ""


class MessagingEvent(_Lenient):
    sender: Participant | None = None
    recipient: Participant | None = None
    timestamp: TimestampMs
    message: MessageBody | None = None
    delivery: Delivery | None = None
    read: Read | None = None
    reaction: Reaction | None = None
    postback: Postback | None = None

    @property
    def kind(self) -> str | None:
        for name in ("message", "delivery", "read", "reaction", "postback"):
            if getattr(self, name) is not None:
                return name
        return None

    @property
    def occurred_at(self) -> datetime:
        return datetime.fromtimestamp(self.timestamp / 1000, tz=UTC)


class Entry(_Lenient):
    id: Annotated[str, Field(strict=True, min_length=1, max_length=64, pattern=r"^[0-9]+$")]
    time: Annotated[int, Field(strict=True)] | None = None
    messaging: list[dict[str, Any]] = Field(default_factory=list, max_length=10_000)
    standby: list[dict[str, Any]] = Field(default_factory=list, max_length=10_000)


class WebhookPayload(_Lenient):
    object: Literal["page"]
    entry: list[Entry] = Field(max_length=10_000)


class PayloadInvalid(Exception):
    """The payload is not a Messenger page webhook evoflow can read; the detail says why."""


def _contains_lone_surrogate(value: Any) -> bool:
    # json.loads turns a lone \uD800 escape into a str that UTF-8 (text, jsonb) cannot hold.
    if isinstance(value, str):
        return any("\ud800" <= char <= "\udfff" for char in value)
    if isinstance(value, dict):
        return any(
            _contains_lone_surrogate(key) or _contains_lone_surrogate(item)
            for key, item in value.items()
        )
    if isinstance(value, list):
        return any(_contains_lone_surrogate(item) for item in value)
    return False


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def payload_parse(document: Any, *, raw: bytes | None = None) -> WebhookPayload:
    # PostgreSQL text and jsonb cannot hold U+0000: refuse it up front rather than fail mid-way.
    # A NUL can only come from a \u0000 escape: without one in the bytes, skip the full walk
    # (the body's numbers were checked as it was parsed).
    if raw is None or b"\\u0000" in raw:
        try:
            json_value_check(document, max_depth=None)
        except UnstorableJson as error:
            if error.reason == NUL:
                raise PayloadInvalid("the payload contains a NUL character") from None
            raise PayloadInvalid(f"the payload cannot be stored: {error}") from None
    # Likewise a lone surrogate only comes from a \uD800-\uDFFF escape (pairs decode to one
    # character and are fine).
    if (raw is None or _SURROGATE_ESCAPE.search(raw)) and _contains_lone_surrogate(document):
        raise PayloadInvalid("the payload contains a lone UTF-16 surrogate")
    try:
        return WebhookPayload.model_validate(document)
    except ValidationError as error:
        raise PayloadInvalid(_summarise(error)) from error


def event_parse(raw: dict[str, Any]) -> MessagingEvent:
    if not isinstance(raw, dict):
        raise PayloadInvalid("an event is not a JSON object")
    try:
        return MessagingEvent.model_validate(raw)
    except ValidationError as error:
        raise PayloadInvalid(_summarise(error)) from error


def _summarise(error: ValidationError) -> str:
    parts = []
    for item in error.errors()[:5]:
        location = ".".join(str(part) for part in item["loc"])
        parts.append(f"{location}: {item['msg']}")
    return "; ".join(parts)
