"""The shared rate limiter, on PostgreSQL and on Redis: the same contract on both."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.db import connection

from evoflow.ratelimit import Bucket, Limiter, RateLimiter, RedisRateLimiter
from tests.helpers import free_port


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A throwaway redis-server (installed by `make test`'s system packages step)."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    else:
        process.kill()
        pytest.fail("redis-server did not start")
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture(params=["postgres", "redis"])
def limiter(request, transactional_db) -> Limiter:
    if request.param == "redis":
        return RedisRateLimiter(request.getfixturevalue("redis_url"), prefix=f"t{time.time()}:")
    return RateLimiter()


def test_reservations_are_spaced_at_the_bucket_rate(limiter):
    bucket = Bucket("graph:page:spacing", rate=10.0)
    waits = [limiter.reserve([bucket]).wait for _ in range(5)]
    # The first token is there; each next one is a tenth of a second further away.
    assert waits[0] == 0
    for position, wait in enumerate(waits[1:], start=1):
        assert position * 0.1 - 0.05 <= wait <= position * 0.1 + 0.001


def test_a_call_waits_for_the_slowest_of_its_buckets(limiter):
    page, app = Bucket("graph:page:slow", rate=2.0), Bucket("graph:app:fast", rate=100.0)
    limiter.reserve([page, app])
    second = limiter.reserve([page, app])
    assert 0.45 <= second.wait <= 0.5001
    assert not second.throttled


def test_usage_past_the_threshold_slows_the_bucket_down(limiter):
    bucket = Bucket("graph:page:usage", rate=10.0)
    limiter.reserve([bucket])
    limiter.report_usage(bucket.key, 90.0)  # 40% of the rate left: (100 - 90) / (100 - 75)
    wait = limiter.reserve([bucket]).wait
    assert 0.2 <= wait <= 0.2501


def test_a_throttled_bucket_blocks_everyone_until_the_regain_time(limiter):
    bucket = Bucket("graph:page:blocked", rate=100.0)
    limiter.reserve([bucket])
    limiter.block(bucket.key, timedelta(seconds=30))
    limiter.block(bucket.key, timedelta(seconds=5))  # never shortens a longer block
    reservation = limiter.reserve([bucket])
    assert reservation.throttled
    assert 29 <= reservation.wait <= 30


def test_threads_with_their_own_connections_share_one_bucket(limiter):
    """Eight callers at once, each on its own database connection: their reservations
    interleave into one queue, spaced at the rate, none sharing a slot."""
    bucket = Bucket("graph:page:shared", rate=20.0)
    slots: list[float] = []
    lock = threading.Lock()

    def caller() -> None:
        try:
            for _ in range(5):
                reserved_at = time.monotonic()
                wait = limiter.reserve([bucket]).wait
                with lock:
                    slots.append(reserved_at + wait)
        finally:
            connection.close()

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    slots.sort()
    assert len(slots) == 40
    # One queue for all: 40 slots 1/20 s apart span about two seconds (eight private buckets
    # would have spanned a quarter of one). The slack covers the time between a clock read and
    # the reservation it precedes (row-lock waits under contention).
    assert slots[-1] - slots[0] >= 39 * 0.05 - 0.25


def test_callers_queued_behind_a_block_resume_one_slot_apart(limiter):
    """Everyone calling the moment a block ends is the burst that extends Meta's block."""
    bucket = Bucket("graph:page:after-block", rate=10.0)
    limiter.reserve([bucket])
    limiter.block(bucket.key, timedelta(seconds=5))
    waits = [limiter.reserve([bucket]).wait for _ in range(4)]
    assert all(4.5 <= wait <= 5.5 for wait in waits)
    gaps = [later - earlier for earlier, later in zip(waits, waits[1:], strict=False)]
    assert all(0.05 <= gap <= 0.11 for gap in gaps), gaps
