"""The Graph API client of the sync (docs/graph-api.md is what it relies on).

- Every answer it reads has an explicit, strict shape (F9, F23): a field of the wrong type, a
  missing id, a renamed envelope or broken JSON raise `SchemaDrift`; nothing is skipped silently.
- Every attempt, retries included, first takes its turn from the shared rate limiter (F6): one
  bucket per page and one for the app, kept in PostgreSQL so that every worker on every host
  waits its turn. The usage headers feed the limiter back: past 75% the buckets slow down, at
  100% they block until the regain time Meta gives.
- Errors are classified: throttling codes block the bucket for the whole regain time Meta
  gives (or, when it gives none, an exponentially growing pause capped by
  GRAPH_THROTTLE_MAX_WAIT_SECONDS) and try again; 5xx and timeouts are retried
  by the base client with exponential backoff and full jitter (F22); 190 raises `TokenInvalid` at
  once; any other 4xx raises `GraphError` with Meta's code and message.
- The token travels in the Authorization header, never in a URL, so no log line can carry it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Annotated, Any, TypeVar

import requests
from django.conf import settings
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from evoflow.http import HttpClient, RetryPolicy, UpstreamUnavailable
from evoflow.ratelimit import Bucket, Limiter, default_rate_limiter

THROTTLE_CODES = frozenset({4, 17, 32, 613, 80001, 80006})
APP_THROTTLE_CODES = frozenset({4})
TOKEN_INVALID_CODE = 190
# Consecutive throttled answers to one request before the client gives up on it.
MAX_THROTTLED_IN_A_ROW = 8
MESSAGE_FIELDS = "id,created_time,from,to,message,attachments,reply_to"


class GraphError(Exception):
    """A Graph call failed for good; `code` is the stable error code recorded on the run."""

    code = "graph_error"

    def __init__(self, detail: str, *, graph_code: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.graph_code = graph_code


class SchemaDrift(GraphError):
    code = "schema_drift"


class TokenInvalid(GraphError):
    code = "token_invalid"


class GraphUnavailable(GraphError):
    code = "graph_unavailable"


class Throttled(GraphError):
    code = "throttled"


class OutOfTime(Exception):
    """Waiting any longer would pass the caller's deadline."""


# -- response shapes ----------------------------------------------------------------------------

GraphId = Annotated[str, Field(min_length=1, max_length=255)]


class _Node(BaseModel):
    # Strict types (an epoch number is not a time, a number is not an id); fields Meta adds
    # later are ignored.
    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)


class GraphParticipant(_Node):
    # A deleted account may come without an id: the sync skips such a thread with a reason (F7).
    id: str | None = None
    name: str = ""
    email: str | None = None


class ParticipantList(_Node):
    data: list[GraphParticipant]


class Cursors(_Node):
    before: str | None = None
    after: str | None = None


class Paging(_Node):
    cursors: Cursors | None = None
    next: str | None = None


class AttachmentList(_Node):
    data: list[dict[str, Any]]


class ReplyTo(_Node):
    mid: GraphId
    is_self_reply: bool = False


class GraphMessage(_Node):
    id: GraphId
    created_time: datetime
    sender: GraphParticipant = Field(alias="from")
    message: str = ""
    attachments: AttachmentList | None = None
    reply_to: ReplyTo | None = None


class _Paged(_Node):
    paging: Paging | None = None

    @property
    def next_after(self) -> str | None:
        """The cursor of the next page, or None on the last one."""
        if self.paging is None or not self.paging.next or self.paging.cursors is None:
            return None
        return self.paging.cursors.after


class MessagePage(_Paged):
    data: list[GraphMessage]


class GraphConversation(_Node):
    id: GraphId
    updated_time: datetime
    message_count: int | None = None
    participants: ParticipantList
    messages: MessagePage | None = None


class ConversationPage(_Paged):
    data: list[GraphConversation]
    # When the call that read this page started (set by the sync, never read from the answer):
    # the texts it holds are current as of then (C9).
    _fetched_at: datetime | None = PrivateAttr(default=None)


Shape = TypeVar("Shape", bound=_Node)


def _error_of(response: requests.Response) -> tuple[int | None, str]:
    """Meta's error code and message from an error answer (whatever its shape)."""
    try:
        body = response.json()
    except ValueError:
        return None, f"HTTP {response.status_code} (body is not JSON)"
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None, f"HTTP {response.status_code}"
    code = error.get("code")
    message = str(error.get("message", ""))[:500]
    return (code if isinstance(code, int) else None), message


def _usage_percent(raw: str | None, page_id: str | None = None) -> tuple[float, int] | None:
    """The highest figure of a usage header, and the minutes to regain access it names."""
    if not raw:
        return None
    try:
        document = json.loads(raw)
    except ValueError:
        return None
    entries: list[Any]
    if page_id is None:
        entries = [document]
    elif isinstance(document, dict):
        entries = document.get(page_id) or []
        entries = entries if isinstance(entries, list) else []
    else:
        return None
    percent, regain = 0.0, 0
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        for name in ("call_count", "total_time", "total_cputime"):
            value = entry.get(name)
            if isinstance(value, int | float):
                percent = max(percent, float(value))
        minutes = entry.get("estimated_time_to_regain_access")
        if isinstance(minutes, int | float):
            regain = max(regain, int(minutes))
    return percent, regain


class GraphClient(HttpClient):
    """Calls on behalf of one page, through the shared limiter."""

    service = "graph"

    def __init__(
        self,
        *,
        page_id: str,
        access_token: str,
        base_url: str | None = None,
        limiter: Limiter | None = None,
        page_rate: float | None = None,
        app_rate: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
        deadline: float | None = None,
    ) -> None:
        super().__init__(
            base_url or settings.GRAPH_API_BASE_URL,
            timeout=(3.05, settings.GRAPH_TIMEOUT_SECONDS),
            retry=RetryPolicy(max_attempts=4, backoff_base=0.5, backoff_max=16.0),
            headers={"Authorization": f"Bearer {access_token}"},
            sleep=self._wait,
        )
        self.page_id = page_id
        self.page_key = f"graph:page:{page_id}"
        self.app_key = "graph:app"
        self.buckets = [
            Bucket(self.page_key, page_rate or settings.GRAPH_PAGE_CALLS_PER_SECOND),
            Bucket(self.app_key, app_rate or settings.GRAPH_APP_CALLS_PER_SECOND),
        ]
        self.limiter = limiter or default_rate_limiter()
        self._sleep = sleep
        self.deadline = deadline  # time.monotonic() value; None for no limit
        # One client may serve two threads (the sync prefetches the next page while it writes):
        # its counters are counted under a lock, or an increment could be lost.
        self._counting = threading.Lock()
        self.calls = 0
        self.throttled_waits = 0
        self._reported: dict[str, float] = {}

    # -- the hooks of the base client ------------------------------------------------------------

    def _wait(self, seconds: float) -> None:
        if self.deadline is not None and time.monotonic() + seconds > self.deadline:
            raise OutOfTime(f"a wait of {seconds:.1f} s would pass the run's time budget")
        self._sleep(seconds)

    def before_attempt(self) -> None:
        reservation = self.limiter.reserve(self.buckets)
        if reservation.throttled:
            with self._counting:
                self.throttled_waits += 1
        if reservation.wait > 0:
            self._wait(reservation.wait)
        with self._counting:
            self.calls += 1

    def after_attempt(self, response: requests.Response) -> None:
        """Feed Meta's usage figures back to the limiter (only past the slow-down line, or
        when coming back below it: the common case costs no statement)."""
        for key, usage in (
            (
                self.page_key,
                _usage_percent(response.headers.get("X-Business-Use-Case-Usage"), self.page_id),
            ),
            (self.app_key, _usage_percent(response.headers.get("X-App-Usage"))),
        ):
            if usage is None:
                continue
            percent, regain_minutes = usage
            if percent >= 75 or self._reported.get(key, 0) >= 75:
                self.limiter.report_usage(key, min(percent, 100.0))
                self._reported[key] = percent
            if percent >= 100 and regain_minutes > 0:
                # Meta's own estimate, whole: calling before it only extends the block.
                self.limiter.block(key, timedelta(minutes=regain_minutes))

    # -- calls -----------------------------------------------------------------------------------

    def get(self, path: str, params: dict[str, Any], shape: type[Shape]) -> Shape:
        for throttled in range(1, MAX_THROTTLED_IN_A_ROW + 1):
            try:
                response = self.request("GET", path, params=params)
            except UpstreamUnavailable as error:
                raise GraphUnavailable(str(error)) from error
            if response.status_code == 200:
                try:
                    return shape.model_validate_json(response.content)
                except ValidationError as error:
                    raise SchemaDrift(_drift_summary(path, error)) from error
            code, message = _error_of(response)
            if code in THROTTLE_CODES:
                self._block_after_throttling(response, code, throttled)
                continue
            if code == TOKEN_INVALID_CODE:
                raise TokenInvalid(f"the page token was refused: {message}", graph_code=code)
            raise GraphError(
                f"GET {path}: HTTP {response.status_code}, code {code}: {message}",
                graph_code=code,
            )
        raise Throttled(f"GET {path}: still throttled after {MAX_THROTTLED_IN_A_ROW} waits")

    def _block_after_throttling(
        self, response: requests.Response, code: int | None, attempt: int
    ) -> None:
        """Stop calling through the throttled bucket: for the whole regain time Meta names, else
        for an exponentially growing pause capped by GRAPH_THROTTLE_MAX_WAIT_SECONDS (Meta: more
        calls while limited extend the block)."""
        key = self.app_key if code in APP_THROTTLE_CODES else self.page_key
        header = "X-App-Usage" if key == self.app_key else "X-Business-Use-Case-Usage"
        usage = _usage_percent(
            response.headers.get(header), None if key == self.app_key else self.page_id
        )
        regain_minutes = usage[1] if usage else 0
        if regain_minutes:
            # Honoured in full: Meta keeps refusing (and may extend the block) until then.
            self.limiter.block(key, timedelta(minutes=regain_minutes))
            return
        # No estimate: a growing pause, bounded by the operator's setting.
        pause = min(60.0, 2.0**attempt, float(settings.GRAPH_THROTTLE_MAX_WAIT_SECONDS))
        self.limiter.block(key, timedelta(seconds=pause))

    def conversations(
        self, *, folder: str, after: str | None, limit: int = 100, message_limit: int = 100
    ) -> ConversationPage:
        params = {
            "platform": "messenger",
            "folder": folder,
            "limit": str(limit),
            "fields": (
                "id,updated_time,message_count,participants,"
                f"messages.limit({message_limit}){{{MESSAGE_FIELDS}}}"
            ),
        }
        if after:
            params["after"] = after
        return self.get(f"{self.page_id}/conversations", params, ConversationPage)

    def messages(self, *, thread_id: str, after: str | None, limit: int = 100) -> MessagePage:
        params = {"limit": str(limit), "fields": MESSAGE_FIELDS}
        if after:
            params["after"] = after
        return self.get(f"{thread_id}/messages", params, MessagePage)


def _drift_summary(path: str, error: ValidationError) -> str:
    problems = [
        f"{'.'.join(str(part) for part in item['loc']) or '(document)'}: {item['msg']}"
        for item in error.errors(include_url=False, include_input=False)[:5]
    ]
    return f"GET {path}: unexpected response shape: " + "; ".join(problems)
