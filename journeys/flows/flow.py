"""The journey flow graph: node config schemas, validation, and graph lookups.

One validator (`flow_validate`) serves the model's `clean`, the services and the API, so an
unknown node type or a dangling edge is refused at save time with a message that names the
node, never skipped at run time. It also holds http_request URLs to
`JOURNEYS_HTTP_ALLOWED_HOSTS` (`http_url_refusal`, which the engine applies again to the
rendered URL before every call, since the setting can change after a flow is saved).
"""

from __future__ import annotations

import json
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from django.conf import settings
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

_READS_CONTACT = re.compile(r"\bcontact\.")


class FlowInvalid(Exception):
    """The flow (or the triggers) break a rule; `messages` says which, naming the node."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__("; ".join(messages))
        self.messages = messages


# The longest a wait, an event timeout or a retry delay may last. Longer values are refused at
# save time and clamped at run time (a flow saved before the bound, a computed retry backoff),
# since a deadline past datetime's range would crash the worker instead of waiting.
MAX_WAIT_SECONDS = 365 * 86400.0


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class EmptyConfig(_Config):
    pass


class SendMessageConfig(_Config):
    # The CRM conversation to post into; a template, e.g. "{{contact.custom_attributes.conv}}".
    conversation_id: str = Field(min_length=1)
    content: str = Field(min_length=1)
    message_type: Literal["outgoing", "template"] = "outgoing"


class WaitConfig(_Config):
    seconds: float = Field(default=0, ge=0)
    minutes: float = Field(default=0, ge=0)
    hours: float = Field(default=0, ge=0)
    days: float = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _positive(self) -> WaitConfig:
        if self.total_seconds <= 0:
            raise ValueError("the wait must last more than 0 seconds")
        if self.total_seconds > MAX_WAIT_SECONDS:
            raise ValueError("the wait must not last more than 365 days")
        return self

    @property
    def total_seconds(self) -> float:
        return self.seconds + 60 * self.minutes + 3600 * self.hours + 86400 * self.days


class WaitForEventConfig(_Config):
    event: str = Field(min_length=1)
    # Property filters: every key must equal the event's property of that name.
    filters: dict[str, Any] = Field(default_factory=dict)
    timeout_seconds: float = Field(gt=0, le=MAX_WAIT_SECONDS)


Operator = Literal[
    "equals", "not_equals", "contains", "greater_than", "less_than", "exists", "not_exists"
]


class ConditionConfig(_Config):
    # "contact.<field>", "contact.custom_attributes.<name>" or "variables.<name>"
    field: str = Field(pattern=r"^(contact|variables)\.[A-Za-z0-9_.]+$")
    operator: Operator
    value: Any = None


class SplitBranch(_Config):
    handle: str = Field(min_length=1)
    percentage: int = Field(ge=0, le=100)


class SplitConfig(_Config):
    branches: list[SplitBranch] = Field(min_length=2)

    @model_validator(mode="after")
    def _sums_to_100(self) -> SplitConfig:
        total = sum(branch.percentage for branch in self.branches)
        if total != 100:
            raise ValueError(f"branch percentages sum to {total}, not 100")
        handles = [branch.handle for branch in self.branches]
        if len(set(handles)) != len(handles):
            raise ValueError("branch handles must be unique")
        return self


class SetVariableConfig(_Config):
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    # A string value is a template ("{{contact.name}}"); other JSON values are stored as they are.
    value: Any = None


class UpdateContactConfig(_Config):
    custom_attributes: dict[str, Any] = Field(min_length=1)


class LabelConfig(_Config):
    label: str = Field(min_length=1, max_length=100)


class HttpRequestConfig(_Config):
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    url: str = Field(pattern=r"^(https?://|\{\{)")
    headers: dict[str, str] = Field(default_factory=dict)
    body: Any = None
    timeout_seconds: float = Field(default=10, gt=0, le=120)
    # variable name -> dotted path into the JSON response ("data.id")
    response_mapping: dict[str, str] = Field(default_factory=dict)


class ExitConfig(_Config):
    reason: str = "exit"


class RetryPolicy(_Config):
    attempts: int = Field(default=3, ge=1, le=20)
    backoff_seconds: float = Field(default=2.0, ge=0, le=3600)
    backoff_multiplier: float = Field(default=2.0, ge=1, le=10)

    def delay_after(self, attempt: int) -> float:
        """The backoff before the next attempt, never longer than MAX_WAIT_SECONDS."""
        try:
            delay = self.backoff_seconds * self.backoff_multiplier ** (attempt - 1)
        except OverflowError:
            return MAX_WAIT_SECONDS
        return min(delay, MAX_WAIT_SECONDS)


@dataclass(frozen=True)
class NodeType:
    config: type[_Config]
    # None: one plain outgoing edge at most; otherwise the handles its edges may carry.
    handles: tuple[str, ...] | None = None
    has_side_effect: bool = False


NODE_TYPES: dict[str, NodeType] = {
    "entry": NodeType(EmptyConfig),
    "send_message": NodeType(SendMessageConfig, has_side_effect=True),
    "wait": NodeType(WaitConfig),
    "wait_for_event": NodeType(WaitForEventConfig, handles=("event", "timeout")),
    "condition": NodeType(ConditionConfig, handles=("true", "false")),
    "split": NodeType(SplitConfig, handles=()),  # handles come from the branches
    "set_variable": NodeType(SetVariableConfig),
    "update_contact": NodeType(UpdateContactConfig, has_side_effect=True),
    "add_label": NodeType(LabelConfig, has_side_effect=True),
    "remove_label": NodeType(LabelConfig, has_side_effect=True),
    "http_request": NodeType(HttpRequestConfig, has_side_effect=True),
    "exit": NodeType(ExitConfig),
}


@dataclass(frozen=True)
class Node:
    id: str
    type: str
    config: Any
    retry: RetryPolicy
    # Whether the config mentions `contact.` (a template or a condition field): the engine
    # enriches a stub contact from the CRM before running such a node.
    reads_contact: bool = False

    @property
    def has_side_effect(self) -> bool:
        return NODE_TYPES[self.type].has_side_effect


@dataclass
class Flow:
    """A validated flow, ready for the engine."""

    nodes: dict[str, Node]
    entry_node_id: str
    # (source, handle or None) -> target
    edges: dict[tuple[str, str | None], str] = field(default_factory=dict)

    def next_node_id(self, node_id: str, handle: str | None = None) -> str | None:
        """The node after `node_id` along `handle`; a plain edge serves any handle."""
        target = self.edges.get((node_id, handle))
        if target is None and handle is not None:
            target = self.edges.get((node_id, None))
        return target


def _pydantic_messages(prefix: str, error: ValidationError) -> list[str]:
    messages = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"])
        where = f"{prefix}.{location}" if location else prefix
        messages.append(f"{where}: {item['msg']}")
    return messages


def flow_parse(flow: Any) -> Flow:
    """The flow as engine objects; raises FlowInvalid with every problem found."""
    if not isinstance(flow, dict):
        raise FlowInvalid(["the flow must be a JSON object with 'nodes' and 'edges'"])
    raw_nodes = flow.get("nodes")
    raw_edges = flow.get("edges", [])
    messages: list[str] = []
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise FlowInvalid(["the flow needs a non-empty 'nodes' list"])
    if not isinstance(raw_edges, list):
        raise FlowInvalid(["'edges' must be a list"])
    unknown_keys = set(flow) - {"nodes", "edges"}
    if unknown_keys:
        messages.append(f"unknown flow keys: {', '.join(sorted(unknown_keys))}")

    nodes: dict[str, Node] = {}
    split_handles: dict[str, tuple[str, ...]] = {}
    for index, raw in enumerate(raw_nodes):
        if not isinstance(raw, dict):
            messages.append(f"node #{index + 1}: must be an object with 'id' and 'type'")
            continue
        node_id = raw.get("id")
        if not isinstance(node_id, str) or not node_id.strip() or len(node_id) > 100:
            messages.append(f"node #{index + 1}: 'id' must be a non-empty string (<= 100 chars)")
            continue
        label = f'node "{node_id}"'
        if node_id in nodes:
            messages.append(f"{label}: the id is used by more than one node")
            continue
        node_type = raw.get("type")
        if not isinstance(node_type, str) or node_type not in NODE_TYPES:
            known = ", ".join(sorted(NODE_TYPES))
            messages.append(f"{label}: unknown node type {node_type!r} (known types: {known})")
            continue
        extra = set(raw) - {"id", "type", "config", "retry", "position", "label"}
        if extra:
            messages.append(f"{label}: unknown keys {', '.join(sorted(extra))}")
        label = f'node "{node_id}" ({node_type})'
        try:
            config = NODE_TYPES[node_type].config.model_validate(raw.get("config") or {})
        except ValidationError as error:
            messages.extend(_pydantic_messages(f"{label}: config", error))
            continue
        try:
            retry = RetryPolicy.model_validate(raw.get("retry") or {})
        except ValidationError as error:
            messages.extend(_pydantic_messages(f"{label}: retry", error))
            continue
        nodes[node_id] = Node(
            id=node_id,
            type=node_type,
            config=config,
            retry=retry,
            reads_contact=_READS_CONTACT.search(json.dumps(raw.get("config") or {}, default=str))
            is not None,
        )
        if isinstance(config, SplitConfig):
            split_handles[node_id] = tuple(branch.handle for branch in config.branches)

    edges: dict[tuple[str, str | None], str] = {}
    incoming: set[str] = set()
    # Only strings can be node ids (an object or a list cannot even be looked up).
    all_ids = {
        raw.get("id")
        for raw in raw_nodes
        if isinstance(raw, dict) and isinstance(raw.get("id"), str)
    }
    for index, raw in enumerate(raw_edges):
        if not isinstance(raw, dict):
            messages.append(f"edge #{index + 1}: must be an object with 'source' and 'target'")
            continue
        source, target, handle = raw.get("source"), raw.get("target"), raw.get("handle")
        label = f"edge #{index + 1} ({source} -> {target})"
        if not isinstance(source, str) or not isinstance(target, str):
            messages.append(f"{label}: 'source' and 'target' must be node ids (strings)")
            continue
        if source not in all_ids:
            messages.append(f"{label}: source node {source!r} does not exist")
            continue
        if target not in all_ids:
            messages.append(f"{label}: target node {target!r} does not exist")
            continue
        if handle is not None and not isinstance(handle, str):
            messages.append(f"{label}: 'handle' must be a string")
            continue
        if source not in nodes or target not in nodes:
            continue  # the node's own error is reported already
        source_type = nodes[source].type
        allowed = split_handles.get(source, NODE_TYPES[source_type].handles)
        if source_type == "exit":
            messages.append(f'{label}: node "{source}" (exit) cannot have outgoing edges')
            continue
        if allowed is None and handle is not None:
            messages.append(f'{label}: node "{source}" ({source_type}) takes no edge handles')
            continue
        if allowed and handle is not None and handle not in allowed:
            messages.append(
                f'{label}: node "{source}" ({source_type}) has no handle {handle!r} '
                f"(expected one of: {', '.join(allowed)})"
            )
            continue
        if (source, handle) in edges:
            messages.append(f'{label}: node "{source}" has two edges for handle {handle!r}')
            continue
        edges[(source, handle)] = target
        incoming.add(target)

    if messages:
        raise FlowInvalid(messages)

    entry_nodes = [node_id for node_id, node in nodes.items() if node.type == "entry"]
    if len(entry_nodes) > 1:
        raise FlowInvalid([f"the flow has {len(entry_nodes)} entry nodes; exactly one is allowed"])
    if entry_nodes and entry_nodes[0] in incoming:
        raise FlowInvalid([f'node "{entry_nodes[0]}" (entry) cannot have incoming edges'])
    if not entry_nodes:
        entry_nodes = [node_id for node_id in nodes if node_id not in incoming]
        if len(entry_nodes) != 1:
            names = ", ".join(f'"{node_id}"' for node_id in entry_nodes) or "none"
            raise FlowInvalid(
                [
                    "the flow needs exactly one entry node (an 'entry' node, or one node "
                    f"without incoming edges); found: {names}"
                ]
            )
    entry = entry_nodes[0]

    reached = {entry}
    queue = deque([entry])
    while queue:
        current = queue.popleft()
        for (source, _handle), target in edges.items():
            if source == current and target not in reached:
                reached.add(target)
                queue.append(target)
    unreachable = [node_id for node_id in nodes if node_id not in reached]
    if unreachable:
        raise FlowInvalid(
            [
                f'node "{node_id}" ({nodes[node_id].type}) is not reachable from the entry node'
                for node_id in unreachable
            ]
        )
    return Flow(nodes=nodes, entry_node_id=entry, edges=edges)


def _allowed_hosts() -> list[str]:
    return [entry.strip().lower() for entry in settings.JOURNEYS_HTTP_ALLOWED_HOSTS if entry]


def _host_entry_matches(entry: str, host: str, port: int) -> bool:
    if entry == "*":
        return True
    # "host", "host:port", "[::1]" or "[::1]:port"
    if entry.startswith("["):
        entry_host, _, rest = entry[1:].partition("]")
        entry_port = rest.removeprefix(":")
    elif entry.count(":") == 1:
        entry_host, _, entry_port = entry.partition(":")
    else:
        entry_host, entry_port = entry, ""
    if entry_host != host:
        return False
    return not entry_port or entry_port == str(port)


def http_url_refusal(url: str) -> str | None:
    """Why an http_request node may not call `url` (a rendered URL), or None when it may.

    Only http and https, no credentials in the URL, and a host that
    `JOURNEYS_HTTP_ALLOWED_HOSTS` allows: the URL is written by whoever edits a flow, and the
    request leaves from inside the network (server-side request forgery).
    """
    allowed = _allowed_hosts()
    if not allowed:
        return "http_request nodes are disabled (JOURNEYS_HTTP_ALLOWED_HOSTS is empty)"
    shown = repr(url[:200])
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return f"the URL {shown} is not a valid URL"
    if parts.scheme not in ("http", "https"):
        return f"the URL {shown} is not http(s)"
    # Parsers disagree on these (userinfo, backslashes, blanks), so a host one of them reads
    # could differ from the host the request goes to: refuse rather than guess.
    if "@" in parts.netloc:
        return f"the URL {shown} carries credentials; send them in a header instead"
    if any(char in parts.netloc for char in "\\ \t\r\n") or not parts.hostname:
        return f"the URL {shown} has no valid host"
    host = parts.hostname.lower()
    effective_port = port or (443 if parts.scheme == "https" else 80)
    if any(_host_entry_matches(entry, host, effective_port) for entry in allowed):
        return None
    where = host if port is None else f"{host}:{port}"
    return f"the host {where!r} is not in JOURNEYS_HTTP_ALLOWED_HOSTS"


def _http_hosts_check(flow: Flow) -> list[str]:
    messages = []
    for node in flow.nodes.values():
        if not isinstance(node.config, HttpRequestConfig):
            continue
        url = node.config.url
        # A templated scheme or host is only known when the node runs; the engine checks it
        # then. Everything else is checked now, when the mistake is cheap to fix.
        try:
            is_host_templated = url.startswith("{{") or "{{" in urlsplit(url).netloc
        except ValueError:
            is_host_templated = False  # http_url_refusal names the problem
        if is_host_templated and _allowed_hosts():
            continue
        refusal = http_url_refusal(url)
        if refusal:
            messages.append(f'node "{node.id}" (http_request): config.url: {refusal}')
    return messages


def flow_validate(flow: Any, *, previous_flow: Any = None) -> None:
    """Refuse a flow that breaks a rule, naming the node at fault.

    `previous_flow` is the flow stored before this write: when the flow is unchanged, the
    host allow-list is not applied again, so a journey saved before the allow-list was
    narrowed can still be renamed or deactivated (its refused nodes fail when they run).
    """
    parsed = flow_parse(flow)
    if previous_flow is not None and flow == previous_flow:
        return
    messages = _http_hosts_check(parsed)
    if messages:
        raise FlowInvalid(messages)


class EventTrigger(_Config):
    type: Literal["event"] = "event"
    event: str = Field(min_length=1)
    filters: dict[str, Any] = Field(default_factory=dict)


def triggers_parse(triggers: Any) -> list[EventTrigger]:
    if not isinstance(triggers, list):
        raise FlowInvalid(["triggers must be a list"])
    parsed, messages = [], []
    for index, raw in enumerate(triggers):
        try:
            parsed.append(EventTrigger.model_validate(raw))
        except ValidationError as error:
            messages.extend(_pydantic_messages(f"trigger #{index + 1}", error))
    if messages:
        raise FlowInvalid(messages)
    return parsed


def triggers_validate(triggers: Any) -> None:
    triggers_parse(triggers)


def properties_match(filters: dict[str, Any], properties: dict[str, Any]) -> bool:
    """Every filter key equals the property of that name (missing properties never match)."""
    return all(key in properties and properties[key] == value for key, value in filters.items())
