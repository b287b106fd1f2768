"""Acceptance of the Graph sync with worker processes: a `manage.py qcluster` killed with
SIGKILL mid-sync loses its lease and the next run resumes from its saved cursor; processes
syncing two pages at once keep each page under its call rate, and processes calling the same
page share its bucket (the simulator's per-page call timestamps are the measure)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conversations.models import Message, SyncRun
from conversations.services.sync import sync_request
from conversations.simulator.graph import GraphSimulator, calls_max_in_window
from tests.conversations.sync_helpers import (
    assert_equal_to_truth,
    drift_when,
    sim_page,
    simulator_serving,
)
from tests.helpers import PROJECT_ROOT, qcluster, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

PAGE_RATE = 4  # calls per second per page, for the worker processes
# A call reaches the simulator a little after its reserved slot (HTTP, scheduling); counting
# calls in windows of 1 s minus this tolerates that jitter without letting a 5th call in.
JITTER_S = 0.15


def test_a_worker_killed_mid_sync_loses_its_lease_and_the_next_run_resumes(
    settings, subprocess_env
):
    # Given 800 conversations (8 batches in the inbox) behind a slow Graph API, and a worker
    # whose lease lasts 3 s
    sim = GraphSimulator(conversations=800, messages=4_000, seed=41)
    sim.faults.slow_ms = 300
    with simulator_serving(sim, settings) as base:
        env = {
            **subprocess_env,
            "GRAPH_API_BASE_URL": base + "/v21.0",
            "GRAPH_PAGE_CALLS_PER_SECOND": "5",
            "SYNC_LEASE_SECONDS": "3",
            "Q_WORKERS": "1",
        }
        settings.SYNC_LEASE_SECONDS = 3
        page = sim_page(sim)
        killed, created = sync_request(page=page, mode="full")  # enqueues the task
        assert created

        # When the worker has written two batches, it is killed
        with qcluster(env) as worker:
            assert wait_for(
                lambda: SyncRun.objects.get(pk=killed.pk).batches_succeeded >= 2,
                timeout=60,
                interval=0.02,
            )
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=10)
        killed.refresh_from_db()
        assert killed.status == "running"
        assert killed.cursor is not None
        assert killed.cursor["folder"] == "inbox"
        written = killed.batches_succeeded
        assert 2 <= written < 8
        assert killed.conversations_seen == 100 * written

        # Then a new request is refused while the lease lasts...
        again, created = sync_request(page=page, mode="full")
        assert (again.pk, created) == (killed.pk, False)
        # ...and takes over once the heartbeat is older than the lease
        time.sleep(3.2)
        sim.faults.slow_ms = 0
        sim.counters.reset()
        resumed, created = sync_request(page=page, mode="full")
        assert created
        with qcluster(env):
            finished = wait_for(
                lambda: SyncRun.objects.get(pk=resumed.pk).status not in ("queued", "running"),
                timeout=60,
                interval=0.1,
            )
        assert finished
        calls = sim.counters.snapshot()["calls"]

    killed.refresh_from_db()
    resumed.refresh_from_db()
    assert (killed.status, killed.error_code) == ("failed", "lease_expired")
    assert killed.finished_at is not None
    assert killed.lease_token is None
    assert resumed.status == "succeeded", resumed.error
    # It resumed from the saved cursor, in the same chain, and did not start over: it read
    # only the batches the killed run had not written, plus the three other folders
    assert resumed.resumed_from_id == killed.pk
    assert resumed.chain_id == killed.pk
    assert resumed.conversations_seen == 800 - 100 * written
    assert resumed.api_calls == (8 - written) + 3
    assert calls["conversations"] == (8 - written) + 3
    assert resumed.messages_inserted == 4_000 - killed.messages_inserted
    assert Message.objects.filter(page=page).count() == 4_000
    assert_equal_to_truth(page, sim)


_SYNC_SCRIPT = textwrap.dedent(
    """
    import sys, django
    django.setup()
    from conversations.services.sync import sync_run_execute
    run = sync_run_execute(run_id=int(sys.argv[1]))
    print(run.status, run.error_code, run.api_calls)
    """
)

_CALLS_SCRIPT = textwrap.dedent(
    """
    import sys, django
    django.setup()
    from conversations.graph_client import GraphClient
    client = GraphClient(page_id=sys.argv[1], access_token=sys.argv[2])
    for _ in range(int(sys.argv[4])):
        client.conversations(folder="inbox", after=None, limit=int(sys.argv[3]), message_limit=1)
    print(client.calls)
    """
)


def _python(script: str, *args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process: subprocess.Popen[str]) -> str:
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err[-3000:]
    return out.strip()


def test_workers_on_two_pages_keep_each_page_under_its_rate_and_share_a_page_bucket(
    settings, subprocess_env
):
    # Given two pages of 1,200 conversations (15 listing calls each), and worker processes
    # limited to 4 calls per second per page
    sim = GraphSimulator(conversations=1_200, messages=1_200, seed=51, extra_pages=1)
    first, second = list(sim.pages)
    with simulator_serving(sim, settings) as base:
        env = {
            **subprocess_env,
            "GRAPH_API_BASE_URL": base + "/v21.0",
            "GRAPH_PAGE_CALLS_PER_SECOND": str(PAGE_RATE),
        }
        pages = {page_id: sim_page(sim, page_id) for page_id in (first, second)}
        runs = {
            page_id: sync_request(page=page, mode="full", enqueue=False)[0]
            for page_id, page in pages.items()
        }

        # When two processes sync the two pages at the same time
        processes = [_python(_SYNC_SCRIPT, str(run.pk), env=env) for run in runs.values()]
        outputs = [_finish(process) for process in processes]
        times = {page_id: sim.page_call_times(page_id) for page_id in (first, second)}

        # Then each run succeeded and each page's calls kept to its rate in every window...
        assert [output.split()[0] for output in outputs] == ["succeeded", "succeeded"]
        for page_id in (first, second):
            assert len(times[page_id]) == 12 + 3
            assert calls_max_in_window(times[page_id], 1.0 - JITTER_S) <= PAGE_RATE
            assert_equal_to_truth(pages[page_id], sim, page_id)
        # ...while the two pages were synced at once, each with its own bucket
        assert max(times[first][0], times[second][0]) < min(times[first][-1], times[second][-1])
        both = times[first] + times[second]
        assert calls_max_in_window(both, 1.0 - JITTER_S) > PAGE_RATE

        # When two processes call the SAME page at once
        sim.counters.reset()
        sim.page_calls.reset()
        arrivals: list[tuple[float, str]] = []

        def arrival(request) -> bool:
            arrivals.append((time.time(), request.query["limit"]))
            return False

        token = sim.page(first).access_token
        with drift_when(sim, "conversations", arrival):
            callers = [
                _python(_CALLS_SCRIPT, first, token, limit, "8", env=env) for limit in ("1", "2")
            ]
            counted = [_finish(process) for process in callers]

    # Then together they kept to the page's one rate: they share its bucket
    assert counted == ["8", "8"]
    shared = sim.page_call_times(first)
    assert len(shared) == 16
    assert calls_max_in_window(shared, 1.0 - JITTER_S) <= PAGE_RATE
    # ...and they really called at the same time (their calls interleave)
    by_caller = {
        limit: [moment for moment, caller in arrivals if caller == limit] for limit in ("1", "2")
    }
    assert max(by_caller["1"][0], by_caller["2"][0]) < min(by_caller["1"][-1], by_caller["2"][-1])
