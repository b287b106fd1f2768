"""The request id of the work in progress: an HTTP request, a task or a sync run.

It lives in a context variable so that every log line written while the work runs carries it,
in threads and in asyncio tasks alike.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterator
from contextvars import ContextVar

NO_REQUEST_ID = "-"
_current: ContextVar[str] = ContextVar("evoflow_request_id", default=NO_REQUEST_ID)
# What a client may send as X-Request-ID: short, printable, no spaces (it ends up in logs).
_ACCEPTABLE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def new_request_id() -> str:
    return uuid.uuid4().hex


def accept_or_create(candidate: str | None) -> str:
    """The client's id when it is safe to log, otherwise a fresh one."""
    if candidate and _ACCEPTABLE.match(candidate):
        return candidate
    return new_request_id()


def get_request_id() -> str:
    return _current.get()


@contextlib.contextmanager
def bound_request_id(request_id: str | None = None) -> Iterator[str]:
    """Run a block with a request id (a new one when none is given)."""
    value = request_id or new_request_id()
    token = _current.set(value)
    try:
        yield value
    finally:
        _current.reset(token)
