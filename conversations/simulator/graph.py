"""A Graph API simulator for Messenger conversations (docs/graph-api.md is its contract).

It serves one or more Facebook Pages; each is a `PageWorld` (world.py): deterministic from its
seed and lazy, with its own token, run-time overlays and rate window. `/{page-id}/...` goes to
that page, `/{thread-id}...` to the page owning the thread.

Served edges (an optional `/vNN.N` prefix is accepted, as in `GRAPH_API_BASE_URL`):

- `GET /{page-id}`: the page node (`id`, `name`);
- `GET /{page-id}/conversations`: one `folder` (`inbox` when absent, `other`, `page_done`,
  `spam`), newest-updated first, `limit` (default 25, at most 100), `after` cursor,
  `paging.cursors` and `paging.next` (absent on the last page), `fields` with nested
  `messages.limit(n){...}` and `participants`; `platform=messenger` is accepted;
- `GET /{conversation-id}/messages`: newest first, same paging;
- `GET /{conversation-id}`: the conversation node.

Every answer carries `X-App-Usage` and `X-Business-Use-Case-Usage` computed from the page's
sliding window of calls; past the page's rate, calls fail with its throttling code (4, 32, 613,
80001 or 80006) until the window drains (calls while blocked keep it full, as Meta warns). A
wrong token is error 190. Faults: server errors (`fault_rate`), slowness, truncated JSON
(`malformed_rate`), shape drift (`drift_rate`: fields renamed or retyped) and churn
(`churn_rate`: after a conversations page is served, a conversation further down the list gets
a new message, jumping to the top, or is deleted, so a walk sees the list change between its
pages).

Control routes under `/_control/` (control.py) change the simulator while it runs. Every
served Graph call is also recorded per page with its time (`pages` in `GET /_control/counters`),
so tests can check a client's pace per page. Error bodies, cursors, query parameters, usage
headers and drifted shapes are in wire.py.

It stays one module a little past ~500 lines: what is left is the request routing and the
handler of each served edge, which share the page lookup, the token check and the rate window;
the control API (control.py), the answer shapes (wire.py, bodies.py) and the data (world.py)
already live apart.
"""

from __future__ import annotations

import json
import random
import threading
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

from conversations.simulator.bodies import conversation_json, message_page_json, next_url
from conversations.simulator.calls import PageCalls, calls_max_in_window
from conversations.simulator.control import GraphControl
from conversations.simulator.payloads import message_event, signed_body, webhook_document
from conversations.simulator.render import Participant, json_compact
from conversations.simulator.wire import (
    THROTTLE_MESSAGES,
    decode_cursor,
    drifted,
    encode_cursor,
    fault,
    fields_param,
    folder_param,
    graph_error,
    limit_param,
    not_found,
    throttled,
    token_invalid,
    usage_headers,
)
from conversations.simulator.world import (
    FOLDERS,
    GENERATED_UNTIL,
    PageWorld,
    SimConversation,
    SimMessage,
)
from devtools.simulator import Faults, Route, SimRequest, SimResponse, Simulator, SimulatorError

__all__ = [
    "DEFAULT_ACCESS_TOKEN",
    "DEFAULT_PAGE_ID",
    "FOLDERS",
    "GENERATED_UNTIL",
    "THROTTLE_MESSAGES",
    "GraphSimulator",
    "PageWorld",
    "SimConversation",
    "SimMessage",
]

VERSION_PREFIX = r"(?P<version>/v\d+\.\d+)?"
DEFAULT_PAGE_ID = "111222333"
DEFAULT_ACCESS_TOKEN = "sim-page-token"


class GraphSimulator(Simulator):
    """The Graph API for one or more pages.

    The constructor's page arguments make the first page; `extra_pages` adds more (a count:
    pages `page_id+1...` with seeds `seed+1...`, the same sizes and tokens
    `<access_token>-<page id>`; or a list of `page_add` keyword arguments), as does `page_add`.
    Rate and folder settings given here are the defaults of every page.
    """

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
        other_folder_share: float = 0.0,
        extra_pages: int | Sequence[Mapping[str, Any]] = 0,
    ) -> None:
        super().__init__(faults=faults or Faults(seed=seed))
        self.drift_rate = drift_rate
        self.churn_rate = churn_rate
        self.webhook_target = webhook_target
        self.app_secret = app_secret
        self.page_calls = PageCalls()
        self.pages: dict[str, PageWorld] = {}
        self._pages_by_seed: dict[str, PageWorld] = {}
        self._page_participants: dict[str, Participant] = {}
        self._page_defaults: dict[str, Any] = {
            "rate_limit": rate_limit,
            "rate_window_s": rate_window_s,
            "throttle_code": throttle_code,
            "other_folder_share": other_folder_share,
        }
        self._drift_random = random.Random(seed * 7919 + 1)
        self._churn_random = random.Random(seed * 7919 + 2)
        self._webhook_lock = threading.Lock()
        self._first = self.page_add(
            page_id=page_id,
            name=page_name,
            seed=seed,
            conversations=conversations,
            messages=messages,
            access_token=access_token,
        )
        if isinstance(extra_pages, int):
            for number in range(1, extra_pages + 1):
                extra_id = str(int(page_id) + number)
                self.page_add(
                    page_id=extra_id,
                    name=f"{page_name} {number + 1}",
                    seed=seed + number,
                    conversations=conversations,
                    messages=messages,
                    access_token=f"{access_token}-{extra_id}",
                )
        else:
            for options in extra_pages:
                self.page_add(**options)

        page = f"{VERSION_PREFIX}/(?P<page_id>[0-9]+)"
        thread = f"{VERSION_PREFIX}/(?P<thread_id>t_[A-Za-z0-9_-]+)"
        self.add_route("GET", page, "page", self._page_node)
        self.add_route("GET", f"{page}/conversations", "conversations", self._conversations)
        self.add_route("GET", thread, "conversation", self._conversation_node)
        self.add_route("GET", f"{thread}/messages", "messages", self._messages)
        GraphControl(self).routes_add()

    # -- pages -----------------------------------------------------------------------------------

    def page_add(
        self,
        *,
        page_id: str,
        seed: int,
        conversations: int = 50,
        messages: int = 500,
        access_token: str | None = None,
        name: str | None = None,
        other_folder_share: float | None = None,
        rate_limit: int | None = None,
        rate_window_s: float | None = None,
        throttle_code: int | None = None,
    ) -> PageWorld:
        """Serve one more page. Seeds must differ: thread ids, mids and PSIDs contain them."""
        page_id = str(page_id)
        defaults = self._page_defaults
        throttle_code = defaults["throttle_code"] if throttle_code is None else throttle_code
        if throttle_code not in THROTTLE_MESSAGES:
            raise ValueError(f"throttle_code must be one of {sorted(THROTTLE_MESSAGES)}")
        with self.lock:
            if page_id in self.pages:
                raise ValueError(f"page {page_id} is already served")
            if str(seed) in self._pages_by_seed:
                raise ValueError(f"seed {seed} is already used by another page")
            world = PageWorld(
                page_id=page_id,
                name=name if name is not None else f"Simulated Page {page_id}",
                seed=seed,
                conversations=conversations,
                messages=messages,
                access_token=access_token or f"{DEFAULT_ACCESS_TOKEN}-{page_id}",
                other_folder_share=defaults["other_folder_share"]
                if other_folder_share is None
                else other_folder_share,
                rate_limit=defaults["rate_limit"] if rate_limit is None else rate_limit,
                rate_window_s=defaults["rate_window_s"] if rate_window_s is None else rate_window_s,
                throttle_code=throttle_code,
                lock=self.lock,
            )
            self.pages[page_id] = world
            self._page_participants[page_id] = Participant(participant_id=page_id, name=world.name)
            self._pages_by_seed[str(seed)] = world
        return world

    def page(self, page_id: str | None = None) -> PageWorld:
        """The page `page_id` (the first page when None); KeyError if it is not served."""
        return self._first if page_id is None else self.pages[str(page_id)]

    def page_of_thread(self, thread_id: str) -> PageWorld | None:
        """The page whose seed the thread id carries (`t_<seed><index>` or `t_<seed>live<n>`)."""
        body = thread_id[2:]
        seed_text = body.partition("live")[0] if "live" in body else body[:-9]
        world = self._pages_by_seed.get(seed_text)
        return world if world is not None and world.owns(thread_id) else None

    def truth(self, page_id: str | None = None) -> dict[str, Any]:
        """Every live conversation of the page with every message, and the deleted thread ids.

        Materialises the page's whole world: for worlds of up to a few thousand messages.
        """
        return self.page(page_id).truth()

    def page_call_times(self, page_id: str | None = None) -> list[float]:
        """Arrival times (epoch seconds) of every served Graph call to the page."""
        return self.page_calls.times(self.page(page_id).page_id)

    def page_calls_max_in_window(self, page_id: str | None = None, window_s: float = 1.0) -> int:
        """The most Graph calls to the page within any sliding window of `window_s` seconds."""
        return calls_max_in_window(self.page_call_times(page_id), window_s)

    # The first page's settings, under the names callers of the one-page simulator know.

    @property
    def page_id(self) -> str:
        return self._first.page_id

    @property
    def page_name(self) -> str:
        return self._first.name

    @property
    def seed(self) -> int:
        return self._first.seed

    @property
    def conversation_total(self) -> int:
        return self._first.conversation_total

    @property
    def message_total(self) -> int:
        return self._first.message_total

    @property
    def access_token(self) -> str:
        return self._first.access_token

    @access_token.setter
    def access_token(self, value: str) -> None:
        self._first.access_token = value

    @property
    def rate_limit(self) -> int:
        return self._first.rate_limit

    @rate_limit.setter
    def rate_limit(self, value: int) -> None:
        self._first.rate_limit = value

    @property
    def rate_window_s(self) -> float:
        return self._first.rate_window_s

    @rate_window_s.setter
    def rate_window_s(self, value: float) -> None:
        self._first.rate_window_s = value

    @property
    def throttle_code(self) -> int:
        return self._first.throttle_code

    @throttle_code.setter
    def throttle_code(self, value: int) -> None:
        self._first.throttle_code = value

    @property
    def churned(self) -> list[tuple[str, str]]:
        return self._first.churned

    def generated_message_count(self, index: int) -> int:
        return self._first.generated_message_count(index)

    def generated_conversation(self, index: int) -> SimConversation:
        return self._first.generated_conversation(index)

    def generated_message(self, conversation: SimConversation, position: int) -> SimMessage:
        world = self.pages.get(conversation.page_id, self._first)
        return world.generated_message(conversation, position)

    # -- request plumbing --------------------------------------------------------------------

    def _request_page(self, request: SimRequest) -> PageWorld | None:
        """The page a Graph request is for, from its path; None when no page serves it."""
        if "page_id" in request.params:
            return self.pages.get(request.params["page_id"])
        if "thread_id" in request.params:
            return self.page_of_thread(request.params["thread_id"])
        return None

    def call_received(self, route: Route, request: SimRequest) -> None:
        world = self._request_page(request)
        if world is not None:
            self.page_calls.record(world.page_id, route.endpoint)

    def _authorise(self, request: SimRequest, world: PageWorld) -> None:
        token = request.query.get("access_token")
        authorization = request.headers.get("authorization", "")
        if token is None and authorization.lower().startswith("bearer "):
            token = authorization[7:].strip()
        if not token or token != world.access_token:
            raise token_invalid()

    def _guarded(self, request: SimRequest, world: PageWorld) -> dict[str, str]:
        """Count the call in the page's window; throttle past its rate; check the token."""
        in_window, regain_minutes, over = world.usage(record=True)
        if over:
            raise throttled(world.throttle_code)
        self._authorise(request, world)
        return usage_headers(world, in_window, regain_minutes)

    def dispatch(self, request: SimRequest) -> SimResponse:
        response = super().dispatch(request)
        if not request.path.startswith("/_control/") and "X-App-Usage" not in response.headers:
            # Errors (throttling, 190, faults) carry the usage headers too, as Meta's do.
            world = self._request_page(request) or self._first
            in_window, regain_minutes, _ = world.usage(record=False)
            response.headers.update(usage_headers(world, in_window, regain_minutes))
        return response

    def fault_response(self, request: SimRequest) -> SimResponse:
        return fault()

    def _json_response(self, text: str, headers: dict[str, str]) -> SimResponse:
        """A 200 with this JSON text; with `drift_rate`, sometimes in a drifted shape."""
        if self.drift_rate <= 0:
            return SimResponse(200, raw=text.encode(), headers=headers)
        with self.lock:
            if self._drift_random.random() >= self.drift_rate:
                return SimResponse(200, raw=text.encode(), headers=headers)
            variant = self._drift_random.randrange(4)
        return SimResponse(200, drifted(json.loads(text), variant), headers)

    # -- edges ----------------------------------------------------------------------------------

    def _served_page(self, request: SimRequest) -> tuple[PageWorld, dict[str, str]]:
        page_id = request.params["page_id"]
        world = self.pages.get(page_id)
        if world is None:
            # No such page: throttle and authorise against the first page, as before.
            self._guarded(request, self._first)
            raise not_found(page_id)
        return world, self._guarded(request, world)

    def _page_node(self, request: SimRequest) -> SimResponse:
        world, headers = self._served_page(request)
        return SimResponse(200, {"id": world.page_id, "name": world.name}, headers)

    def _conversations(self, request: SimRequest) -> SimResponse:
        world, headers = self._served_page(request)
        limit = limit_param(request)
        fields = fields_param(request, "id,updated_time")
        folder = folder_param(request)
        after = request.query.get("after")
        cursor = decode_cursor(after) if after else None
        try:
            keys, has_more = world.ordered_keys_after(cursor, limit, folder)
        except ValueError as error:
            raise graph_error(100, "Invalid cursor") from error
        with self.lock:
            conversations = [c for c in (world.conversation(key) for key in keys) if c]
            cursors = (
                {
                    "before": encode_cursor(world.cursor_value(conversations[0])),
                    "after": encode_cursor(world.cursor_value(conversations[-1])),
                }
                if conversations
                else {}
            )
        data = ",".join(
            conversation_json(world, self._page_participants[world.page_id], c, fields, request)
            for c in conversations
        )
        if not conversations:
            return self._json_response(f'{{"data":[{data}]}}', headers)
        paging: dict[str, Any] = {"cursors": cursors}
        if has_more:
            paging["next"] = next_url(request, f"/{world.page_id}/conversations", cursors["after"])
            self._maybe_churn(world, conversations[-1])
        return self._json_response(f'{{"data":[{data}],"paging":{json_compact(paging)}}}', headers)

    def _maybe_churn(self, world: PageWorld, last_served: SimConversation) -> None:
        """With `churn_rate`, change a generated conversation not yet served in this walk."""
        if self.churn_rate <= 0 or last_served.generated_index is None:
            return
        with self.lock:
            if self._churn_random.random() >= self.churn_rate:
                return
            remaining = world.conversation_total - last_served.generated_index - 1
            if remaining <= 0:
                return
            index = last_served.generated_index + 1 + self._churn_random.randrange(remaining)
            is_delete = self._churn_random.random() < 0.3
            key = world.generated_key(index)
            if world.conversation(key) is None:
                return
            if is_delete:
                world.conversation_delete(key, action="deleted")
            else:
                world.message_add(thread_id=key, text="arrived while you were paging")
                world.churned.append(("bumped", key))

    def _served_thread(
        self, request: SimRequest
    ) -> tuple[PageWorld, SimConversation, dict[str, str]]:
        key = request.params["thread_id"]
        world = self.page_of_thread(key)
        headers = self._guarded(request, world or self._first)
        with self.lock:
            conversation = world.conversation(key) if world is not None else None
        if world is None or conversation is None:
            raise not_found(key)
        return world, conversation, headers

    def _conversation_node(self, request: SimRequest) -> SimResponse:
        world, conversation, headers = self._served_thread(request)
        fields = fields_param(request, "id,updated_time")
        return self._json_response(
            conversation_json(
                world, self._page_participants[world.page_id], conversation, fields, request
            ),
            headers,
        )

    def _messages(self, request: SimRequest) -> SimResponse:
        world, conversation, headers = self._served_thread(request)
        limit = limit_param(request)
        fields = fields_param(request, "id,created_time")
        total = world.message_total_of(conversation)
        skipped = 0
        after = request.query.get("after")
        if after:
            kind, _, value = decode_cursor(after).partition(":")
            if kind != "m" or not value.isdigit():
                raise graph_error(100, "Invalid cursor")
            skipped = total - int(value)  # everything at or newer than the cursor's message
        window, total = world.message_window(conversation, skip_newest=skipped, limit=limit)
        page = self._page_participants[world.page_id]
        text = message_page_json(world, page, conversation, window, total, skipped, fields, request)
        return self._json_response(text, headers)

    # -- what the control routes (control.py) and tests use ----------------------------------
    # The base simulator's counters and reset, with the per-page call times added.

    def _counters(self, request: SimRequest) -> SimResponse:
        return SimResponse(
            200, {**self.counters.snapshot(), "pages": self.page_calls.snapshot(list(self.pages))}
        )

    def _reset(self, request: SimRequest) -> SimResponse:
        self.page_calls.reset()
        return super()._reset(request)

    def message_add(
        self, *, thread_id: str, text: str, from_page: bool = False
    ) -> tuple[SimConversation, SimMessage]:
        """Add a message to a live conversation of any page (the thread id names the page)."""
        world = self.page_of_thread(thread_id)
        try:
            if world is None:
                raise LookupError(thread_id)
            return world.message_add(thread_id=thread_id, text=text, from_page=from_page)
        except LookupError as error:
            raise SimulatorError(404, {"error": f"no conversation {thread_id}"}) from error

    def webhook_document_for(
        self, added: list[tuple[SimConversation, SimMessage]]
    ) -> dict[str, Any]:
        """One webhook document for messages of one page (the page of the first message)."""
        page_id = added[0][0].page_id if added else self.page_id
        events = [
            message_event(
                page_id=page_id,
                psid=conversation.psid,
                mid=message.mid,
                timestamp_ms=int(message.created * 1000),
                text=message.text,
                is_echo=message.from_page,
            )
            for conversation, message in added
        ]
        return webhook_document(page_id, events)

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
