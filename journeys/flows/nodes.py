"""What each node does, as plain functions of the session's state.

Pure nodes (entry, wait, wait_for_event, condition, split, set_variable, exit) compute their
outcome here without I/O. Nodes with side effects (messages, contact updates, labels, HTTP
requests) are run by `journeys.flows.effects`, which the runner calls outside any transaction.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from journeys.flows.flow import (
    ConditionConfig,
    ExitConfig,
    Node,
    SetVariableConfig,
    SplitConfig,
    WaitConfig,
    WaitForEventConfig,
)

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_.]+)\s*\}\}")
_MISSING = object()


@dataclass
class NodeState:
    """What a node may read: the contact's fields and the session's variables."""

    contact_id: str
    contact: dict[str, Any]
    variables: dict[str, Any]
    session_id: int = 0
    step_number: int = 0

    def lookup(self, path: str) -> Any:
        """The value at "contact.<field>[.<key>...]" or "variables.<name>[...]", or _MISSING."""
        head, _, rest = path.partition(".")
        if head == "contact":
            value: Any = {"id": self.contact_id, **self.contact}
        elif head == "variables":
            value = self.variables
        elif head == "session":
            value = {"id": self.session_id, "step": self.step_number}
        else:
            return _MISSING
        for part in rest.split(".") if rest else []:
            if isinstance(value, dict) and part in value:
                value = value[part]
            elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            else:
                return _MISSING
        return value


def render(template: Any, state: NodeState) -> Any:
    """`{{contact.name}}` / `{{variables.x}}` interpolation, through dicts and lists.

    A string that is exactly one placeholder keeps the value's JSON type; a missing value
    renders as an empty string.
    """
    if isinstance(template, str):
        whole = _PLACEHOLDER.fullmatch(template.strip())
        if whole:
            value = state.lookup(whole.group(1))
            return "" if value is _MISSING or value is None else value

        def substitute(match: re.Match[str]) -> str:
            value = state.lookup(match.group(1))
            return "" if value is _MISSING or value is None else str(value)

        return _PLACEHOLDER.sub(substitute, template)
    if isinstance(template, dict):
        return {key: render(value, state) for key, value in template.items()}
    if isinstance(template, list):
        return [render(value, state) for value in template]
    return template


@dataclass
class Outcome:
    """The result of one node: where to go, what changed, and the step log's record."""

    # "continue" (follow `handle`), "wait" (until `wait_seconds` or an event), "complete"
    kind: str = "continue"
    handle: str | None = None
    variables: dict[str, Any] = field(default_factory=dict)  # updates
    wait_seconds: float | None = None
    wait_event: str | None = None
    wait_filters: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    result: dict[str, Any] = field(default_factory=dict)
    # Fields of the local contact mirror that the node changed in the CRM.
    contact_changes: dict[str, Any] = field(default_factory=dict)


def split_bucket(contact_id: str, node_id: str) -> int:
    """A stable 0..99 bucket per (contact, split node): the same contact always takes one path."""
    digest = hashlib.sha256(f"{contact_id}:{node_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100


def _compare(operator: str, actual: Any, expected: Any) -> bool:
    if operator == "exists":
        return actual is not _MISSING and actual not in (None, "")
    if operator == "not_exists":
        return actual is _MISSING or actual in (None, "")
    if actual is _MISSING:
        actual = None
    if operator == "equals":
        return bool(actual == expected)
    if operator == "not_equals":
        return bool(actual != expected)
    if operator == "contains":
        if isinstance(actual, str) and isinstance(expected, str):
            return expected.lower() in actual.lower()
        if isinstance(actual, list | dict):
            try:
                return expected in actual
            except TypeError:  # an unhashable value (a list, an object) is never a key
                return False
        return False
    try:
        left, right = float(actual), float(expected)
    except (TypeError, ValueError, OverflowError):
        return False
    if operator == "greater_than":
        return left > right
    if operator == "less_than":
        return left < right
    raise ValueError(f"unknown operator {operator!r}")


def node_evaluate(node: Node, state: NodeState) -> Outcome:
    """The outcome of a node without side effects."""
    config = node.config
    if node.type == "entry":
        return Outcome(result={"entered": True})
    if isinstance(config, SetVariableConfig):
        value = render(config.value, state)
        return Outcome(variables={config.name: value}, result={config.name: value})
    if isinstance(config, ConditionConfig):
        actual = state.lookup(config.field)
        expected = render(config.value, state)
        matched = _compare(config.operator, actual, expected)
        handle = "true" if matched else "false"
        return Outcome(handle=handle, result={"matched": matched})
    if isinstance(config, SplitConfig):
        bucket = split_bucket(state.contact_id, node.id)
        upper = 0
        for branch in config.branches:
            upper += branch.percentage
            if bucket < upper:
                return Outcome(
                    handle=branch.handle, result={"bucket": bucket, "branch": branch.handle}
                )
        raise AssertionError("split percentages are validated to sum to 100")
    if isinstance(config, WaitConfig):
        return Outcome(
            kind="wait",
            wait_seconds=config.total_seconds,
            result={"wait_seconds": config.total_seconds},
        )
    if isinstance(config, WaitForEventConfig):
        return Outcome(
            kind="wait",
            wait_seconds=config.timeout_seconds,
            wait_event=config.event,
            # Filters are templates too ("{{variables.order_id}}"), rendered when the wait starts.
            wait_filters=render(dict(config.filters), state),
            result={"event": config.event, "timeout_seconds": config.timeout_seconds},
        )
    if isinstance(config, ExitConfig):
        return Outcome(kind="complete", reason=config.reason, result={"reason": config.reason})
    raise ValueError(f'node "{node.id}" ({node.type}) has side effects; run it through effects')
