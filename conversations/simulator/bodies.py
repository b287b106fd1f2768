"""The bodies of the simulator's conversation and message edges, with their paging.

Bodies are built as JSON text (render.py): serving speed is what a sync benchmark measures.
Message cursors count from a conversation's oldest message, so newer messages arriving between
two pages do not shift them. `page` is the page's own participant, rendered beside the person.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from conversations.simulator.fields import FieldSpec
from conversations.simulator.render import (
    MessageRenderer,
    Participant,
    json_compact,
    json_object,
)
from conversations.simulator.wire import DEFAULT_LIMIT, MAX_LIMIT, encode_cursor
from conversations.simulator.world import PageWorld, SimConversation, SimMessage, graph_time
from devtools.simulator import SimRequest


def next_url(request: SimRequest, path: str, after: str) -> str:
    """The `paging.next` URL of an edge: the request's own query, from `after`."""
    host = request.headers.get("host", "127.0.0.1")
    version = request.params.get("version") or ""
    query = {key: value for key, value in request.query.items() if key != "before"}
    query["after"] = after
    return f"http://{host}{version}{path}?{urlencode(query)}"


def _message_renderer(
    page: Participant, conversation: SimConversation, fields: Mapping[str, FieldSpec]
) -> MessageRenderer:
    person = Participant(participant_id=conversation.psid, name=conversation.name)
    return MessageRenderer(person=person, page=page, fields=fields)


def conversation_json(
    world: PageWorld,
    page: Participant,
    conversation: SimConversation,
    fields: dict[str, FieldSpec],
    request: SimRequest,
) -> str:
    total = world.message_total_of(conversation)
    rendered: dict[str, Any] = {}
    raw_members: dict[str, str] = {}
    for name, spec in fields.items():
        if name == "id":
            rendered["id"] = conversation.key
        elif name == "updated_time":
            rendered["updated_time"] = graph_time(conversation.updated)
        elif name == "message_count":
            rendered["message_count"] = total
        elif name == "unread_count":
            rendered["unread_count"] = 1 if (conversation.generated_index or 0) % 3 == 0 else 0
        elif name == "link":
            rendered["link"] = f"/{world.page_id}/inbox/{conversation.key}"
        elif name == "can_reply":
            rendered["can_reply"] = True
        elif name == "snippet":
            newest, _ = world.message_window(conversation, skip_newest=0, limit=1)
            rendered["snippet"] = newest[0].text[:100] if newest else ""
        elif name == "participants":
            raw_members["participants"] = _participants_json(world, page, conversation)
        elif name == "messages":
            sub = spec.subfields or {"id": FieldSpec(), "created_time": FieldSpec()}
            limit = min(spec.limit or DEFAULT_LIMIT, MAX_LIMIT)
            window, count = world.message_window(conversation, skip_newest=0, limit=limit)
            raw_members["messages"] = message_page_json(
                world, page, conversation, window, count, 0, sub, request, nested=True
            )
    return json_object(rendered, raw_members)


def _participants_json(world: PageWorld, page: Participant, conversation: SimConversation) -> str:
    """The person and the page, or one of the wrong shapes a test asked for (F7)."""
    person = Participant(participant_id=conversation.psid, name=conversation.name)
    kind = world.bad_participants_of(conversation.key)
    if kind is None:
        return f'{{"data":[{person.json},{page.json}]}}'
    if kind == "no_id":  # a deleted account: a name, no id
        return f'{{"data":[{json_compact({"name": "Facebook user"})},{page.json}]}}'
    if kind == "page_only":
        return f'{{"data":[{page.json}]}}'
    if kind == "not_psid":
        odd = {"id": f"user.{conversation.psid}", "name": conversation.name}
        return f'{{"data":[{json_compact(odd)},{page.json}]}}'
    second = Participant(participant_id=f"{conversation.psid}9", name="Second Person")
    return f'{{"data":[{person.json},{second.json},{page.json}]}}'


def message_page_json(
    world: PageWorld,
    page: Participant,
    conversation: SimConversation,
    window: list[SimMessage],
    total: int,
    skipped: int,
    fields: dict[str, FieldSpec],
    request: SimRequest,
    *,
    nested: bool = False,
) -> str:
    # Cursors count from the oldest message: adding newer messages does not shift them.
    paging: dict[str, Any] | None = None
    if window:
        first_position = total - 1 - skipped
        last_position = total - skipped - len(window)
        paging = {
            "cursors": {
                "before": encode_cursor(f"m:{first_position}"),
                "after": encode_cursor(f"m:{last_position}"),
            }
        }
        if last_position > 0 and not nested:
            paging["next"] = next_url(
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
    renderer = _message_renderer(page, conversation, fields)
    return renderer.page_json(window, paging)
