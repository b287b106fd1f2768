"""One simulated Facebook Page: its deterministic world, its run-time changes and its rate window.

Conversation `i` of a page (participant, folder, times, messages) is a pure function of
`(seed, i)`, computed with integer hashing when asked for, so 100k conversations and 1M
messages cost no memory until served, and the same seed gives the same world on every call and
in every process. Run-time changes (messages or conversations added, conversations deleted)
live in small overlays on top. `GraphSimulator` (graph.py) holds one `PageWorld` per page and
routes requests to it; Meta's Business Use Case limits are per page, so the rate window,
token and throttling settings are per page too.

It stays one module past ~500 lines: `PageWorld` is one class whose generated data, overlays
and rate window are read together under one lock; splitting it would only spread that lock.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

# The newest generated conversation was updated at this time (minus the seed's jitter);
# older ones step back from it, so the order never depends on the wall clock.
GENERATED_UNTIL = datetime(2025, 3, 1, tzinfo=UTC).timestamp()
CONVERSATION_SPACING_S = 37  # every conversation is at least this much older than the previous

FOLDER_INBOX = "inbox"
FOLDER_OTHER = "other"
FOLDERS = (FOLDER_INBOX, FOLDER_OTHER, "page_done", "spam")

FIRST_NAMES = ["Jane", "Omar", "Lea", "Kenji", "Ana", "Tomas", "Ife", "Mira", "Noah", "Zoe"]
LAST_NAMES = ["Doe", "Haddad", "Martin", "Sato", "Silva", "Novak", "Okafor", "Rao", "Berg", "Ng"]
WORDS = ["hello", "price", "order", "thanks", "tomorrow", "size", "delivery", "photo", "ok", "café"]

_MASK = (1 << 64) - 1
# Hash streams: each generated quantity hashes its own stream, so they do not correlate.
_STREAM_COUNT, _STREAM_CONVERSATION, _STREAM_MESSAGE, _STREAM_TEXT = 1, 2, 3, 4
_SHARE_SCALE = 1_000_000  # folder shares are compared in millionths


_SEED, _STREAM, _INDEX, _POSITION = (
    0x9E3779B97F4A7C15,
    0xD1B54A32D192ED03,
    0xBF58476D1CE4E5B9,
    0x94D049BB133111EB,
)


def _mix(value: int) -> int:
    """The splitmix64 finaliser: scrambles 64 bits; pure arithmetic, identical everywhere."""
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK
    return value ^ (value >> 31)


def _hash(seed: int, stream: int, index: int, position: int) -> int:
    """A 64-bit hash of four integers, cheaper than seeding a `random.Random` per message
    (which dominated serving time). Linear in `position`, so a loop over the positions of one
    conversation adds `_POSITION` instead of recomputing the rest."""
    return _mix((seed * _SEED + stream * _STREAM + index * _INDEX + position * _POSITION) & _MASK)


def _texts(count: int) -> tuple[str, ...]:
    texts = []
    for number in range(count):
        value = _hash(0, _STREAM_TEXT, number, 0)
        words, value = 1 + value % 8, value >> 3
        chosen = []
        for _ in range(words):
            chosen.append(WORDS[value % len(WORDS)])
            value //= len(WORDS)
        texts.append(" ".join(chosen))
    return tuple(texts)


# Message texts are picked from a fixed table: a message's text is one lookup, not a join.
TEXTS = _texts(4096)


@lru_cache(maxsize=4096)
def _day_prefix(day: int) -> str:
    return datetime.fromtimestamp(day * 86_400, tz=UTC).strftime("%Y-%m-%dT")


# Formatting a time is per message, so it is two table lookups and a cached day.
_CLOCK_MINUTES = tuple(f"{minute // 60:02d}:{minute % 60:02d}:" for minute in range(1_440))
_CLOCK_SECONDS = tuple(f"{second:02d}+0000" for second in range(60))


def graph_time(epoch_seconds: float) -> str:
    """Graph's time format, `2025-03-04T09:12:44+0000`, to the second (floored)."""
    day, second = divmod(math.floor(epoch_seconds), 86_400)
    minute, second = divmod(second, 60)
    return _day_prefix(day) + _CLOCK_MINUTES[minute] + _CLOCK_SECONDS[second]


@dataclass(slots=True)
class SimMessage:
    mid: str
    created: float
    from_page: bool
    text: str
    attachments: list[dict[str, Any]] = field(default_factory=list)
    reply_to: str | None = None


@dataclass
class SimConversation:
    key: str  # the thread id, t_...
    psid: str
    name: str
    updated: float
    base_count: int  # generated messages (the rest come from the overlay)
    generated_index: int | None  # None for conversations added at run time
    folder: str = FOLDER_INBOX
    message_gap: int = 60  # seconds between generated messages
    page_id: str = ""
    # When the newest generated message was sent: generated messages keep their times when a
    # new message bumps `updated` (Facebook never rewrites a message's time).
    generated_until: float | None = None


# The ways a thread's participants can be unusable (F7), as Meta sends them: a deleted account
# without an id, the page alone, an id that is not a page-scoped id, two people besides the page.
BAD_PARTICIPANT_KINDS = ("no_id", "page_only", "not_psid", "two_people")


class PageWorld:
    """One page: generation, overlays, ordering, truth, and its rate window.

    Callers hold `lock` (shared with the simulator) around reads that must see overlays
    consistently; the methods that change overlays take it themselves.
    """

    def __init__(
        self,
        *,
        page_id: str,
        name: str,
        seed: int,
        conversations: int,
        messages: int,
        access_token: str,
        other_folder_share: float = 0.0,
        rate_limit: int = 0,
        rate_window_s: float = 60.0,
        throttle_code: int = 80001,
        lock: threading.RLock | None = None,
    ) -> None:
        if conversations < 0 or messages < 0:
            raise ValueError("conversations and messages must not be negative")
        if not 0 <= other_folder_share <= 1:
            raise ValueError("other_folder_share must be between 0 and 1")
        self.page_id = page_id
        self.name = name
        self.seed = seed
        self.conversation_total = conversations
        self.message_total = messages
        self.access_token = access_token
        self.other_folder_share = other_folder_share
        self._other_threshold = round(other_folder_share * _SHARE_SCALE)
        self.rate_limit = rate_limit
        self.rate_window_s = rate_window_s
        self.throttle_code = throttle_code
        self.lock = lock or threading.RLock()
        self.churned: list[tuple[str, str]] = []  # (action, thread id), for tests and state
        self._calls: deque[float] = deque()  # monotonic times in the rate window
        self._deleted: set[str] = set()
        self._added_messages: dict[str, list[SimMessage]] = {}
        self._bumped: dict[str, float] = {}  # thread id -> new updated time
        self._added_conversations: dict[str, SimConversation] = {}
        # Threads whose participants are served wrong, by kind (BAD_PARTICIPANT_KINDS).
        self._bad_participants: dict[str, str] = {}
        self._clock = GENERATED_UNTIL
        self._sequence = 0
        self._key_prefix = f"t_{seed}"
        # Edits and reactions made at run time: mid -> (current text, edit count); mid ->
        # {(psid, reaction name): emoji} of the reactions on it now.
        self._edits: dict[str, tuple[str, int]] = {}
        self._reactions: dict[str, dict[tuple[str, str], str]] = {}

    # -- the deterministic world ---------------------------------------------------------------

    def generated_message_count(self, index: int) -> int:
        """Messages of generated conversation `index`: varied, summing to the total exactly."""
        total, count = self.message_total, self.conversation_total
        base, remainder = divmod(total, count) if count else (0, 0)
        value = base + (1 if index < remainder else 0)
        if base > 1 and not (count % 2 == 1 and index == count - 1):
            # moved from one conversation of a pair to the other
            swing = _hash(self.seed, _STREAM_COUNT, index // 2, 0) % base
            value += swing if index % 2 == 0 else -swing
        return value

    def generated_key(self, index: int) -> str:
        return f"{self._key_prefix}{index:09d}"

    def generated_folder(self, index: int) -> str:
        if not self._other_threshold:
            return FOLDER_INBOX
        share = _hash(self.seed, _STREAM_CONVERSATION, index, 1) % _SHARE_SCALE
        return FOLDER_OTHER if share < self._other_threshold else FOLDER_INBOX

    def generated_conversation(self, index: int) -> SimConversation:
        value = _hash(self.seed, _STREAM_CONVERSATION, index, 0)
        updated = GENERATED_UNTIL - index * CONVERSATION_SPACING_S - (value >> 16) % 30
        return SimConversation(
            key=self.generated_key(index),
            psid=str(6_100_000_000_000 + self.seed * 10_000_000 + index),
            name=f"{FIRST_NAMES[value % 10]} {LAST_NAMES[(value >> 8) % 10]}",
            updated=updated,
            generated_until=updated,
            base_count=self.generated_message_count(index),
            generated_index=index,
            folder=self.generated_folder(index),
            message_gap=60 + (value >> 24) % 3_600,
            page_id=self.page_id,
        )

    def generated_message(self, conversation: SimConversation, position: int) -> SimMessage:
        """Message `position` (0 = oldest) of a generated conversation."""
        return self.generated_messages(conversation, [position])[0]

    def generated_messages(
        self, conversation: SimConversation, positions: Iterable[int]
    ) -> list[SimMessage]:
        """Messages at `positions` (0 = oldest) of a generated conversation.

        One loop for a whole window, with the conversation's constants read once: this is
        most of the time spent serving a page of messages.
        """
        index = conversation.generated_index
        assert index is not None
        seed = self.seed
        newest, gap = conversation.base_count - 1, conversation.message_gap
        updated = (
            conversation.generated_until
            if conversation.generated_until is not None
            else conversation.updated
        )
        mid_prefix = f"m_{seed}_{index}_"
        base = seed * _SEED + _STREAM_MESSAGE * _STREAM + index * _INDEX  # _hash, inlined
        messages = []
        for position in positions:
            value = _mix((base + position * _POSITION) & _MASK)
            text = TEXTS[value & 4095]
            attachments = []
            if position % 7 == 3:
                attachments = [
                    {
                        "id": f"{index}{position}",
                        "mime_type": "image/jpeg",
                        "name": f"photo_{position}.jpg",
                        "size": 1000 + (value >> 12) % 90_000,
                        "image_data": {
                            "url": f"https://scontent.example/{index}/{position}.jpg?oe=expiring",
                            "preview_url": f"https://scontent.example/{index}/{position}_p.jpg",
                            "width": 640,
                            "height": 480,
                        },
                    }
                ]
                if position % 2:
                    text = ""
            messages.append(
                SimMessage(
                    f"{mid_prefix}{position}",
                    updated - (newest - position) * gap,
                    position % 3 == 1,
                    text,
                    attachments,
                    f"{mid_prefix}{position - 1}" if position % 11 == 5 else None,
                )
            )
        return messages

    def owns(self, key: str) -> bool:
        """Whether thread id `key` has this page's shape (generated or added at run time)."""
        if not key.startswith(self._key_prefix):
            return False
        rest = key[len(self._key_prefix) :]
        return (len(rest) == 9 and rest.isdigit()) or (
            rest.startswith("live") and rest[4:].isdigit()
        )

    def conversation(self, key: str) -> SimConversation | None:
        """The live conversation `key` with its overlays, or None (unknown or deleted)."""
        if key in self._deleted:
            return None
        if key in self._added_conversations:
            return self._added_conversations[key]
        digits = key[len(self._key_prefix) :]
        if not key.startswith(self._key_prefix) or not digits.isdigit() or len(digits) != 9:
            return None
        index = int(digits)
        if index >= self.conversation_total:
            return None
        conversation = self.generated_conversation(index)
        if key in self._bumped:
            conversation.updated = self._bumped[key]
        return conversation

    def message_total_of(self, conversation: SimConversation) -> int:
        return conversation.base_count + len(self._added_messages.get(conversation.key, ()))

    def message_window(
        self, conversation: SimConversation, *, skip_newest: int, limit: int
    ) -> tuple[list[SimMessage], int]:
        """Messages newest first, `skip_newest` from the newest end; and the total count.

        Generated messages are produced only for the window asked for (a conversation may
        hold thousands).
        """
        added = self._added_messages.get(conversation.key, [])
        base_count = conversation.base_count
        total = base_count + len(added)
        newest = total - 1 - skip_newest  # positions count from 0 = oldest
        oldest = max(newest - limit + 1, 0)
        window = [
            added[position - base_count]
            for position in range(newest, oldest - 1, -1)
            if position >= base_count
        ]
        generated_newest = min(newest, base_count - 1)
        if generated_newest >= oldest:
            window += self.generated_messages(conversation, range(generated_newest, oldest - 1, -1))
        if self._edits:  # Graph serves a message's current text
            window = [
                dataclasses.replace(message, text=self._edits[message.mid][0])
                if message.mid in self._edits
                else message
                for message in window
            ]
        return window, total

    def folder_of(self, key: str) -> str:
        if key in self._added_conversations:
            return self._added_conversations[key].folder
        return self.generated_folder(int(key[len(self._key_prefix) :]))

    def ordered_keys_after(
        self, cursor: str | None, limit: int, folder: str = FOLDER_INBOX
    ) -> tuple[list[str], bool]:
        """Up to `limit` live conversation keys of `folder` after the cursor, newest-updated
        first; and whether more follow. Raises ValueError for a cursor it cannot read."""
        with self.lock:
            bumped = sorted(
                (
                    (updated, key)
                    for key, updated in self._bumped.items()
                    if key not in self._deleted and self.folder_of(key) == folder
                ),
                reverse=True,
            )
            deleted = set(self._deleted)
            bumped_keys = set(self._bumped)
        keys: list[str] = []
        start_index = 0
        if cursor is not None:
            kind, _, value = cursor.partition(":")
            if kind == "b":
                updated_text, _, after_key = value.partition(":")
                position = (float(updated_text), after_key)
                bumped = [item for item in bumped if item < position]
            elif kind == "i":
                bumped = []
                start_index = int(value) + 1
            else:
                raise ValueError(f"unknown cursor kind {kind!r}")
        for _, key in bumped:
            if len(keys) > limit:
                break
            keys.append(key)
        if not self._generated_folder_possible(folder):
            start_index = self.conversation_total
        index = start_index
        is_filtered = bool(self._other_threshold)
        while len(keys) <= limit and index < self.conversation_total:
            key = self.generated_key(index)
            if (
                key not in deleted
                and key not in bumped_keys
                and (not is_filtered or self.generated_folder(index) == folder)
            ):
                keys.append(key)
            index += 1
        return keys[:limit], len(keys) > limit

    def _generated_folder_possible(self, folder: str) -> bool:
        """Whether any generated conversation can be in `folder` (else skip the scan)."""
        if folder == FOLDER_INBOX:
            return self._other_threshold < _SHARE_SCALE
        if folder == FOLDER_OTHER:
            return self._other_threshold > 0
        return False

    def cursor_value(self, conversation: SimConversation) -> str:
        """The position of `conversation` in the list, as `ordered_keys_after` reads it."""
        if conversation.key in self._bumped:
            return f"b:{conversation.updated}:{conversation.key}"
        return f"i:{conversation.generated_index}"

    # -- run-time changes ------------------------------------------------------------------------

    def _tick(self) -> float:
        """A strictly increasing time for run-time changes, newer than anything generated."""
        with self.lock:
            self._clock = max(self._clock + 1, time.time())
            return self._clock

    def message_add(
        self, *, thread_id: str, text: str, from_page: bool = False
    ) -> tuple[SimConversation, SimMessage]:
        """Append a message to a live conversation; it jumps to the top of its folder."""
        with self.lock:
            conversation = self.conversation(thread_id)
            if conversation is None:
                raise LookupError(thread_id)
            created = self._tick()
            self._sequence += 1
            message = SimMessage(
                mid=f"m_{self.seed}_live_{self._sequence}",
                created=created,
                from_page=from_page,
                text=text,
            )
            self._added_messages.setdefault(thread_id, []).append(message)
            if thread_id in self._added_conversations:
                self._added_conversations[thread_id].updated = created
            self._bumped[thread_id] = created
            conversation.updated = created
        return conversation, message

    def _message_of(self, thread_id: str, mid: str) -> tuple[SimConversation, SimMessage]:
        conversation = self.conversation(thread_id)
        if conversation is None:
            raise LookupError(thread_id)
        window, _ = self.message_window(conversation, skip_newest=0, limit=10**12)
        for message in window:
            if message.mid == mid:
                return conversation, message
        raise LookupError(mid)

    def message_edit(
        self, *, thread_id: str, mid: str, text: str
    ) -> tuple[SimConversation, SimMessage, int, float]:
        """The person (or the page) edits message `mid`: its text becomes `text`; returns the
        conversation, the message as edited, its edit count and the edit's time. An edit
        moves the conversation to the top of its folder, like a new message: the incremental
        sync reads it again."""
        with self.lock:
            conversation, message = self._message_of(thread_id, mid)
            count = self._edits.get(mid, ("", 0))[1] + 1
            self._edits[mid] = (text, count)
            edited = self._tick()
            if thread_id in self._added_conversations:
                self._added_conversations[thread_id].updated = edited
            self._bumped[thread_id] = edited
            conversation.updated = edited
        return conversation, dataclasses.replace(message, text=text), count, edited

    def message_react(
        self, *, thread_id: str, mid: str, reaction: str, emoji: str, action: str
    ) -> tuple[SimConversation, float]:
        """The conversation's person puts a reaction on message `mid` (`react`) or takes the
        one named off (`unreact`); returns the conversation and the event's time."""
        with self.lock:
            conversation, _ = self._message_of(thread_id, mid)
            on = self._reactions.setdefault(mid, {})
            if action == "react":
                on[(conversation.psid, reaction)] = emoji
            else:
                on.pop((conversation.psid, reaction), None)
            return conversation, self._tick()

    def conversation_add(
        self, *, psid: str | None, name: str, folder: str = FOLDER_INBOX
    ) -> SimConversation:
        """A new conversation without messages, newest of its folder."""
        with self.lock:
            self._sequence += 1
            sequence = self._sequence
            conversation = SimConversation(
                key=f"{self._key_prefix}live{sequence}",
                psid=psid or str(6_900_000_000_000 + self.seed * 10_000_000 + sequence),
                name=name,
                updated=self._tick(),
                base_count=0,
                generated_index=None,
                folder=folder,
                page_id=self.page_id,
            )
            self._added_conversations[conversation.key] = conversation
            self._bumped[conversation.key] = conversation.updated
        return conversation

    def conversation_delete(self, key: str, *, action: str | None = None) -> bool:
        """Delete a live conversation; False if there is none. `action` records churn."""
        with self.lock:
            if self.conversation(key) is None:
                return False
            self._deleted.add(key)
            if action:
                self.churned.append((action, key))
        return True

    # -- rate window -------------------------------------------------------------------------------

    def usage(self, *, record: bool) -> tuple[int, int, bool]:
        """Record a call (unless `record` is off); calls in the window, minutes until access
        is regained, and whether the page is over its rate."""
        now = time.monotonic()
        with self.lock:
            if record:
                self._calls.append(now)
            while self._calls and self._calls[0] <= now - self.rate_window_s:
                self._calls.popleft()
            in_window = len(self._calls)
            oldest = self._calls[0] if self._calls else now
        over = bool(self.rate_limit) and in_window > self.rate_limit
        # Meta's estimate is in whole minutes: a window shorter than half a minute says 0
        # ("no estimate"), as the tests' one-second windows need.
        remaining = max(0.0, oldest + self.rate_window_s - now)
        regain_minutes = round(remaining / 60) if over else 0
        return in_window, regain_minutes, over

    def participants_break(self, thread_id: str, kind: str | None) -> bool:
        """Serve the thread's participants wrong from now on (`kind` of
        BAD_PARTICIPANT_KINDS), or right again (None); False when there is no such thread."""
        if kind is not None and kind not in BAD_PARTICIPANT_KINDS:
            raise ValueError(f"kind must be one of {BAD_PARTICIPANT_KINDS} or None")
        with self.lock:
            if self.conversation(thread_id) is None:
                return False
            if kind is None:
                self._bad_participants.pop(thread_id, None)
            else:
                self._bad_participants[thread_id] = kind
            return True

    def bad_participants_of(self, thread_id: str) -> str | None:
        """How the thread's participants are served wrong, or None."""
        return self._bad_participants.get(thread_id)

    def rate_window_clear(self) -> None:
        with self.lock:
            self._calls.clear()

    # -- what the sync must reproduce ----------------------------------------------------------

    def state(self) -> dict[str, Any]:
        with self.lock:
            return {
                "page_id": self.page_id,
                "page_name": self.name,
                "conversations": self.conversation_total
                + len(self._added_conversations)
                - len(self._deleted),
                "generated_conversations": self.conversation_total,
                "generated_messages": self.message_total,
                "added_messages": sum(len(v) for v in self._added_messages.values()),
                "deleted": sorted(self._deleted),
                "seed": self.seed,
                "other_folder_share": self.other_folder_share,
                "rate_limit": self.rate_limit,
                "rate_window_s": self.rate_window_s,
                "throttle_code": self.throttle_code,
                "churned": self.churned[-100:],
            }

    def truth(self) -> dict[str, Any]:
        """Every live conversation with every message, as the API serves them.

        Materialises the whole world: meant for worlds of up to a few thousand messages (tests),
        not for the million-message benchmark world.
        """
        with self.lock:
            keys = [
                key
                for key in map(self.generated_key, range(self.conversation_total))
                if key not in self._deleted
            ]
            keys += [key for key in self._added_conversations if key not in self._deleted]
            conversations = [self.conversation(key) for key in keys]
            rendered = [
                self._conversation_truth(conversation)
                for conversation in conversations
                if conversation is not None
            ]
            deleted = sorted(self._deleted)
        rendered.sort(key=lambda item: (item["updated_timestamp_ms"], item["id"]), reverse=True)
        return {"page_id": self.page_id, "conversations": rendered, "deleted": deleted}

    def _conversation_truth(self, conversation: SimConversation) -> dict[str, Any]:
        window, total = self.message_window(conversation, skip_newest=0, limit=10**12)
        return {
            "id": conversation.key,
            "psid": conversation.psid,
            "name": conversation.name,
            "folder": conversation.folder,
            "updated_time": graph_time(conversation.updated),
            "updated_timestamp_ms": int(conversation.updated * 1000),
            "message_count": total,
            "messages": [
                {
                    "id": message.mid,
                    "created_time": graph_time(message.created),
                    "created_timestamp_ms": int(message.created * 1000),
                    "from_page": message.from_page,
                    "text": message.text,
                    "attachments": [dict(item) for item in message.attachments],
                    "reply_to": message.reply_to,
                    "edit_count": self._edits.get(message.mid, ("", 0))[1],
                    "reactions": sorted(
                        [psid, reaction] for psid, reaction in self._reactions.get(message.mid, {})
                    ),
                }
                for message in reversed(window)  # oldest first
            ],
        }
