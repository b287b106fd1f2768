"""What every rate limiter backend shares: buckets, reservations and the limiter's interface.

The slow-down constants live here too, because each backend computes the same effective rate
from the usage the service reports (in SQL for PostgreSQL, in Lua for Redis).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

SLOW_DOWN_FROM = 75.0  # percent of quota, as reported by the service
SLOWEST_FACTOR = 0.1  # share of the rate left at 100%


@dataclass(frozen=True)
class Bucket:
    key: str
    rate: float  # calls per second
    capacity: float = 1.0

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.capacity < 1:
            raise ValueError("a bucket needs a positive rate and a capacity of at least 1")


@dataclass(frozen=True)
class Reservation:
    wait: float  # seconds to wait before calling
    throttled: bool  # a bucket is blocked by the service's throttling


class Limiter(Protocol):
    """What a client needs from a shared limiter (the PostgreSQL or the Redis backend)."""

    def reserve(self, buckets: Sequence[Bucket]) -> Reservation: ...

    def report_usage(self, key: str, percent: float) -> None: ...

    def block(self, key: str, duration: timedelta) -> None: ...
