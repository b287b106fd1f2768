"""The shared rate limiter's token buckets in PostgreSQL (the default backend).

A call reserves one token from each of its buckets in ONE statement, and learns how long to wait
(see the package's docstring for the model). Call it outside a transaction: inside one, the
bucket's row lock would serialise the callers until commit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import timedelta

from django.db import connection

from evoflow.ratelimit.base import SLOW_DOWN_FROM, SLOWEST_FACTOR, Bucket, Reservation

# The refill rate, slowed down past the usage threshold.
_EFFECTIVE_RATE = f"""
    (b.rate * CASE WHEN b.usage_percent <= {SLOW_DOWN_FROM} THEN 1.0
        ELSE greatest({SLOWEST_FACTOR}, (100.0 - b.usage_percent) / (100.0 - {SLOW_DOWN_FROM}))
        END)"""

_RESERVE = f"""
WITH k AS (
    SELECT * FROM unnest(%s::text[], %s::float8[], %s::float8[]) AS k(key, rate, capacity)
), reserved AS (
    INSERT INTO evoflow_ratebucket AS b (key, rate, capacity, tokens, refilled_at, usage_percent)
    SELECT key, rate, capacity, capacity - 1, clock_timestamp(), 0 FROM k ORDER BY key
    ON CONFLICT (key) DO UPDATE SET
        rate = EXCLUDED.rate,
        capacity = EXCLUDED.capacity,
        tokens = least(EXCLUDED.capacity, b.tokens + {_EFFECTIVE_RATE}
            * extract(epoch FROM clock_timestamp() - b.refilled_at)) - 1,
        refilled_at = clock_timestamp()
    RETURNING b.tokens, {_EFFECTIVE_RATE} AS effective_rate,
        extract(epoch FROM b.blocked_until - clock_timestamp()) AS blocked_for
)
SELECT coalesce(max(greatest(
    CASE WHEN tokens < 0 THEN -tokens / effective_rate ELSE 0 END,
    coalesce(blocked_for, 0))), 0),
    coalesce(bool_or(blocked_for > 0), false)
FROM reserved
"""


# A block moves the bucket's refill clock to its end: the tokens are what they will be then,
# so the callers reserving during the block get slots from its end on, one per 1/rate, instead
# of all calling the moment it ends (a burst that would extend Meta's block).
_BLOCK = f"""
UPDATE evoflow_ratebucket AS b SET
    tokens = CASE WHEN n.until > coalesce(b.blocked_until, '-infinity')
        THEN least(b.capacity,
            b.tokens + {_EFFECTIVE_RATE} * extract(epoch FROM n.until - b.refilled_at))
        ELSE b.tokens END,
    refilled_at = CASE WHEN n.until > coalesce(b.blocked_until, '-infinity')
        THEN n.until ELSE b.refilled_at END,
    blocked_until = greatest(b.blocked_until, n.until)
FROM (SELECT clock_timestamp() + make_interval(secs => %s) AS until) AS n
WHERE b.key = %s
"""


class RateLimiter:
    """Reserve, then sleep: `acquire` returns its reservation once waited out."""

    def __init__(self, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.sleep = sleep

    def reserve(self, buckets: Sequence[Bucket]) -> Reservation:
        """Take a token from every bucket; how long to wait before calling."""
        ordered = sorted(buckets, key=lambda bucket: bucket.key)
        with connection.cursor() as cursor:
            cursor.execute(
                _RESERVE,
                [
                    [bucket.key for bucket in ordered],
                    [float(bucket.rate) for bucket in ordered],
                    [float(bucket.capacity) for bucket in ordered],
                ],
            )
            row = cursor.fetchone()
        if row is None:
            return Reservation(0.0, False)
        return Reservation(max(0.0, float(row[0])), bool(row[1]))

    def acquire(self, buckets: Sequence[Bucket]) -> Reservation:
        reservation = self.reserve(buckets)
        if reservation.wait > 0:
            self.sleep(reservation.wait)
        return reservation

    @staticmethod
    def report_usage(key: str, percent: float) -> None:
        """The service's usage figure for this bucket (percent of its quota)."""
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE evoflow_ratebucket SET usage_percent = %s"
                " WHERE key = %s AND usage_percent IS DISTINCT FROM %s",
                [percent, key, percent],
            )

    @staticmethod
    def block(key: str, duration: timedelta) -> None:
        """Nobody calls through this bucket for `duration` (never shortens a longer block)."""
        with connection.cursor() as cursor:
            cursor.execute(_BLOCK, [duration.total_seconds(), key])

    @staticmethod
    def blocked_for(key: str) -> float:
        """Seconds this bucket stays blocked (0 when it is not)."""
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT greatest(0, extract(epoch FROM blocked_until - clock_timestamp()))"
                " FROM evoflow_ratebucket WHERE key = %s",
                [key],
            )
            row = cursor.fetchone()
        return float(row[0]) if row and row[0] is not None else 0.0
