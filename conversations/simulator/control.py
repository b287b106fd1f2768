"""The Graph simulator's control API: the `/_control/...` routes that change a running
`GraphSimulator` from outside its process (tests, benchmarks, the `graph_simulator` command).

An optional `page_id`, in the JSON body or the query, picks the page; the first page otherwise.
The routes add messages and conversations, edit a message and react to it (each answers the
webhook event Meta would send, so that a test can deliver it when and as often as it likes),
delete conversations, change a page's token and rate, read a page's state and its truth (every
message, its text, edit count and reactions, that the sync and the webhook must end up with),
and set the target of the signed webhook POSTs sent for new messages. The base simulator's own
control routes (counters, reset, faults) are registered by `devtools.simulator.Simulator`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from conversations.simulator.payloads import edit_event, named_reaction_event
from conversations.simulator.wire import THROTTLE_MESSAGES
from conversations.simulator.world import BAD_PARTICIPANT_KINDS, FOLDER_INBOX, FOLDERS, PageWorld
from devtools.simulator import SimRequest, SimResponse, SimulatorError

if TYPE_CHECKING:
    from conversations.simulator.graph import GraphSimulator


class GraphControl:
    """The control routes of one simulator; `routes_add` registers them on it."""

    def __init__(self, simulator: GraphSimulator) -> None:
        self.simulator = simulator

    def routes_add(self) -> None:
        add_route = self.simulator.add_route
        add_route("GET", r"/_control/state", "control.state", self._state)
        add_route("GET", r"/_control/truth", "control.truth", self._truth)
        add_route("POST", r"/_control/messages", "control.messages", self._messages)
        add_route("POST", r"/_control/edits", "control.edits", self._edit)
        add_route("POST", r"/_control/reactions", "control.reactions", self._react)
        add_route("POST", r"/_control/conversations", "control.conversations", self._add)
        add_route(
            "DELETE",
            r"/_control/conversations/(?P<thread_id>t_[A-Za-z0-9_-]+)",
            "control.conversations.delete",
            self._delete,
        )
        add_route("POST", r"/_control/token", "control.token", self._token)
        add_route("POST", r"/_control/rate", "control.rate", self._rate)
        add_route("POST", r"/_control/webhook", "control.webhook", self._webhook)
        add_route("POST", r"/_control/participants", "control.participants", self._participants)

    # -- what a call names -----------------------------------------------------------------------

    @staticmethod
    def _values(request: SimRequest) -> dict[str, Any]:
        values = request.json() or {}
        if not isinstance(values, dict):
            raise SimulatorError(400, {"error": "expected a JSON object"})
        return values

    def _page(self, request: SimRequest, values: Mapping[str, Any]) -> PageWorld:
        """The page a control call names (`page_id` in the body or the query), else the first."""
        page_id = values.get("page_id", request.query.get("page_id"))
        if page_id is None:
            return self.simulator.page()
        world = self.simulator.pages.get(str(page_id))
        if world is None:
            raise SimulatorError(404, {"error": f"no page {page_id}"})
        return world

    def _thread(self, request: SimRequest, values: Mapping[str, Any], key: str) -> PageWorld:
        """The page owning thread `key`; if the call names a page, the thread must be its."""
        world = self.simulator.page_of_thread(key)
        named = values.get("page_id", request.query.get("page_id"))
        if world is None or (named is not None and str(named) != world.page_id):
            raise SimulatorError(404, {"error": f"no conversation {key}"})
        return world

    # -- routes ----------------------------------------------------------------------------------

    def _state(self, request: SimRequest) -> SimResponse:
        simulator = self.simulator
        world = self._page(request, {})
        return SimResponse(
            200,
            {
                **world.state(),
                "pages": list(simulator.pages),
                "drift_rate": simulator.drift_rate,
                "churn_rate": simulator.churn_rate,
                "webhook_target": simulator.webhook_target,
            },
        )

    def _truth(self, request: SimRequest) -> SimResponse:
        return SimResponse(200, self._page(request, {}).truth())

    def _messages(self, request: SimRequest) -> SimResponse:
        simulator = self.simulator
        values = self._values(request)
        thread_id = values.get("conversation")
        if not isinstance(thread_id, str):
            raise SimulatorError(400, {"error": "conversation (a thread id) is required"})
        count = values.get("count", 1)
        if not isinstance(count, int) or not 1 <= count <= 1_000:
            raise SimulatorError(400, {"error": "count must be 1..1000"})
        self._thread(request, values, thread_id)
        added = [
            simulator.message_add(
                thread_id=thread_id,
                text=str(values.get("text", "hello")),
                from_page=bool(values.get("from_page", False)),
            )
            for _ in range(count)
        ]
        webhook_status = simulator.webhook_emit(added) if simulator.webhook_target else None
        return SimResponse(
            201,
            {"mids": [message.mid for _, message in added], "webhook_status": webhook_status},
        )

    def _message_named(
        self, request: SimRequest, values: Mapping[str, Any]
    ) -> tuple[PageWorld, str, str]:
        thread_id, mid = values.get("conversation"), values.get("mid")
        if not isinstance(thread_id, str) or not isinstance(mid, str):
            raise SimulatorError(400, {"error": "conversation (a thread id) and mid are required"})
        return self._thread(request, values, thread_id), thread_id, mid

    def _edit(self, request: SimRequest) -> SimResponse:
        values = self._values(request)
        world, thread_id, mid = self._message_named(request, values)
        text = values.get("text")
        if not isinstance(text, str):
            raise SimulatorError(400, {"error": "text (a string) is required"})
        try:
            conversation, message, count, edited = world.message_edit(
                thread_id=thread_id, mid=mid, text=text
            )
        except LookupError:
            raise SimulatorError(404, {"error": f"no message {mid} in {thread_id}"}) from None
        timestamp_ms = int(edited * 1000)
        return SimResponse(
            200,
            {
                "mid": mid,
                "text": text,
                "num_edit": count,
                "timestamp_ms": timestamp_ms,
                "event": edit_event(
                    page_id=world.page_id,
                    psid=conversation.psid,
                    mid=mid,
                    timestamp_ms=timestamp_ms,
                    text=text,
                    num_edit=count,
                ),
                "from_page": message.from_page,
            },
        )

    def _react(self, request: SimRequest) -> SimResponse:
        values = self._values(request)
        world, thread_id, mid = self._message_named(request, values)
        action = values.get("action", "react")
        reaction = values.get("reaction", "love")
        emoji = values.get("emoji", "\u2764\ufe0f")
        if action not in ("react", "unreact"):
            raise SimulatorError(400, {"error": "action must be react or unreact"})
        if not isinstance(reaction, str) or not reaction or not isinstance(emoji, str):
            raise SimulatorError(400, {"error": "reaction and emoji must be strings"})
        try:
            conversation, at = world.message_react(
                thread_id=thread_id, mid=mid, reaction=reaction, emoji=emoji, action=action
            )
        except LookupError:
            raise SimulatorError(404, {"error": f"no message {mid} in {thread_id}"}) from None
        timestamp_ms = int(at * 1000)
        return SimResponse(
            200,
            {
                "mid": mid,
                "timestamp_ms": timestamp_ms,
                "event": named_reaction_event(
                    page_id=world.page_id,
                    psid=conversation.psid,
                    mid=mid,
                    timestamp_ms=timestamp_ms,
                    action=action,
                    reaction=reaction,
                    emoji=emoji,
                ),
            },
        )

    def _add(self, request: SimRequest) -> SimResponse:
        simulator = self.simulator
        values = self._values(request)
        world = self._page(request, values)
        folder = values.get("folder", FOLDER_INBOX)
        if folder not in FOLDERS:
            raise SimulatorError(400, {"error": f"folder must be one of {list(FOLDERS)}"})
        conversation = world.conversation_add(
            psid=str(values["psid"]) if values.get("psid") else None,
            name=str(values.get("name", "New Person")),
            folder=folder,
        )
        added = [
            world.message_add(thread_id=conversation.key, text=f"message {n}")
            for n in range(int(values.get("messages", 1)))
        ]
        webhook_status = (
            simulator.webhook_emit(added) if simulator.webhook_target and added else None
        )
        return SimResponse(
            201,
            {
                "id": conversation.key,
                "psid": conversation.psid,
                "page_id": world.page_id,
                "folder": folder,
                "webhook_status": webhook_status,
            },
        )

    def _delete(self, request: SimRequest) -> SimResponse:
        key = request.params["thread_id"]
        world = self._thread(request, {}, key)
        if not world.conversation_delete(key):
            raise SimulatorError(404, {"error": f"no conversation {key}"})
        return SimResponse(200, {"deleted": key, "page_id": world.page_id})

    def _token(self, request: SimRequest) -> SimResponse:
        values = self._values(request)
        world = self._page(request, values)
        token = values.get("access_token")
        if not isinstance(token, str):
            raise SimulatorError(400, {"error": "access_token (a string) is required"})
        world.access_token = token
        return SimResponse(200, {"access_token_set": True, "page_id": world.page_id})

    def _rate(self, request: SimRequest) -> SimResponse:
        values = self._values(request)
        world = self._page(request, values)
        if "limit" in values:
            if not isinstance(values["limit"], int) or values["limit"] < 0:
                raise SimulatorError(400, {"error": "limit must be a non-negative integer"})
            world.rate_limit = values["limit"]
        if "window_seconds" in values:
            world.rate_window_s = float(values["window_seconds"])
        if "throttle_code" in values:
            if values["throttle_code"] not in THROTTLE_MESSAGES:
                raise SimulatorError(400, {"error": "unknown throttle code"})
            world.throttle_code = values["throttle_code"]
        if values.get("clear"):
            world.rate_window_clear()
        return SimResponse(
            200,
            {
                "page_id": world.page_id,
                "limit": world.rate_limit,
                "window_seconds": world.rate_window_s,
                "throttle_code": world.throttle_code,
            },
        )

    def _webhook(self, request: SimRequest) -> SimResponse:
        # One app, one callback URL and secret for every page, as on Meta: a `page_id` is
        # checked but the setting is the app's.
        simulator = self.simulator
        values = self._values(request)
        self._page(request, values)
        target = values.get("target_url")
        if target is not None and not isinstance(target, str):
            raise SimulatorError(400, {"error": "target_url must be a string or null"})
        simulator.webhook_target = target
        if isinstance(values.get("app_secret"), str):
            simulator.app_secret = values["app_secret"]
        return SimResponse(200, {"target_url": simulator.webhook_target})

    def _participants(self, request: SimRequest) -> SimResponse:
        """`{"conversation": "t_...", "kind": "no_id" | "page_only" | "not_psid" |
        "two_people" | null}`: serve that thread's participants wrong (or right again)."""
        values = self._values(request)
        key = values.get("conversation")
        if not isinstance(key, str):
            raise SimulatorError(400, {"error": "conversation (a thread id) is required"})
        kind = values.get("kind")
        if kind is not None and kind not in BAD_PARTICIPANT_KINDS:
            raise SimulatorError(400, {"error": f"kind must be one of {BAD_PARTICIPANT_KINDS}"})
        world = self._thread(request, values, key)
        if not world.participants_break(key, kind):
            raise SimulatorError(404, {"error": f"no conversation {key}"})
        return SimResponse(200, {"conversation": key, "kind": kind, "page_id": world.page_id})
