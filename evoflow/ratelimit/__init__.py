"""One rate limiter for every process on every host: token buckets in PostgreSQL (or Redis).

A call reserves one token from each of its buckets (for the Graph API: its page's and the app's)
in ONE statement, and learns how long to wait: tokens refill at the bucket's rate up to its
capacity, and may go below zero, so concurrent callers queue up in the order they reserved and
each waits for its own slot (no thundering herd, no lost wake-ups). With capacity 1 the calls of
a bucket are spaced 1/rate apart whatever the number of workers.

The service's own signals adjust the buckets for everyone: a reported usage past
`SLOW_DOWN_FROM` percent shrinks the refill rate (down to a tenth at 100%), and throttling blocks
the bucket until the time the service names; the callers queued behind a block get their slots
from its end on, one per 1/rate, not all at once. Each caller then sleeps out its own wait; nothing
is held in the database while it does (call it outside a transaction: inside one, the bucket's
row lock would serialise the callers until commit).

`base` holds what the backends share (buckets, reservations, the `Limiter` interface),
`postgres` the default backend and `redis` the one used when REDIS_URL is configured;
`default_rate_limiter()` picks between them.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from evoflow.ratelimit.base import SLOW_DOWN_FROM, SLOWEST_FACTOR, Bucket, Limiter, Reservation
from evoflow.ratelimit.postgres import RateLimiter
from evoflow.ratelimit.redis import RedisRateLimiter

__all__ = [
    "SLOWEST_FACTOR",
    "SLOW_DOWN_FROM",
    "Bucket",
    "Limiter",
    "RateLimiter",
    "RedisRateLimiter",
    "Reservation",
    "default_rate_limiter",
]


def default_rate_limiter(*, sleep: Callable[[float], None] = time.sleep) -> Limiter:
    """The limiter every process shares: Redis when REDIS_URL is configured, else PostgreSQL."""
    from django.conf import settings

    if settings.REDIS_URL:
        return RedisRateLimiter(settings.REDIS_URL, sleep=sleep)
    return RateLimiter(sleep=sleep)
