"""F6: Meta's usage headers feed the shared limiter. The Graph simulator sends `X-App-Usage` and
`X-Business-Use-Case-Usage` like Meta; the client, over HTTP, slows both buckets past 75%, comes
back when the figures drop, and honours Meta's `estimated_time_to_regain_access` in full (the
`GRAPH_THROTTLE_MAX_WAIT_SECONDS` cap bounds only the pause it picks when Meta names none)."""

from __future__ import annotations

import time

import pytest
from django.db import connection

from conversations.graph_client import GraphClient, OutOfTime, Throttled
from conversations.simulator.graph import GraphSimulator
from evoflow.ratelimit import RateLimiter

pytestmark = pytest.mark.django_db(transaction=True)

PAGE = "111222333"
PAGE_KEY = f"graph:page:{PAGE}"
APP_KEY = "graph:app"


def _usage(key: str) -> float | None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT usage_percent FROM evoflow_ratebucket WHERE key = %s", [key])
        row = cursor.fetchone()
    return None if row is None else float(row[0])


def _client(base: str, *, rate: float, deadline: float | None = None) -> GraphClient:
    return GraphClient(
        page_id=PAGE,
        access_token="sim-page-token",
        base_url=base + "/v21.0",
        page_rate=rate,
        app_rate=rate,
        deadline=deadline,
    )


def _read(client: GraphClient) -> None:
    client.conversations(folder="inbox", after=None, limit=5, message_limit=1)


def _spacing(limiter: RateLimiter, client: GraphClient) -> float:
    """How much longer a caller waits than the one right before it: 1 / the slowest bucket's
    effective rate (the two reservations queue behind each other)."""
    first = limiter.reserve(client.buckets).wait
    return limiter.reserve(client.buckets).wait - first


def test_usage_past_75_percent_slows_both_buckets_and_a_lower_figure_restores_them(settings):
    # Given a page whose quota is 4 calls a minute (the simulator's usage is calls / quota)
    sim = GraphSimulator(conversations=10, messages=20, rate_limit=4, rate_window_s=60)
    limiter = RateLimiter()
    with sim.running() as base:
        client = _client(base, rate=50)
        # When two calls use half the quota
        _read(client)
        _read(client)
        # Then nothing is reported (below the slow-down line, the common case costs nothing)
        assert _usage(PAGE_KEY) == _usage(APP_KEY) == 0
        unslowed = _spacing(limiter, client)

        # When the fourth call reaches 100% of the quota (not over it: no throttling yet)
        _read(client)
        _read(client)

        # Then both buckets carry Meta's figures, each from its own header
        assert _usage(PAGE_KEY) == 100  # X-Business-Use-Case-Usage, the page's entry
        assert _usage(APP_KEY) == 100  # X-App-Usage
        # ...and callers behind each other are spaced ten times further apart (a tenth of
        # the rate at 100%)
        slowed = _spacing(limiter, client)
        assert unslowed == pytest.approx(1 / 50, rel=0.25)
        assert slowed == pytest.approx(10 / 50, rel=0.25)

        # When Meta's window drains and the next answer reports a low figure
        sim.page().rate_window_clear()
        time.sleep(1.0)  # the slots the spacing measurement reserved
        _read(client)

    # Then the buckets are back to their full rate
    assert _usage(PAGE_KEY) == _usage(APP_KEY) == 25
    assert _spacing(limiter, client) == pytest.approx(1 / 50, rel=0.25)


def test_a_throttled_answer_blocks_the_page_for_metas_whole_regain_time(settings):
    # Given an operator cap far below what Meta asks for
    settings.GRAPH_THROTTLE_MAX_WAIT_SECONDS = 2
    # ...and a page throttled for about two minutes once past 1 call (regain: 2 minutes)
    sim = GraphSimulator(conversations=5, messages=5, rate_limit=1, rate_window_s=120)
    with sim.running() as base:
        client = _client(base, rate=100, deadline=time.monotonic() + 10)
        _read(client)

        # When the next call is throttled: the client may not wait past its run's budget
        with pytest.raises(OutOfTime):
            _read(client)

    # Then every worker's page bucket is blocked for Meta's 2 minutes, not the 2 s cap
    assert RateLimiter.blocked_for(PAGE_KEY) > 110
    assert RateLimiter.blocked_for(APP_KEY) == 0
    assert sim.counters.snapshot()["calls"]["conversations"] == 2


def test_without_a_regain_estimate_the_pause_grows_up_to_the_cap(settings):
    # Given a page throttled past 1 call in 20 s: under half a minute, Meta's estimate is 0
    settings.GRAPH_THROTTLE_MAX_WAIT_SECONDS = 1
    sim = GraphSimulator(conversations=5, messages=5, rate_limit=1, rate_window_s=20)
    with sim.running() as base:
        client = _client(base, rate=100)
        _read(client)

        # When every further attempt is throttled (calls while blocked keep the window full)
        started = time.monotonic()
        with pytest.raises(Throttled):
            _read(client)
        waited = time.monotonic() - started

    # Then each pause was capped at 1 s (8 throttled answers in a row, then the client gives up)
    assert client.throttled_waits >= 7
    assert 5 < waited < 15
