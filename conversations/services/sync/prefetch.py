"""The full sync's read-ahead: the next batch fetched and made ready in a second thread."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from django.db import connection

from evoflow.requestid import bound_request_id, get_request_id

logger = logging.getLogger(__name__)


def _close_connection() -> None:
    connection.close()


def _with_request_id(request_id: str, call: Callable[[], Any]) -> Any:
    with bound_request_id(request_id):
        return call()


class Prefetcher:
    """One page of conversations fetched ahead in a thread, so that a full sync reads the next
    page from the Graph API while PostgreSQL writes the current one. The thread has its own
    database connection (the rate limiter and heartbeats use it), closed with the prefetcher."""

    def __init__(self) -> None:
        self.executor: ThreadPoolExecutor | None = None
        self.pending: tuple[str, str, Future[Any]] | None = None

    def start(self, folder: str, after: str, fetch: Callable[[], Any]) -> None:
        self.discard()
        if self.executor is None:
            self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sync-prefetch")
        # The run's request id for the thread's log lines. (Not a copy of the whole context:
        # Django keeps connections in context-local storage, and the thread needs its own.)
        self.pending = (
            folder,
            after,
            self.executor.submit(_with_request_id, get_request_id(), fetch),
        )

    def take(self, folder: str, after: str | None) -> Future[Any] | None:
        if self.pending is not None and self.pending[:2] == (folder, after):
            future = self.pending[2]
            self.pending = None
            return future
        self.discard()
        return None

    def discard(self) -> None:
        if self.pending is not None:
            _, _, future = self.pending
            self.pending = None
            try:
                future.result()
            except BaseException:  # a fetch nobody will use: its failure does not matter
                logger.debug("discarded prefetch failed", exc_info=True)

    def close(self) -> None:
        self.discard()
        if self.executor is not None:
            self.executor.submit(_close_connection).result()  # the thread's own
            self.executor.shutdown(wait=True)
            self.executor = None
