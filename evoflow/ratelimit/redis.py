"""The shared rate limiter's buckets in Redis, for deployments that configure REDIS_URL.

Same contract as the PostgreSQL buckets of `evoflow.ratelimit.postgres` (reserve a token from every
bucket at once and learn how long to wait; usage reports slow a bucket down; throttling blocks
it), in one Lua script per operation, so each is atomic on the Redis server and uses the
server's clock: every worker on every host agrees on time and order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from evoflow.ratelimit.base import SLOW_DOWN_FROM, SLOWEST_FACTOR, Bucket, Reservation

# Buckets idle for a day are forgotten (they start full again, as new ones do).
IDLE_EXPIRY_SECONDS = 86_400

_RESERVE = f"""
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local wait, throttled = 0, 0
for i, key in ipairs(KEYS) do
    local rate, capacity = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
    local state = redis.call('HMGET', key, 'tokens', 'refilled_at', 'usage', 'blocked_until')
    local tokens = tonumber(state[1]) or capacity
    local refilled_at = tonumber(state[2]) or now
    local usage = tonumber(state[3]) or 0
    local blocked_until = tonumber(state[4]) or 0
    local effective = rate
    if usage > {SLOW_DOWN_FROM} then
        effective = rate * math.max({SLOWEST_FACTOR}, (100 - usage) / (100 - {SLOW_DOWN_FROM}))
    end
    -- refilled_at may lie ahead (a block moved it to its end): the debt then grows.
    tokens = math.min(capacity, tokens + effective * (now - refilled_at)) - 1
    redis.call('HSET', key, 'tokens', tokens, 'refilled_at', now, 'rate', rate,
        'capacity', capacity)
    redis.call('EXPIRE', key, {IDLE_EXPIRY_SECONDS})
    if tokens < 0 then wait = math.max(wait, -tokens / effective) end
    if blocked_until > now then
        wait = math.max(wait, blocked_until - now)
        throttled = 1
    end
end
return {{tostring(wait), throttled}}
"""

# As in PostgreSQL: a block moves the refill clock to its end, so the callers queued during it
# resume one slot per 1/rate instead of all at once.
_BLOCK = f"""
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local until_ = now + tonumber(ARGV[1])
local state = redis.call('HMGET', KEYS[1], 'blocked_until', 'tokens', 'refilled_at', 'rate',
    'capacity', 'usage')
local current = tonumber(state[1]) or 0
if until_ > current then
    local rate, capacity = tonumber(state[4]), tonumber(state[5])
    if rate and capacity then
        local usage = tonumber(state[6]) or 0
        local effective = rate
        if usage > {SLOW_DOWN_FROM} then
            effective = rate * math.max({SLOWEST_FACTOR}, (100 - usage) / (100 - {SLOW_DOWN_FROM}))
        end
        local tokens = tonumber(state[2]) or capacity
        local refilled_at = tonumber(state[3]) or now
        tokens = math.min(capacity, tokens + effective * (until_ - refilled_at))
        redis.call('HSET', KEYS[1], 'tokens', tokens, 'refilled_at', until_)
    end
    redis.call('HSET', KEYS[1], 'blocked_until', until_)
end
return 1
"""

_BLOCKED_FOR = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local blocked_until = tonumber(redis.call('HGET', KEYS[1], 'blocked_until')) or 0
return tostring(math.max(0, blocked_until - now))
"""


class RedisRateLimiter:
    """The PostgreSQL `RateLimiter`'s interface over Redis hashes (one per bucket key)."""

    def __init__(
        self, url: str, *, sleep: Callable[[float], None] = time.sleep, prefix: str = "evoflow:"
    ) -> None:
        import redis

        self.redis: Any = redis.Redis.from_url(url)
        self.sleep = sleep
        self.prefix = prefix
        self._reserve = self.redis.register_script(_RESERVE)
        self._block = self.redis.register_script(_BLOCK)
        self._blocked_for = self.redis.register_script(_BLOCKED_FOR)

    def _key(self, key: str) -> str:
        return self.prefix + key

    def reserve(self, buckets: Sequence[Bucket]) -> Reservation:
        arguments: list[float] = []
        for bucket in buckets:
            arguments += [bucket.rate, bucket.capacity]
        wait, throttled = self._reserve(
            keys=[self._key(bucket.key) for bucket in buckets], args=arguments
        )
        return Reservation(max(0.0, float(wait)), bool(throttled))

    def acquire(self, buckets: Sequence[Bucket]) -> Reservation:
        reservation = self.reserve(buckets)
        if reservation.wait > 0:
            self.sleep(reservation.wait)
        return reservation

    def report_usage(self, key: str, percent: float) -> None:
        self.redis.hset(self._key(key), "usage", percent)

    def block(self, key: str, duration: timedelta) -> None:
        self._block(keys=[self._key(key)], args=[duration.total_seconds()])

    def blocked_for(self, key: str) -> float:
        return float(self._blocked_for(keys=[self._key(key)]))
