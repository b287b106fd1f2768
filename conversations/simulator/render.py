"""Messages as the Graph API renders them, straight to compact JSON text.

Serving messages is the hot path of a sync benchmark (up to a million messages through the
simulator), and building a dict per message for `json.dumps` cost more than generating the
message. `MessageRenderer.json` writes the usual full field list with one format string;
other field selections go through `MessageRenderer.item`, the reference shape, and
`json.dumps`. Tests hold the two equal.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

from conversations.simulator.world import SimMessage, graph_time

MESSAGE_FIELDS = frozenset(
    {"id", "created_time", "from", "to", "message", "attachments", "reply_to"}
)


_COMPACT = json.JSONEncoder(separators=(",", ":"))  # built once: `json.dumps(...)` builds one


def json_compact(value: Any) -> str:
    return _COMPACT.encode(value)


@lru_cache(maxsize=8192)
def _json_string(text: str) -> str:
    # Generated texts come from a small table, so nearly every lookup is a hit.
    return json.dumps(text)


def json_object(values: Mapping[str, Any], raw_members: Mapping[str, str]) -> str:
    """`values` as a JSON object, followed by members whose values are JSON text already."""
    text = json_compact(values)
    if not raw_members:
        return text
    # Member names are Graph field names (letters, digits, underscores): no escaping needed.
    members = ",".join(f'"{name}":{raw}' for name, raw in raw_members.items())
    return f"{text[:-1]}{',' if values else ''}{members}}}"


class Participant:
    """A participant (`{id, name, email}`), with the JSON texts messages repeat."""

    def __init__(self, *, participant_id: str, name: str) -> None:
        self.value = {"id": participant_id, "name": name, "email": f"{participant_id}@facebook.com"}
        # Ids are digits: only the name needs escaping.
        self.json = (
            f'{{"id":"{participant_id}","name":{_json_string(name)},'
            f'"email":"{participant_id}@facebook.com"}}'
        )
        self.to_json = f'{{"data":[{self.json}]}}'


class MessageRenderer:
    """Renders the messages of one conversation for one `fields` selection."""

    def __init__(self, *, person: Participant, page: Participant, fields: Iterable[str]) -> None:
        self.person, self.page = person.value, page.value
        self.fields = list(fields)
        self.is_every_field = set(self.fields) >= MESSAGE_FIELDS
        self._to_person, self._to_page = {"data": [self.person]}, {"data": [self.page]}
        # The sender and recipient members of a message, in each direction, written once.
        self._from_page = f'"from":{page.json},"to":{person.to_json},"message":'
        self._from_person = f'"from":{person.json},"to":{page.to_json},"message":'

    def item(self, message: SimMessage) -> dict[str, Any]:
        """The message as the API shows it, with the selected fields only."""
        from_page = message.from_page
        item: dict[str, Any] = {
            "id": message.mid,
            "created_time": graph_time(message.created),
            "from": self.page if from_page else self.person,
            "to": self._to_person if from_page else self._to_page,
            "message": message.text,
        }
        if message.attachments:
            item["attachments"] = {"data": message.attachments}
        if message.reply_to:
            item["reply_to"] = {"mid": message.reply_to, "is_self_reply": False}
        if self.is_every_field:
            return item
        return {name: item[name] for name in self.fields if name in item}

    def json(self, message: SimMessage) -> str:
        """`item(message)` as compact JSON text."""
        if not self.is_every_field:
            return json_compact(self.item(message))
        from_page = message.from_page
        attachments = (
            f',"attachments":{{"data":{json_compact(message.attachments)}}}'
            if message.attachments
            else ""
        )
        reply_to = (
            f',"reply_to":{{"mid":"{message.reply_to}","is_self_reply":false}}'
            if message.reply_to
            else ""
        )
        # Mids are the simulator's own (letters, digits, underscores): no escaping needed.
        return (
            f'{{"id":"{message.mid}","created_time":"{graph_time(message.created)}",'
            f"{self._from_page if from_page else self._from_person}"
            f"{_json_string(message.text)}{attachments}{reply_to}}}"
        )

    def page_json(self, messages: Iterable[SimMessage], paging: Mapping[str, Any] | None) -> str:
        """A page of the messages edge: `{"data": [...], "paging": {...}}` as JSON text."""
        data = ",".join(map(self.json, messages))
        if paging is None:
            return f'{{"data":[{data}]}}'
        return f'{{"data":[{data}],"paging":{json_compact(paging)}}}'
