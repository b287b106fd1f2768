"""Explicit shapes of Messenger webhook payloads (F9, F23), validated with pydantic.

Only the envelope (`object` is `page`, `entry` a list) decides whether a payload is taken at
all. Each entry and each event is then checked on its own: an entry or event of a known kind
with a field of the wrong type is quarantined with its reason (kept in its receipt, re-applied
by `webhook_reprocess` after a fix), and every other event of the payload is applied, so a
signed payload is never refused because of one event. Deliberately lenient: the participants
(`sender.id` / `recipient.id` are checked by the processing rules, F7), `timestamp` (Meta's own
delivery example has none), and event kinds evoflow does not know or does not store (skipped
with their reason, counted).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

# Epoch milliseconds between 2000 and 2100: anything else is not a Messenger timestamp (and
# would overflow PostgreSQL's timestamp range if taken at face value).
MIN_TIMESTAMP_MS = 946_684_800_000
MAX_TIMESTAMP_MS = 4_102_444_800_000

TimestampMs = Annotated[int, Field(strict=True, ge=MIN_TIMESTAMP_MS, lt=MAX_TIMESTAMP_MS)]


def _event_time_ms(value: Any) -> Any:
    """An event's `timestamp` as Meta's references show it: epoch milliseconds, or (the newer
    postback and opt-in examples) a string, in seconds. Anything else is left to fail."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 16:
        value = int(value)
    seconds = isinstance(value, int) and not isinstance(value, bool)
    if seconds and MIN_TIMESTAMP_MS // 1000 <= value < MAX_TIMESTAMP_MS // 1000:
        return value * 1000
    return value


EventTimestampMs = Annotated[
    int,
    BeforeValidator(_event_time_ms),
    Field(strict=True, ge=MIN_TIMESTAMP_MS, lt=MAX_TIMESTAMP_MS),
]
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
    # A person known only by the chat plugin or checkbox (no PSID, no conversation yet).
    user_ref: Any = None


# Attachment payloads are stored as given (jsonb): deeper than this is not an attachment, and a
# document nested near Python's recursion limit could be read but not written back.
ATTACHMENT_MAX_DEPTH = 32


class Attachment(_Lenient):
    # Kept whole (fallback attachments carry `title` and `URL` beside a null payload).
    model_config = ConfigDict(extra="allow", frozen=True)

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
    referral: dict[str, Any] | None = None
    # A message Messenger could not render to the page (its content is not in the payload).
    is_unsupported: Annotated[bool, Field(strict=True)] = False


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
    referral: dict[str, Any] | None = None


class MessageEdit(_Lenient):
    mid: MessageId
    text: Annotated[str, Field(strict=True, max_length=20_000)] = ""
    # Messenger lets a person edit a message at most five times; anything far beyond is not an
    # edit count.
    num_edit: Annotated[int, Field(strict=True, ge=1, le=1_000)]


# Kinds Meta documents that evoflow reads but does not store (the event is skipped with this
# reason): the key of the event object, and the name the receipt records.
NOT_STORED_KINDS: dict[str, str] = {
    "referral": "referral",
    "optin": "optin",
    "pass_thread_control": "handover",
    "take_thread_control": "handover",
    "request_thread_control": "handover",
    "app_roles": "handover",
    "policy_enforcement": "policy_enforcement",
    "policy-enforcement": "policy_enforcement",  # the older spelling
    "account_linking": "account_linking",
}

STORED_KINDS = ("message", "message_edit", "delivery", "read", "reaction", "postback")


class MessagingEvent(_Lenient):
    sender: Participant | None = None
    recipient: Participant | None = None
    # Missing in Meta's own delivery example: a delivery then takes its watermark's time.
    timestamp: EventTimestampMs | None = None
    message: MessageBody | None = None
    message_edit: MessageEdit | None = None
    delivery: Delivery | None = None
    read: Read | None = None
    reaction: Reaction | None = None
    postback: Postback | None = None

    @property
    def kind(self) -> str | None:
        for name in STORED_KINDS:
            if getattr(self, name) is not None:
                return name
        return None

    def occurred_ms(self, fallback: int | None = None) -> int | None:
        """Epoch milliseconds of the event: its timestamp, else a delivery's or read's
        watermark, else `fallback` (the entry's time); None when there is none."""
        if self.timestamp is not None:
            return self.timestamp
        if self.delivery is not None:
            return self.delivery.watermark
        if self.read is not None:
            return self.read.watermark
        return fallback


def event_kind_of(raw: dict[str, Any]) -> str:
    """The kind an event claims by its keys, before it is validated: a stored kind, a kind
    evoflow does not store (`NOT_STORED_KINDS`), or `unknown`."""
    for name in STORED_KINDS:
        if name in raw:
            return name
    for key, name in NOT_STORED_KINDS.items():
        if key in raw:
            return name
    return "unknown"


class Entry(_Lenient):
    id: Annotated[str, Field(strict=True, min_length=1, max_length=64, pattern=r"^[0-9]+$")]
    # Only a fallback for an event without its own timestamp (used when it is in range).
    time: Annotated[int, Field(strict=True)] | None = None
    # Events are checked one by one (`event_parse`): any JSON value is taken here.
    messaging: list[Any] = Field(default_factory=list, max_length=10_000)
    standby: list[Any] = Field(default_factory=list, max_length=10_000)


class WebhookPayload(_Lenient):
    """The envelope: a page payload with a list of entries, each checked on its own."""

    object: Literal["page"]
    entry: list[Any] = Field(max_length=10_000)


class PayloadInvalid(Exception):
    """The payload (or one entry or event of it) is not what evoflow can read; the detail
    says why."""


class NonFinite(str):
    """A number jsonb cannot hold (NaN, Infinity, 1e400) as the body's parser met it: kept as
    a marker so that only the event holding it is quarantined."""


def value_problem(value: Any, *, depth: int = 0) -> str | None:
    """Why `value` (a part of a payload) cannot be stored in PostgreSQL text or jsonb, or None:
    a NUL character, a lone UTF-16 surrogate, a non-finite number, or nesting too deep."""
    if depth > VALUE_MAX_DEPTH:
        return "nested too deeply"
    if isinstance(value, NonFinite):
        return f"{str(value)[:40]} is not a number jsonb can hold"
    if isinstance(value, str):
        if "\x00" in value:
            return "contains a NUL character"
        if any("\ud800" <= char <= "\udfff" for char in value):
            return "contains a lone UTF-16 surrogate"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            problem = value_problem(key, depth=depth + 1) or value_problem(item, depth=depth + 1)
            if problem:
                return problem
    elif isinstance(value, list):
        for item in value:
            problem = value_problem(item, depth=depth + 1)
            if problem:
                return problem
    return None


# Deeper than this is no Messenger event (attachment payloads stop at ATTACHMENT_MAX_DEPTH).
VALUE_MAX_DEPTH = 64

# A NUL or a lone surrogate can only come from an escape in the bytes: without one, and without
# a non-finite number met by the parser, the walk over every value is skipped (the hot path).
_SUSPECT_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")


def body_needs_value_check(raw: bytes) -> bool:
    return _SUSPECT_ESCAPE.search(raw) is not None


def payload_parse(document: Any) -> WebhookPayload:
    """The envelope only: refused (PayloadInvalid) when it is not a page payload at all."""
    if not isinstance(document, dict):
        raise PayloadInvalid("the body is not a JSON object")
    try:
        return WebhookPayload.model_validate(document)
    except ValidationError as error:
        raise PayloadInvalid(_summarise(error)) from error


def entry_parse(raw: Any, *, check_values: bool) -> Entry:
    """One entry, without its events; PayloadInvalid quarantines the entry."""
    if not isinstance(raw, dict):
        raise PayloadInvalid("the entry is not a JSON object")
    head = {key: value for key, value in raw.items() if key not in ("messaging", "standby")}
    if check_values:
        problem = value_problem(head)
        if problem:
            raise PayloadInvalid(f"the entry {problem}")
    try:
        return Entry.model_validate(raw)
    except ValidationError as error:
        raise PayloadInvalid(_summarise(error)) from error


def event_parse(raw: Any, *, check_values: bool = True) -> MessagingEvent:
    """One event; PayloadInvalid (why) quarantines it."""
    if not isinstance(raw, dict):
        raise PayloadInvalid("the event is not a JSON object")
    if check_values:
        problem = value_problem(raw)
        if problem:
            raise PayloadInvalid(f"the event {problem}")
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
