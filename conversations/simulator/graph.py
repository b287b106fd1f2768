"""A Graph API simulator for Messenger conversations (graph-api-facts.md is its contract).

Deterministic from a seed and lazy: conversation `i`'s participant, times and messages are a
pure function of `(seed, i)`, so 100k conversations and 1M messages cost no memory until asked
for. Runtime changes (messages or conversations added, conversations deleted) live in small
overlays on top.

Served edges (an optional `/vNN.N` prefix is accepted, as in `GRAPH_API_BASE_URL`):

- `GET /{page-id}`: the page node (`id`, `name`);
- `GET /{page-id}/conversations`: newest-updated first, `limit` (default 25, at most 100),
  `after` cursor, `paging.cursors` and `paging.next` (absent on the last page), `fields` with
  nested `messages.limit(n){...}` and `participants`;
- `GET /{conversation-id}/messages`: newest first, same paging;
- `GET /{conversation-id}`: the conversation node.

Every answer carries `X-App-Usage` and `X-Business-Use-Case-Usage` computed from a sliding
window of calls per page; past the configured rate, calls fail with the configured throttling
code (4, 32, 613, 80001 or 80006) until the window drains (calls while blocked keep it full,
as Meta warns). A wrong token is error 190. Faults: server errors (`fault_rate`), slowness,
truncated JSON (`malformed_rate`), shape drift (`drift_rate`: fields renamed or retyped) and
churn (`churn_rate`: after a conversations page is served, a conversation further down the list
gets a new message, jumping to the top, or is deleted, so a walk sees the list change between
its pages).
Control routes under `/_control/` add messages and conversations, delete conversations,
change the token and the rate, and send signed webhook POSTs for new messages to a target URL.
"""

from __future__ import annotations

import base64
import json
import math
import random
import threading
import time
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from conversations.simulator.fields import FieldsInvalid, FieldSpec, fields_parse
from conversations.simulator.payloads import message_event, signed_body, webhook_document
from evoflow.simulator import Faults, SimRequest, SimResponse, Simulator, SimulatorError

VERSION_PREFIX = r"(?P<version>/v\d+\.\d+)?"
DEFAULT_PAGE_ID = "111222333"
DEFAULT_ACCESS_TOKEN = "sim-page-token"
DEFAULT_LIMIT = 25
MAX_LIMIT = 100
# The newest generated conversation was updated at this time (minus the seed's jitter);
# older ones step back from it, so the order never depends on the wall clock.
GENERATED_UNTIL = datetime(2025, 3, 1, tzinfo=UTC).timestamp()
CONVERSATION_SPACING_S = 37  # every conversation is at least this much older than the previous

THROTTLE_MESSAGES = {
    4: "(#4) Application request limit reached",
    17: "(#17) User request limit reached",
    32: "(#32) Page request limit reached",
    613: "(#613) Calls to this api have exceeded the rate limit.",
    80001: (
        "(#80001) There have been too many calls to this Page account. Wait a bit and try again."
    ),
    80006: "(#80006) There have been too many messenger api calls to this Page account.",
}

FIRST_NAMES = ["Jane", "Omar", "Lea", "Kenji", "Ana", "Tomas", "Ife", "Mira", "Noah", "Zoe"]
LAST_NAMES = ["Doe", "Haddad", "Martin", "Sato", "Silva", "Novak", "Okafor", "Rao", "Berg", "Ng"]
WORDS = ["hello", "price", "order", "thanks", "tomorrow", "size", "delivery", "photo", "ok", "café"]


def _graph_time(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(epoch_seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S+0000")


def _encode_cursor(value: str) -> str:
    return base64.urlsafe_b64encode(("QVFI" + value).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> str:
    try:
        decoded = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError) as error:
        raise _graph_error(100, "Invalid cursor", status=400) from error
    if not decoded.startswith("QVFI"):
        raise _graph_error(100, "Invalid cursor", status=400)
    return decoded[4:]


def _graph_error(code: int, message: str, *, status: int = 400, **extra: Any) -> SimulatorError:
    body = {
        "error": {
            "message": message,
            "type": "OAuthException",
            "code": code,
            "fbtrace_id": f"Sim{random.randrange(16**10):010x}",
            **extra,
        }
    }
    return SimulatorError(status, body)


@dataclass
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


class GraphSimulator(Simulator):
    def __init__(
        self,
        *,
        page_id: str = DEFAULT_PAGE_ID,
        page_name: str = "Simulated Shop",
        conversations: int = 50,
        messages: int = 500,
        seed: int = 1,
        access_token: str = DEFAULT_ACCESS_TOKEN,
        faults: Faults | None = None,
        drift_rate: float = 0.0,
        churn_rate: float = 0.0,
        rate_limit: int = 0,
        rate_window_s: float = 60.0,
        throttle_code: int = 80001,
        webhook_target: str | None = None,
        app_secret: str = "",
    ) -> None:
        super().__init__(faults=faults or Faults(seed=seed))
        if conversations < 0 or messages < 0:
            raise ValueError("conversations and messages must not be negative")
        if throttle_code not in THROTTLE_MESSAGES:
            raise ValueError(f"throttle_code must be one of {sorted(THROTTLE_MESSAGES)}")
        self.page_id = page_id
        self.page_name = page_name
        self.conversation_total = conversations
        self.message_total = messages
        self.seed = seed
        self.access_token = access_token
        self.drift_rate = drift_rate
        self.churn_rate = churn_rate
        self._churn_random = random.Random(seed * 7919 + 2)
        self.churned: list[tuple[str, str]] = []  # (action, thread id), for tests and state
        self.rate_limit = rate_limit
        self.rate_window_s = rate_window_s
        self.throttle_code = throttle_code
        self.webhook_target = webhook_target
        self.app_secret = app_secret
        self._drift_random = random.Random(seed * 7919 + 1)
        self._calls: deque[float] = deque()
        # overlays
        self._deleted: set[str] = set()
        self._added_messages: dict[str, list[SimMessage]] = {}
        self._bumped: dict[str, float] = {}  # thread id -> new updated time
        self._added_conversations: dict[str, SimConversation] = {}
        self._clock = GENERATED_UNTIL
        self._sequence = 0
        self._webhook_lock = threading.Lock()

        page = f"{VERSION_PREFIX}/(?P<page_id>[0-9]+)"
        thread = f"{VERSION_PREFIX}/(?P<thread_id>t_[A-Za-z0-9_-]+)"
        self.add_route("GET", page, "page", self._page_node)
        self.add_route("GET", f"{page}/conversations", "conversations", self._conversations)
        self.add_route("GET", thread, "conversation", self._conversation_node)
        self.add_route("GET", f"{thread}/messages", "messages", self._messages)
        self.add_route("GET", r"/_control/state", "control.state", self._control_state)
        self.add_route("POST", r"/_control/messages", "control.messages", self._control_messages)
        self.add_route(
            "POST", r"/_control/conversations", "control.conversations", self._control_add
        )
        self.add_route(
            "DELETE",
            r"/_control/conversations/(?P<thread_id>t_[A-Za-z0-9_-]+)",
            "control.conversations.delete",
            self._control_delete,
        )
        self.add_route("POST", r"/_control/token", "control.token", self._control_token)
        self.add_route("POST", r"/_control/rate", "control.rate", self._control_rate)
        self.add_route("POST", r"/_control/webhook", "control.webhook", self._control_webhook)

    # -- the deterministic world ---------------------------------------------------------------

    def _rng(self, *parts: int) -> random.Random:
        return random.Random(hash((self.seed, *parts)) & 0xFFFFFFFFFFFF)

    def generated_message_count(self, index: int) -> int:
        """Messages of generated conversation `index`: varied, summing to `messages` exactly."""
        total, count = self.message_total, self.conversation_total
        base, remainder = divmod(total, count) if count else (0, 0)
        value = base + (1 if index < remainder else 0)
        pair = index // 2
        if base > 1 and not (count % 2 == 1 and index == count - 1):
            swing = self._rng(pair, 1).randrange(base)  # moved from one of a pair to the other
            value += swing if index % 2 == 0 else -swing
        return value

    def generated_conversation(self, index: int) -> SimConversation:
        rng = self._rng(index, 2)
        key = f"t_{self.seed}{index:09d}"
        updated = GENERATED_UNTIL - index * CONVERSATION_SPACING_S - rng.randrange(30)
        return SimConversation(
            key=key,
            psid=str(6_100_000_000_000 + self.seed * 10_000_000 + index),
            name=f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}",
            updated=updated,
            base_count=self.generated_message_count(index),
            generated_index=index,
        )

    def generated_message(self, conversation: SimConversation, position: int) -> SimMessage:
        """Message `position` (0 = oldest) of a generated conversation."""
        index = conversation.generated_index
        assert index is not None
        rng = self._rng(index, 3, position)
        gap = 60 + self._rng(index, 4).randrange(3_600)
        created = conversation.updated - (conversation.base_count - 1 - position) * gap
        from_page = position % 3 == 1
        attachments = []
        if position % 7 == 3:
            attachments = [
                {
                    "id": f"{index}{position}",
                    "mime_type": "image/jpeg",
                    "name": f"photo_{position}.jpg",
                    "size": 1000 + rng.randrange(90_000),
                    "image_data": {
                        "url": f"https://scontent.example/{index}/{position}.jpg?oe=expiring",
                        "preview_url": f"https://scontent.example/{index}/{position}_p.jpg",
                        "width": 640,
                        "height": 480,
                    },
                }
            ]
        text = " ".join(rng.choice(WORDS) for _ in range(1 + rng.randrange(8)))
        return SimMessage(
            mid=f"m_{self.seed}_{index}_{position}",
            created=created,
            from_page=from_page,
            text="" if attachments and position % 2 else text,
            attachments=attachments,
            reply_to=f"m_{self.seed}_{index}_{position - 1}" if position % 11 == 5 else None,
        )

    def _conversation(self, key: str) -> SimConversation | None:
        if key in self._deleted:
            return None
        if key in self._added_conversations:
            return self._added_conversations[key]
        prefix = f"t_{self.seed}"
        digits = key[len(prefix) :]
        if not key.startswith(prefix) or not digits.isdigit() or len(digits) != 9:
            return None
        index = int(digits)
        if index >= self.conversation_total:
            return None
        conversation = self.generated_conversation(index)
        if key in self._bumped:
            conversation.updated = self._bumped[key]
        return conversation

    def _message_window(
        self, conversation: SimConversation, *, skip_newest: int, limit: int
    ) -> tuple[list[SimMessage], int]:
        """Messages newest first, `skip_newest` from the newest end; and the total count.

        Generated messages are produced only for the window asked for (a conversation may
        hold thousands).
        """
        added = self._added_messages.get(conversation.key, [])
        total = conversation.base_count + len(added)
        window: list[SimMessage] = []
        for offset in range(skip_newest, min(total, skip_newest + limit)):
            position = total - 1 - offset  # 0 = oldest
            if position >= conversation.base_count:
                window.append(added[position - conversation.base_count])
            else:
                window.append(self.generated_message(conversation, position))
        return window, total

    def _ordered_keys_after(self, cursor: str | None, limit: int) -> tuple[list[str], bool]:
        """Up to `limit` live conversation keys after the cursor, newest-updated first."""
        with self.lock:
            bumped = sorted(
                (
                    (updated, key)
                    for key, updated in self._bumped.items()
                    if key not in self._deleted
                ),
                reverse=True,
            )
            deleted = set(self._deleted)
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
                raise _graph_error(100, "Invalid cursor", status=400)
        for _, key in bumped:
            if len(keys) > limit:
                break
            keys.append(key)
        index = start_index
        while len(keys) <= limit and index < self.conversation_total:
            key = f"t_{self.seed}{index:09d}"
            if key not in deleted and key not in self._bumped:
                keys.append(key)
            index += 1
        has_more = len(keys) > limit
        return keys[:limit], has_more

    def _cursor_for(self, conversation: SimConversation) -> str:
        if conversation.key in self._bumped:
            return _encode_cursor(f"b:{conversation.updated}:{conversation.key}")
        return _encode_cursor(f"i:{conversation.generated_index}")

    # -- request plumbing --------------------------------------------------------------------

    def _authorise(self, request: SimRequest) -> None:
        token = request.query.get("access_token")
        authorization = request.headers.get("authorization", "")
        if token is None and authorization.lower().startswith("bearer "):
            token = authorization[7:].strip()
        if not token or token != self.access_token:
            raise _graph_error(
                190,
                "Error validating access token: The session has been invalidated.",
                status=400,
                error_subcode=460,
            )

    def _usage(self, page_id: str, *, record: bool = True) -> tuple[dict[str, str], bool]:
        """Record this call (unless `record` is off); the usage headers and whether the caller
        is over its rate."""
        now = time.monotonic()
        with self.lock:
            if record:
                self._calls.append(now)
            while self._calls and self._calls[0] <= now - self.rate_window_s:
                self._calls.popleft()
            in_window = len(self._calls)
            oldest = self._calls[0] if self._calls else now
        over = bool(self.rate_limit) and in_window > self.rate_limit
        regain_minutes = math.ceil(max(0.0, oldest + self.rate_window_s - now) / 60) if over else 0
        return self._usage_headers(page_id, in_window, regain_minutes), over

    def _guarded(self, request: SimRequest, page_id: str) -> dict[str, str]:
        headers, over = self._usage(page_id)
        if over:
            raise SimulatorError(
                400,
                {
                    "error": {
                        "message": THROTTLE_MESSAGES[self.throttle_code],
                        "type": "OAuthException",
                        "code": self.throttle_code,
                        "is_transient": True,
                        "fbtrace_id": "SimThrottled",
                    }
                },
            )
        self._authorise(request)
        return headers

    def dispatch(self, request: SimRequest) -> SimResponse:
        response = super().dispatch(request)
        if not request.path.startswith("/_control/") and "X-App-Usage" not in response.headers:
            # Errors (throttling, 190, faults) carry the usage headers too, as Meta's do.
            headers, _ = self._usage(self.page_id, record=False)
            response.headers.update(headers)
        return response

    def _usage_headers(self, page_id: str, in_window: int, regain_minutes: int) -> dict[str, str]:
        """Meta's usage headers: percentages of the quota (the configured rate, or a nominal
        10,000 calls per window when unlimited), and minutes until access is regained."""
        quota = self.rate_limit or 10_000
        percent = min(100, math.ceil(in_window * 100 / quota))
        return {
            "X-App-Usage": json.dumps(
                {"call_count": percent, "total_time": percent // 2, "total_cputime": percent // 3}
            ),
            "X-Business-Use-Case-Usage": json.dumps(
                {
                    page_id: [
                        {
                            "type": "pages",
                            "call_count": percent,
                            "total_cputime": percent // 3,
                            "total_time": percent // 2,
                            "estimated_time_to_regain_access": regain_minutes,
                        }
                    ]
                }
            ),
        }

    def fault_response(self, request: SimRequest) -> SimResponse:
        return SimResponse(
            500,
            {
                "error": {
                    "message": "An unexpected error has occurred. Please retry your request later.",
                    "type": "OAuthException",
                    "code": 2,
                    "is_transient": True,
                    "fbtrace_id": "SimFault",
                }
            },
        )

    def _maybe_drift(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.drift_rate <= 0:
            return body
        with self.lock:
            if self._drift_random.random() >= self.drift_rate:
                return body
            variant = self._drift_random.randrange(4)
        drifted = json.loads(json.dumps(body))
        items = drifted.get("data")
        if not isinstance(items, list) or not items:
            return {"result": drifted}  # the envelope itself renamed
        first = items[0]
        if variant == 0 and "updated_time" in first:
            first["updated_time"] = int(time.time())  # epoch number instead of a string
        elif variant == 1 and "participants" in first:
            first["participants"] = first["participants"]["data"]  # list without its envelope
        elif variant == 2:
            first.pop("id", None)  # a node without its id
        else:
            drifted["items"] = drifted.pop("data")  # envelope key renamed
        return drifted

    def _next_url(self, request: SimRequest, path: str, after: str) -> str:
        host = request.headers.get("host", "127.0.0.1")
        version = request.params.get("version") or ""
        query = {key: value for key, value in request.query.items() if key != "before"}
        query["after"] = after
        return f"http://{host}{version}{path}?{urlencode(query)}"

    @staticmethod
    def _limit(request: SimRequest) -> int:
        raw = request.query.get("limit", str(DEFAULT_LIMIT))
        if not raw.isdigit() or int(raw) < 1:
            raise _graph_error(100, "(#100) The parameter limit must be a positive integer")
        return min(int(raw), MAX_LIMIT)

    @staticmethod
    def _fields(request: SimRequest, default: str) -> dict[str, FieldSpec]:
        try:
            return fields_parse(request.query.get("fields") or default)
        except FieldsInvalid as error:
            raise _graph_error(100, f"(#100) {error}") from error

    # -- rendering ------------------------------------------------------------------------------

    def _participant(self, conversation: SimConversation) -> dict[str, str]:
        return {
            "id": conversation.psid,
            "name": conversation.name,
            "email": f"{conversation.psid}@facebook.com",
        }

    def _page_participant(self) -> dict[str, str]:
        return {
            "id": self.page_id,
            "name": self.page_name,
            "email": f"{self.page_id}@facebook.com",
        }

    def _render_message(
        self, conversation: SimConversation, message: SimMessage, fields: dict[str, FieldSpec]
    ) -> dict[str, Any]:
        person, page = self._participant(conversation), self._page_participant()
        sender, recipient = (page, person) if message.from_page else (person, page)
        available: dict[str, Any] = {
            "id": message.mid,
            "created_time": _graph_time(message.created),
            "from": sender,
            "to": {"data": [recipient]},
            "message": message.text,
        }
        if message.attachments:
            available["attachments"] = {"data": message.attachments}
        if message.reply_to:
            available["reply_to"] = {"mid": message.reply_to, "is_self_reply": False}
        return {name: available[name] for name in fields if name in available}

    def _render_conversation(
        self, conversation: SimConversation, fields: dict[str, FieldSpec], request: SimRequest
    ) -> dict[str, Any]:
        total = conversation.base_count + len(self._added_messages.get(conversation.key, []))
        rendered: dict[str, Any] = {}
        for name, spec in fields.items():
            if name == "id":
                rendered["id"] = conversation.key
            elif name == "updated_time":
                rendered["updated_time"] = _graph_time(conversation.updated)
            elif name == "message_count":
                rendered["message_count"] = total
            elif name == "unread_count":
                rendered["unread_count"] = 1 if (conversation.generated_index or 0) % 3 == 0 else 0
            elif name == "link":
                rendered["link"] = f"/{self.page_id}/inbox/{conversation.key}"
            elif name == "can_reply":
                rendered["can_reply"] = True
            elif name == "snippet":
                newest, _ = self._message_window(conversation, skip_newest=0, limit=1)
                rendered["snippet"] = newest[0].text[:100] if newest else ""
            elif name == "participants":
                rendered["participants"] = {
                    "data": [self._participant(conversation), self._page_participant()]
                }
            elif name == "messages":
                sub = spec.subfields or {"id": FieldSpec(), "created_time": FieldSpec()}
                limit = min(spec.limit or DEFAULT_LIMIT, MAX_LIMIT)
                window, count = self._message_window(conversation, skip_newest=0, limit=limit)
                rendered["messages"] = self._message_page(
                    conversation, window, count, 0, sub, request, nested=True
                )
        return rendered

    def _message_page(
        self,
        conversation: SimConversation,
        window: list[SimMessage],
        total: int,
        skipped: int,
        fields: dict[str, FieldSpec],
        request: SimRequest,
        *,
        nested: bool = False,
    ) -> dict[str, Any]:
        # Cursors count from the oldest message: adding newer messages does not shift them.
        body: dict[str, Any] = {
            "data": [self._render_message(conversation, item, fields) for item in window]
        }
        if window:
            first_position = total - 1 - skipped
            last_position = total - skipped - len(window)
            paging: dict[str, Any] = {
                "cursors": {
                    "before": _encode_cursor(f"m:{first_position}"),
                    "after": _encode_cursor(f"m:{last_position}"),
                }
            }
            if last_position > 0 and not nested:
                paging["next"] = self._next_url(
                    request, f"/{conversation.key}/messages", paging["cursors"]["after"]
                )
            elif last_position > 0:
                paging["next"] = (
                    f"http://{request.headers.get('host', '127.0.0.1')}"
                    f"{request.params.get('version') or ''}/{conversation.key}/messages?"
                    + urlencode(
                        {
                            "access_token": request.query.get("access_token", ""),
                            "limit": str(len(window)),
                            "after": paging["cursors"]["after"],
                        }
                    )
                )
            body["paging"] = paging
        return body

    # -- edges ----------------------------------------------------------------------------------

    def _check_page(self, page_id: str) -> None:
        if page_id != self.page_id:
            raise _graph_error(
                100,
                f"(#100) Unsupported get request. Object with ID '{page_id}' does not exist",
            )

    def _page_node(self, request: SimRequest) -> SimResponse:
        page_id = request.params["page_id"]
        headers = self._guarded(request, page_id)
        self._check_page(page_id)
        return SimResponse(200, {"id": self.page_id, "name": self.page_name}, headers)

    def _conversations(self, request: SimRequest) -> SimResponse:
        page_id = request.params["page_id"]
        headers = self._guarded(request, page_id)
        self._check_page(page_id)
        limit = self._limit(request)
        fields = self._fields(request, "id,updated_time")
        after = request.query.get("after")
        cursor = _decode_cursor(after) if after else None
        try:
            keys, has_more = self._ordered_keys_after(cursor, limit)
        except ValueError as error:
            raise _graph_error(100, "Invalid cursor") from error
        with self.lock:
            conversations = [c for c in (self._conversation(key) for key in keys) if c]
        data = [self._render_conversation(c, fields, request) for c in conversations]
        body: dict[str, Any] = {"data": data}
        if conversations:
            cursors = {
                "before": self._cursor_for(conversations[0]),
                "after": self._cursor_for(conversations[-1]),
            }
            body["paging"] = {"cursors": cursors}
            if has_more:
                body["paging"]["next"] = self._next_url(
                    request, f"/{page_id}/conversations", cursors["after"]
                )
                self._maybe_churn(conversations[-1])
        return SimResponse(200, self._maybe_drift(body), headers)

    def _maybe_churn(self, last_served: SimConversation) -> None:
        """With `churn_rate`, change a generated conversation not yet served in this walk."""
        if self.churn_rate <= 0 or last_served.generated_index is None:
            return
        with self.lock:
            if self._churn_random.random() >= self.churn_rate:
                return
            remaining = self.conversation_total - last_served.generated_index - 1
            if remaining <= 0:
                return
            index = last_served.generated_index + 1 + self._churn_random.randrange(remaining)
            is_delete = self._churn_random.random() < 0.3
        key = f"t_{self.seed}{index:09d}"
        if self._conversation(key) is None:
            return
        if is_delete:
            with self.lock:
                self._deleted.add(key)
                self.churned.append(("deleted", key))
        else:
            self.message_add(thread_id=key, text="arrived while you were paging")
            with self.lock:
                self.churned.append(("bumped", key))

    def _conversation_node(self, request: SimRequest) -> SimResponse:
        headers = self._guarded(request, self.page_id)
        conversation = self._conversation_or_error(request.params["thread_id"])
        fields = self._fields(request, "id,updated_time")
        return SimResponse(200, self._render_conversation(conversation, fields, request), headers)

    def _messages(self, request: SimRequest) -> SimResponse:
        headers = self._guarded(request, self.page_id)
        conversation = self._conversation_or_error(request.params["thread_id"])
        limit = self._limit(request)
        fields = self._fields(request, "id,created_time")
        total = conversation.base_count + len(self._added_messages.get(conversation.key, []))
        skipped = 0
        after = request.query.get("after")
        if after:
            kind, _, value = _decode_cursor(after).partition(":")
            if kind != "m" or not value.isdigit():
                raise _graph_error(100, "Invalid cursor")
            skipped = total - int(value)  # everything at or newer than the cursor's message
        window, total = self._message_window(conversation, skip_newest=skipped, limit=limit)
        body = self._message_page(conversation, window, total, skipped, fields, request)
        return SimResponse(200, self._maybe_drift(body), headers)

    def _conversation_or_error(self, key: str) -> SimConversation:
        with self.lock:
            conversation = self._conversation(key)
        if conversation is None:
            raise _graph_error(
                100, f"(#100) Unsupported get request. Object with ID '{key}' does not exist"
            )
        return conversation

    # -- control --------------------------------------------------------------------------------

    def _tick(self) -> float:
        """A strictly increasing time for run-time changes, newer than anything generated."""
        with self.lock:
            self._clock = max(self._clock + 1, time.time())
            return self._clock

    def _control_state(self, request: SimRequest) -> SimResponse:
        with self.lock:
            return SimResponse(
                200,
                {
                    "page_id": self.page_id,
                    "conversations": self.conversation_total
                    + len(self._added_conversations)
                    - len(self._deleted),
                    "generated_conversations": self.conversation_total,
                    "generated_messages": self.message_total,
                    "added_messages": sum(len(v) for v in self._added_messages.values()),
                    "deleted": sorted(self._deleted),
                    "seed": self.seed,
                    "rate_limit": self.rate_limit,
                    "rate_window_s": self.rate_window_s,
                    "throttle_code": self.throttle_code,
                    "drift_rate": self.drift_rate,
                    "churn_rate": self.churn_rate,
                    "churned": self.churned[-100:],
                    "webhook_target": self.webhook_target,
                },
            )

    def message_add(
        self, *, thread_id: str, text: str, from_page: bool = False
    ) -> tuple[SimConversation, SimMessage]:
        with self.lock:
            conversation = self._conversation(thread_id)
            if conversation is None:
                raise SimulatorError(404, {"error": f"no conversation {thread_id}"})
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

    def _control_messages(self, request: SimRequest) -> SimResponse:
        values = request.json() or {}
        thread_id = values.get("conversation")
        if not isinstance(thread_id, str):
            raise SimulatorError(400, {"error": "conversation (a thread id) is required"})
        count = values.get("count", 1)
        if not isinstance(count, int) or not 1 <= count <= 1_000:
            raise SimulatorError(400, {"error": "count must be 1..1000"})
        added = [
            self.message_add(
                thread_id=thread_id,
                text=str(values.get("text", "hello")),
                from_page=bool(values.get("from_page", False)),
            )
            for _ in range(count)
        ]
        webhook_status = self.webhook_emit(added) if self.webhook_target else None
        return SimResponse(
            201,
            {"mids": [message.mid for _, message in added], "webhook_status": webhook_status},
        )

    def _control_add(self, request: SimRequest) -> SimResponse:
        values = request.json() or {}
        with self.lock:
            self._sequence += 1
            sequence = self._sequence
        key = f"t_{self.seed}live{sequence}"
        psid = str(values.get("psid") or 6_900_000_000_000 + self.seed * 10_000_000 + sequence)
        conversation = SimConversation(
            key=key,
            psid=psid,
            name=str(values.get("name", "New Person")),
            updated=self._tick(),
            base_count=0,
            generated_index=None,
        )
        with self.lock:
            self._added_conversations[key] = conversation
            self._bumped[key] = conversation.updated
        added = [
            self.message_add(thread_id=key, text=f"message {n}")
            for n in range(int(values.get("messages", 1)))
        ]
        webhook_status = self.webhook_emit(added) if self.webhook_target and added else None
        return SimResponse(201, {"id": key, "psid": psid, "webhook_status": webhook_status})

    def _control_delete(self, request: SimRequest) -> SimResponse:
        key = request.params["thread_id"]
        with self.lock:
            if self._conversation(key) is None:
                raise SimulatorError(404, {"error": f"no conversation {key}"})
            self._deleted.add(key)
        return SimResponse(200, {"deleted": key})

    def _control_token(self, request: SimRequest) -> SimResponse:
        values = request.json() or {}
        token = values.get("access_token")
        if not isinstance(token, str):
            raise SimulatorError(400, {"error": "access_token (a string) is required"})
        self.access_token = token
        return SimResponse(200, {"access_token_set": True})

    def _control_rate(self, request: SimRequest) -> SimResponse:
        values = request.json() or {}
        if "limit" in values:
            if not isinstance(values["limit"], int) or values["limit"] < 0:
                raise SimulatorError(400, {"error": "limit must be a non-negative integer"})
            self.rate_limit = values["limit"]
        if "window_seconds" in values:
            self.rate_window_s = float(values["window_seconds"])
        if "throttle_code" in values:
            if values["throttle_code"] not in THROTTLE_MESSAGES:
                raise SimulatorError(400, {"error": "unknown throttle code"})
            self.throttle_code = values["throttle_code"]
        if values.get("clear"):
            with self.lock:
                self._calls.clear()
        return SimResponse(
            200,
            {
                "limit": self.rate_limit,
                "window_seconds": self.rate_window_s,
                "throttle_code": self.throttle_code,
            },
        )

    def _control_webhook(self, request: SimRequest) -> SimResponse:
        values = request.json() or {}
        target = values.get("target_url")
        if target is not None and not isinstance(target, str):
            raise SimulatorError(400, {"error": "target_url must be a string or null"})
        self.webhook_target = target
        if isinstance(values.get("app_secret"), str):
            self.app_secret = values["app_secret"]
        return SimResponse(200, {"target_url": self.webhook_target})

    def webhook_document_for(
        self, added: list[tuple[SimConversation, SimMessage]]
    ) -> dict[str, Any]:
        events = [
            message_event(
                page_id=self.page_id,
                psid=conversation.psid,
                mid=message.mid,
                timestamp_ms=int(message.created * 1000),
                text=message.text,
                is_echo=message.from_page,
            )
            for conversation, message in added
        ]
        return webhook_document(self.page_id, events)

    def webhook_emit(self, added: list[tuple[SimConversation, SimMessage]]) -> int:
        """POST one signed payload with these messages to the target; returns the status."""
        assert self.webhook_target
        body, headers = signed_body(self.webhook_document_for(added), secret=self.app_secret)
        outgoing = urllib.request.Request(
            self.webhook_target, data=body, headers=headers, method="POST"
        )
        with self._webhook_lock:
            try:
                with urllib.request.urlopen(outgoing, timeout=20) as response:  # noqa: S310
                    return int(response.status)
            except urllib.error.HTTPError as error:
                return int(error.code)
            except OSError:
                return 0
