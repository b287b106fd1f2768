"""Graph calls served per page, with their times: what a test reads to check a client's pace.

Meta's Business Use Case limits count calls per page, so a sync that spreads its calls over
pages must keep each page under its rate; `calls_max_in_window` is the check.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any


class PageCalls:
    """Served Graph calls per page: counts per endpoint and arrival times. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._endpoints: dict[str, Counter[str]] = {}
            self._times: dict[str, list[float]] = {}

    def record(self, page_id: str, endpoint: str) -> None:
        now = time.time()
        with self._lock:
            self._endpoints.setdefault(page_id, Counter())[endpoint] += 1
            self._times.setdefault(page_id, []).append(now)

    def times(self, page_id: str) -> list[float]:
        with self._lock:
            return list(self._times.get(page_id, ()))

    def snapshot(self, page_ids: Sequence[str]) -> dict[str, Any]:
        with self._lock:
            return {
                page_id: {
                    "calls": len(self._times.get(page_id, ())),
                    "endpoints": dict(self._endpoints.get(page_id, {})),
                    "timestamps": list(self._times.get(page_id, ())),
                }
                for page_id in page_ids
            }


def calls_max_in_window(times: Sequence[float], window_s: float = 1.0) -> int:
    """The most calls among `times` within any window of `window_s` seconds (end excluded)."""
    ordered = sorted(times)
    best, start = 0, 0
    for end, moment in enumerate(ordered):
        while moment - ordered[start] >= window_s:
            start += 1
        best = max(best, end - start + 1)
    return best
