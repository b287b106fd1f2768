"""What a JSON value written by a user must satisfy before it is stored (API and admin alike).

PostgreSQL's jsonb refuses non-finite numbers (`1e400` parses as an infinity in Python) and NUL
characters, and very deep nesting crashes recursive code later; refusing them up front turns a
database error into a clear validation message.
"""

from __future__ import annotations

import math
from typing import Any

JSON_MAX_DEPTH = 32


class UnstorableJson(ValueError):
    """The value cannot be stored as jsonb or would break a later step."""


def json_value_check(value: Any) -> None:
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise UnstorableJson("numbers must be finite")
        if isinstance(item, str) and "\x00" in item:
            raise UnstorableJson("strings must not contain NUL (\\u0000)")
        if isinstance(item, dict | list):
            if depth > JSON_MAX_DEPTH:
                raise UnstorableJson(f"values must not nest more than {JSON_MAX_DEPTH} levels deep")
            if isinstance(item, dict):
                pending.extend((key, depth) for key in item)
                pending.extend((child, depth + 1) for child in item.values())
            else:
                pending.extend((child, depth + 1) for child in item)
