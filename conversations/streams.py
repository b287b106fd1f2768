"""The progress stream of a sync run: `GET /api/v1/sync-runs/{id}/stream/` (server-sent events).

`event: progress` whenever the run's row changes, `: keep-alive` comments in between, and one
`event: end` with the final status (or `event: timeout` after STREAM_MAX_SECONDS, or
`event: deleted` when the run is gone); every event carries the run's request id. The data of
`progress`, `end` and `timeout` is the run exactly as `GET /api/v1/sync-runs/{id}/` shows it
(`SyncRunOutput`): one shape of a run wherever it appears (docs/api.md).

Why it lives apart from the rest of the API: a stream holds its request thread for as long as
it is open (up to 30 minutes), unlike every other view. Left unbounded, a few open progress
pages would occupy every request thread of a web process, and `/healthz`, the admin and the API
would wait behind them. The approach chosen, as the simplest one that is correct:

- the web server runs threaded workers (gunicorn `gthread`, see gunicorn.conf.py and
  docs/operations.md; `runserver` is threaded too), so a stream costs one thread, not a whole
  process; it holds no database connection while it waits (it reconnects for each poll);
- each process admits at most `SSE_MAX_STREAMS_PER_PROCESS` open streams, fewer than its
  threads, so some threads always remain for every other request; the stream beyond the cap
  is refused at once with 429 `too_many_streams` and a `Retry-After`, in the API's one error
  format, instead of queueing behind the others.

An async view under ASGI would hold no thread at all, but it needs another server, an async
database path for the polls, and every other view running through sync-to-async adapters: much
more moving parts for a page that a handful of operators open.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connection
from django.http import HttpResponseBase, StreamingHttpResponse
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.exceptions import NotFound
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from conversations.api import CanSyncPages, SyncRunOutput
from conversations.models import SYNC_LIVE_STATUSES, SyncRun
from evoflow.errors import DomainError

# The stream's pace. Module constants so a test can make them short.
STREAM_POLL_SECONDS = 0.5
STREAM_KEEPALIVE_SECONDS = 5.0
# A client that never goes away (or a run that never ends) does not hold a thread and a
# database connection for ever: the stream closes with `event: timeout`; clients reconnect.
STREAM_MAX_SECONDS = 30 * 60
# What a refused client is told to wait: about the time a progress page takes to be closed.
STREAM_RETRY_AFTER_SECONDS = 30

TOO_MANY_STREAMS = "too_many_streams"


class TooManyStreams(DomainError):
    code = TOO_MANY_STREAMS
    status = status.HTTP_429_TOO_MANY_REQUESTS
    default_detail = "Too many progress streams are open on this server; retry later."
    retry_after = STREAM_RETRY_AFTER_SECONDS


class StreamSlots:
    """How many streams this process has open, against the cap read from settings."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.open = 0

    def try_acquire(self) -> bool:
        with self._lock:
            if self.open >= settings.SSE_MAX_STREAMS_PER_PROCESS:
                return False
            self.open += 1
            return True

    def release(self) -> None:
        with self._lock:
            self.open -= 1


STREAM_SLOTS = StreamSlots()


class _SlotHoldingStream:
    """The events of a stream, giving its slot back exactly once when the response is closed.

    The WSGI server closes the response whichever way it ends (finished, client gone, error),
    and Django passes that on to this object's `close`. A `finally` in the generator alone
    would not do: a generator that never started runs no `finally` when it is closed.
    """

    def __init__(self, events: Iterator[bytes], slots: StreamSlots) -> None:
        self._events = events
        self._slots: StreamSlots | None = slots

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        return next(self._events)

    def close(self) -> None:
        try:
            close = getattr(self._events, "close", None)
            if close is not None:
                close()
        finally:
            slots, self._slots = self._slots, None
            if slots is not None:
                slots.release()


class EventStreamRenderer(BaseRenderer):
    media_type = "text/event-stream"
    format = "event-stream"
    charset = "utf-8"

    def render(
        self,
        data: Any,
        accepted_media_type: str | None = None,
        renderer_context: Any = None,
    ) -> bytes:
        return json.dumps(data).encode()


def sync_run_progress(run: SyncRun) -> dict[str, Any]:
    """What an event says: the run as the REST API shows it (nothing secret)."""
    return dict(SyncRunOutput(run).data)


def _sse(event: str, data: dict[str, Any], event_id: str) -> bytes:
    return f"id: {event_id}\nevent: {event}\ndata: {json.dumps(data)}\n\n".encode()


def sync_run_events(
    run_id: int,
    *,
    poll_seconds: float | None = None,
    keepalive_seconds: float | None = None,
    max_seconds: float | None = None,
) -> Iterator[bytes]:
    """Server-sent events of one run until it ends. Runs after the view has returned (the
    response streams it), so it reads the row with fresh queries in autocommit and closes its
    database connection when it stops, whichever way it stops."""
    poll = STREAM_POLL_SECONDS if poll_seconds is None else poll_seconds
    keepalive = STREAM_KEEPALIVE_SECONDS if keepalive_seconds is None else keepalive_seconds
    limit = STREAM_MAX_SECONDS if max_seconds is None else max_seconds
    started = last_sent = time.monotonic()
    sequence = 0
    previous: dict[str, Any] | None = None
    request_id = ""
    try:
        yield b"retry: 2000\n\n"
        while True:
            run = SyncRun.objects.select_related("page").filter(pk=run_id).first()
            if not connection.in_atomic_block:
                # No connection held while the stream waits for its client or its next poll:
                # an open (or abandoned) stream costs no PostgreSQL backend meanwhile.
                connection.close()
            if run is None:
                sequence += 1
                data = {"id": run_id, "request_id": request_id or None}
                yield _sse("deleted", data, f"{request_id}:{sequence}")
                return
            request_id = run.request_id
            snapshot = sync_run_progress(run)
            if run.status not in SYNC_LIVE_STATUSES:
                sequence += 1
                yield _sse("end", snapshot, f"{request_id}:{sequence}")
                return
            now = time.monotonic()
            if snapshot != previous:
                previous = snapshot
                sequence += 1
                last_sent = now
                yield _sse("progress", snapshot, f"{request_id}:{sequence}")
            elif now - last_sent >= keepalive:
                last_sent = now
                yield b": keep-alive\n\n"
            if now - started >= limit:
                sequence += 1
                yield _sse("timeout", snapshot, f"{request_id}:{sequence}")
                return
            time.sleep(poll)
    finally:
        # The request's own cleanup (request_finished) may run in another thread or not at
        # all for an abandoned stream: this generator closes what it opened.
        # (Inside a transaction, as under a test's TestCase, the owner closes it.)
        if not connection.in_atomic_block:
            close_old_connections()
            connection.close()


@extend_schema(tags=["sync"])
class SyncRunStreamApi(APIView):
    permission_classes = [CanSyncPages]
    renderer_classes = [JSONRenderer, EventStreamRenderer]

    @extend_schema(
        operation_id="sync_runs_stream",
        summary="Follow a sync run (server-sent events)",
        description=(
            "Server-sent events (`text/event-stream`) of one run until it ends. Events:\n\n"
            "- `progress`: whenever the run changes; `data:` is a `SyncRunOutput` (the run as "
            "`GET /api/v1/sync-runs/{run_id}/` shows it);\n"
            "- `end`: once, when the run has finished; `data:` is its final `SyncRunOutput`;\n"
            "- `timeout`: after 30 minutes, with the current `SyncRunOutput`: reconnect;\n"
            "- `deleted`: the run no longer exists; `data:` is `{id, request_id}`.\n\n"
            "`: keep-alive` comments come every ~5 s. Every event's `id:` is "
            "`<request_id>:<sequence>`. A server process keeps a bounded number of streams "
            "open: beyond it, `429 too_many_streams` with `Retry-After`. Errors are JSON."
        ),
        # `?format=` only picks a renderer; the stream is asked for with its Accept header.
        parameters=[OpenApiParameter("format", exclude=True)],
        responses={
            (200, "text/event-stream"): OpenApiResponse(
                response=SyncRunOutput,
                description=(
                    "the event stream; the schema is that of the `data:` of `progress`, `end` "
                    "and `timeout` events"
                ),
            ),
            404: OpenApiResponse(description="not_found: no such run"),
            429: OpenApiResponse(
                description="too_many_streams: this server process has its maximum of open "
                "streams; retry after the Retry-After header's seconds"
            ),
        },
    )
    def get(self, request: Request, run_id: int) -> HttpResponseBase:
        run = SyncRun.objects.filter(pk=run_id).first()
        if run is None:
            raise NotFound("No such sync run.")
        if not STREAM_SLOTS.try_acquire():
            raise TooManyStreams()
        try:
            events = _SlotHoldingStream(sync_run_events(run.pk), STREAM_SLOTS)
        except BaseException:
            STREAM_SLOTS.release()
            raise
        response = StreamingHttpResponse(events, content_type="text/event-stream; charset=utf-8")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
        return response

    def finalize_response(  # type: ignore[override]
        self, request: Request, response: HttpResponseBase, *args: Any, **kwargs: Any
    ) -> HttpResponseBase:
        # Errors are JSON in the one error format, whatever the client accepts.
        if isinstance(response, Response):
            request.accepted_renderer = JSONRenderer()
            request.accepted_media_type = JSONRenderer.media_type
        return super().finalize_response(request, response, *args, **kwargs)  # type: ignore[arg-type]
