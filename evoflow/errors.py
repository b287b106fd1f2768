"""The one base of every refusal a service (or a view) gives a caller: `DomainError`.

A domain error carries what the API answers: a stable `code` (a constant clients branch on), an
HTTP `status`, a `detail` for people (which may be reworded at any time) and optional `extra`
fields. Each subclass declares its own code and status; services raise them without knowing
about HTTP, and the API's one exception handler (`evoflow.api.errors`) turns any of them into
`{"code", "detail", ...extra}` with that status. Admin pages and commands show `detail` (which
is also `str(error)`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar


class DomainError(Exception):
    """A request the domain refuses, with its stable code and HTTP status."""

    code: ClassVar[str] = "bad_request"
    status: ClassVar[int] = 400
    default_detail: ClassVar[str] = "The request could not be processed."
    # Seconds a client should wait before asking again (the Retry-After header), if it may.
    retry_after: ClassVar[int | None] = None

    def __init__(
        self, detail: str | None = None, *, extra: Mapping[str, Any] | None = None
    ) -> None:
        self.detail = detail or self.default_detail
        self.extra: dict[str, Any] = dict(extra or {})
        super().__init__(self.detail)

    def __str__(self) -> str:
        return self.detail
