"""What PostgreSQL's jsonb cannot hold, checked once for every app before a value is stored.

jsonb refuses non-finite numbers (`1e400` parses as an infinity in Python, `NaN` is not JSON)
and NUL characters, and very deep nesting crashes recursive code later; refusing them up front
turns a database error into a clear message. One rule, three entry points, by what the caller
holds:

* `json_value_check(value)`: a Python value (a client's JSON, a parsed payload);
* `jsonb_text(value)`: a Python value about to be sent as jsonb text (the check on the text is
  cheaper than a walk of the value, on the journeys' hot path);
* `json_loads_storable(data)`: JSON text being parsed, whose numbers must be finite.

`UnstorableJson.reason` says which rule a value broke, so a caller can word it its own way.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

JSON_MAX_DEPTH = 32

NOT_FINITE = "not_finite"
NUL = "nul"
TOO_DEEP = "too_deep"

_MESSAGES = {
    NOT_FINITE: "numbers must be finite",
    NUL: "strings must not contain NUL (\\u0000)",
    TOO_DEEP: f"values must not nest more than {JSON_MAX_DEPTH} levels deep",
}

# An escaped NUL ("\\u0000") that is not itself escaped, in JSON text.
_ESCAPED_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


class UnstorableJson(ValueError):
    """The value cannot be stored as jsonb or would break a later step; `reason` says why."""

    def __init__(self, reason: str, message: str | None = None) -> None:
        super().__init__(message or _MESSAGES[reason])
        self.reason = reason


def json_value_check(value: Any, *, max_depth: int | None = JSON_MAX_DEPTH) -> None:
    """Raise UnstorableJson unless jsonb can hold `value` (nested at most `max_depth` deep).

    The walk is depth-first on the interpreter's stack: with `max_depth=None` a document nested
    beyond what the rest of the code could handle fails here with RecursionError, which a caller
    reading documents of any depth handles.
    """
    _check(value, 1, max_depth)


def _check(value: Any, depth: int, max_depth: int | None) -> None:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise UnstorableJson(NOT_FINITE)
    elif isinstance(value, str):
        if "\x00" in value:
            raise UnstorableJson(NUL)
    elif isinstance(value, dict | list):
        if max_depth is not None and depth > max_depth:
            raise UnstorableJson(
                TOO_DEEP, f"values must not nest more than {max_depth} levels deep"
            )
        if isinstance(value, dict):
            for key, item in value.items():
                _check(key, depth, max_depth)
                _check(item, depth + 1, max_depth)
        else:
            for item in value:
                _check(item, depth + 1, max_depth)


def jsonb_text(value: Any) -> str:
    """`value` as compact JSON text for a jsonb parameter; UnstorableJson if jsonb refuses it.

    Values json cannot encode natively are written with `str` (dates, UUIDs).
    """
    try:
        text = json.dumps(value, separators=(",", ":"), default=str, allow_nan=False)
    except ValueError as error:
        raise UnstorableJson(NOT_FINITE) from error
    if "\\u0000" in text and _ESCAPED_NUL.search(text):
        raise UnstorableJson(NUL)
    return text


def _refuse_constant(name: str) -> Any:
    # NaN, Infinity and -Infinity are not JSON, and jsonb refuses them.
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    # 1e400 parses to infinity, which jsonb refuses: the document could never be stored.
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text[:40]} is out of range")
    return number


def json_loads_storable(data: str | bytes) -> Any:
    """`json.loads(data)`, refusing (ValueError) any number jsonb cannot hold."""
    return json.loads(data, parse_constant=_refuse_constant, parse_float=_finite_float)
