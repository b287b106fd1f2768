"""Graph sync from the simulator: full sync throughput and memory, incremental sync cost.

Figures (targets of docs/invariants.md in brackets):

* `conversations.sync.full`: `manage.py sync_page PAGE --full` in its own process against
  `manage.py graph_simulator` in another (QUICK: 20k messages in 2k conversations; full run:
  1M in 100k), in messages/s from the run's own start and finish times, and the worker's peak
  RSS read from the kernel when it exits [>= 25,000 messages/s; <= 256 MB at 1M];
* `conversations.sync.write_path`: the database half alone. A second page (its own simulator)
  is fully synced in-process by the sync engine itself: a claimed run, its Graph pages fetched
  and planned into batches beforehand (the fetch and the planning are timed apart, as
  `graph_fetch_messages_per_s` and `plan_messages_per_s`), then every batch written by the
  engine's own `_Sync._write` (the batch statement, the run's cursor and counters, one
  transaction per batch, as the worker does), into tables already holding the full sync's
  messages [>= 50,000 messages/s];
* `conversations.sync.incremental`: then k = 10 conversations spread over the page get a new
  message in the simulator, and an incremental sync runs: its seconds and its Graph calls
  (counted by the simulator) [< 2 s; calls O(k), not O(N)];
* `conversations.sync.naive`: the approach users move away from, in-process: the same Graph
  pages (no 25-message cap), then per row `update_or_create` of the conversation,
  `get_or_create` of the message and its event, each in its own transaction;
* `conversations.sync.postgres.*`: the PostgreSQL reference (COPY and single-row inserts),
  measured in the same run: compare each figure with it, not with another run's.

The simulator is local, so Meta's rate (2 calls/s per page) is lifted for the benchmark
(GRAPH_PAGE_CALLS_PER_SECOND and GRAPH_APP_CALLS_PER_SECOND at 10,000): what is measured is
evoflow's own cost. The full sync is verified afterwards: every message stored once, one event
each, `message_count` equal to the stored messages. The pages are removed afterwards.
"""

from __future__ import annotations

import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pgtrigger
import requests
from cryptography.fernet import Fernet
from django.conf import settings
from django.db import connection, transaction
from django.test import override_settings

from bench import Context, Result, Target
from bench.processes import database_url, free_port
from bench.reference import reference_results

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CHANGED_CONVERSATIONS = 10
LIFTED_RATE = "10000"
# Sync batches commit without waiting for their WAL flush (a lost batch is fetched again), so
# their rates are compared with COPY committed the same way.
ASYNCHRONOUS_BATCHES = {"synchronous_commit": "off"}
# Production mode refuses the local placeholder key, so the run has a key of its own: the page's
# token is encrypted with it here and decrypted with it by the worker.
BENCH_ENCRYPTION_KEY = Fernet.generate_key().decode()


def _child_env(graph_base_url: str) -> dict[str, str]:
    """The worker in production mode: with DEBUG on, Django would keep every statement it ran
    (each batch's JSON among them) in memory, which is not what a worker's RSS is."""
    return {
        **os.environ,
        "DEBUG": "0",
        "SECRET_KEY": secrets.token_hex(32),
        "FB_APP_SECRET": secrets.token_hex(16),
        "FB_VERIFY_TOKEN": secrets.token_hex(8),
        "FIELD_ENCRYPTION_KEY": BENCH_ENCRYPTION_KEY,
        "CRM_API_TOKEN": secrets.token_hex(16),
        "ALLOWED_HOSTS": "127.0.0.1",
        "DJANGO_SETTINGS_MODULE": "evoflow.settings",
        "DATABASE_URL": database_url(),
        "GRAPH_API_BASE_URL": graph_base_url,
        "GRAPH_PAGE_CALLS_PER_SECOND": LIFTED_RATE,
        "GRAPH_APP_CALLS_PER_SECOND": LIFTED_RATE,
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }


class Simulator:
    """`manage.py graph_simulator` in its own process."""

    def __init__(self, *, page_id: str, conversations: int, messages: int, seed: int) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.page_id = page_id
        # A file, not a pipe nobody reads (it would fill up); closed by stop().
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                sys.executable,
                "manage.py",
                "graph_simulator",
                "--port",
                str(self.port),
                "--page-id",
                page_id,
                "--conversations",
                str(conversations),
                "--messages",
                str(messages),
                "--seed",
                str(seed),
            ],
            cwd=PROJECT_ROOT,
            env={**os.environ, "DATABASE_URL": database_url()},
            stdout=subprocess.DEVNULL,
            stderr=self.stderr,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stderr.seek(0)
                raise RuntimeError(f"graph_simulator exited: {self.stderr.read()[-2000:]!r}")
            try:
                requests.get(f"{self.base}/_control/counters", timeout=1)
                return
            except requests.ConnectionError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("graph_simulator did not start within 60 s")

    def control(self, method: str, path: str, **json_body: Any) -> Any:
        response = requests.request(
            method, f"{self.base}/_control/{path}", json=json_body or None, timeout=30
        )
        response.raise_for_status()
        return response.json()

    def graph_calls(self) -> int:
        calls = self.control("GET", "counters")["calls"]
        return sum(count for name, count in calls.items() if not name.startswith("control"))

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.stderr.close()


def _run_sync_page(page_id: str, env: dict[str, str], *, full: bool) -> tuple[float, float]:
    """`manage.py sync_page` in a child process: (wall seconds, peak RSS in MB)."""
    command = [sys.executable, "manage.py", "sync_page", page_id, "--no-progress"]
    if full:
        command.append("--full")
    # stderr to a file, not a pipe: nobody reads a pipe while the child runs (os.wait4 gives
    # this child's own peak RSS), and a full pipe would stop it.
    with tempfile.TemporaryFile() as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(
            command, cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr
        )
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            stderr.seek(0)
            tail = stderr.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"sync_page exited {process.returncode}: {tail}")
    return wall, usage.ru_maxrss / 1024  # kilobytes on Linux


def _latest_run(page_pk: int) -> dict[str, Any]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT status, error, api_calls, messages_inserted, events_inserted,"
            " conversations_seen, extract(epoch FROM finished_at - started_at)::float8"
            " FROM conversations_syncrun WHERE page_id = %s ORDER BY id DESC LIMIT 1",
            [page_pk],
        )
        row = cursor.fetchone()
    assert row is not None, "no sync run was recorded"
    names = ["status", "error", "api_calls", "messages", "events", "conversations", "seconds"]
    return dict(zip(names, row, strict=True))


def _verify(page_pk: int, expected_messages: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT (SELECT count(*) FROM conversations_message WHERE page_id = %s),"
            " (SELECT count(DISTINCT message_id) FROM conversations_interactionevent"
            "  WHERE page_id = %s),"
            " (SELECT count(*) FROM conversations_interactionevent WHERE page_id = %s),"
            " (SELECT coalesce(sum(message_count), 0) FROM conversations_conversation"
            "  WHERE page_id = %s)",
            [page_pk] * 4,
        )
        messages, with_event, events, counted = cursor.fetchone() or (0, 0, 0, 0)
    if not (messages == expected_messages == with_event == events == counted):
        raise AssertionError(
            f"verification failed: expected {expected_messages} messages, stored {messages},"
            f" with an event {with_event}, events {events}, message_count sum {counted}"
        )


def _write_path(*, conversations: int, seed: int) -> Result:
    """The sync engine's write path alone: pages fetched and planned first, then written."""
    from conversations.models import SyncMode
    from conversations.services import page_upsert
    from conversations.services.sync import sync_request
    from conversations.services.sync.engine import _Sync
    from conversations.services.sync.lease import claim_run

    messages = conversations * 10
    page_id = str(7_000_000_000 + secrets.randbelow(999_999_999))
    simulator = Simulator(
        page_id=page_id, conversations=conversations, messages=messages, seed=seed
    )
    # In-process, in production mode: with DEBUG on, Django would format and keep every
    # statement (each batch's JSON among them), which the worker does not do.
    lifted = override_settings(
        DEBUG=False,
        FIELD_ENCRYPTION_KEY=BENCH_ENCRYPTION_KEY,
        GRAPH_API_BASE_URL=f"{simulator.base}/v21.0",
        GRAPH_PAGE_CALLS_PER_SECOND=float(LIFTED_RATE),
        GRAPH_APP_CALLS_PER_SECOND=float(LIFTED_RATE),
    )
    page = None
    try:
        with lifted:
            page = page_upsert(
                page_id=page_id, name="bench write path page", access_token="sim-page-token"
            )
            run, _ = sync_request(page=page, mode=SyncMode.FULL, trigger="command", enqueue=False)
            claim = claim_run(run.pk)
            assert claim is not None, "the write path's run could not be claimed"
            sync = _Sync(claim, None)
            folders = list(settings.SYNC_FOLDERS)
            listings = []
            started = time.perf_counter()
            for folder in folders:
                after: str | None = None
                while True:
                    listing = sync._listing(folder, after)
                    listings.append((folder, listing))
                    after = listing.next_after
                    if after is None:
                        break
            fetch_seconds = time.perf_counter() - started
            started = time.perf_counter()
            planned = []
            for folder, listing in listings:
                batch, rows = sync._planned(listing)
                batch.messages = []  # written from `rows`; the objects are not needed again
                planned.append((folder, listing.next_after, batch, rows))
            plan_seconds = time.perf_counter() - started
            del listings
            batch_seconds = []
            for folder, next_after, batch, rows in planned:
                cursor = sync._next_cursor(folder, next_after)
                started = time.perf_counter()
                sync._write(batch, cursor, rows)
                batch_seconds.append(time.perf_counter() - started)
            del planned
            sync._complete()
            stored = sync.totals.messages_inserted
        _verify(page.pk, messages)
    finally:
        simulator.stop()
        if page is not None:
            _cleanup([page.pk], page_id)
    write_seconds = sum(batch_seconds)
    return Result(
        "conversations.sync.write_path",
        {
            "messages_per_s": stored / write_seconds,
            "seconds": write_seconds,
            "messages": stored,
            "batches": len(batch_seconds),
            "batch_p50_ms": statistics.median(batch_seconds) * 1000,
            "batch_max_ms": max(batch_seconds) * 1000,
            "graph_fetch_messages_per_s": stored / fetch_seconds,
            "plan_messages_per_s": stored / plan_seconds,
        },
        targets=(Target("messages_per_s", at_least=50_000),),
        reference={"messages_per_s": "copy"},
        durability=ASYNCHRONOUS_BATCHES,
        warmup="none: every batch timed (each is a whole transaction of the same size)",
        notes=f"pre-fetched Graph pages written by the sync engine's own _write, one"
        f" transaction per batch of {conversations // max(1, len(batch_seconds)):,}"
        f" conversations; {conversations:,} conversations into tables already holding the"
        " full sync's",
    )


def _changed_threads(simulator: Simulator, conversations: int, seed: int) -> list[str]:
    """k generated conversations spread evenly over the page (the simulator's thread ids)."""
    step = max(1, conversations // CHANGED_CONVERSATIONS)
    indexes = [min(conversations - 1, i * step + step // 2) for i in range(CHANGED_CONVERSATIONS)]
    threads = [f"t_{seed}{index:09d}" for index in sorted(set(indexes))]
    for thread in threads:
        simulator.control("POST", "messages", conversation=thread, text="anything new?")
    return threads


def _naive_sync(simulator: Simulator, page_pk: int, limit_messages: int) -> tuple[float, int]:
    """Per-row ORM writes of the same Graph pages (messages edge followed: no 25 cap)."""
    from conversations.graph_client import GraphClient
    from conversations.models import Conversation, InteractionEvent, Message

    client = GraphClient(
        page_id=simulator.page_id,
        access_token="sim-page-token",
        base_url=f"{simulator.base}/v21.0",
        page_rate=float(LIFTED_RATE),
        app_rate=float(LIFTED_RATE),
    )
    stored = 0
    after: str | None = None
    started = time.perf_counter()
    while stored < limit_messages:
        listing = client.conversations(folder="inbox", after=after)
        for thread in listing.data:
            person = next(p for p in thread.participants.data if p.id != simulator.page_id)
            conversation, _ = Conversation.objects.update_or_create(
                page_id=page_pk,
                psid=person.id,
                defaults={"participant_name": person.name, "thread_id": thread.id},
            )
            page = thread.messages
            while page is not None:
                for graph_message in page.data:
                    outbound = graph_message.sender.id == simulator.page_id
                    message, created = Message.objects.get_or_create(
                        page_id=page_pk,
                        mid=graph_message.id,
                        defaults={
                            "conversation": conversation,
                            "direction": "outbound" if outbound else "inbound",
                            "text": graph_message.message,
                            "sent_at": graph_message.created_time,
                            "source": "sync",
                        },
                    )
                    kind = "message_sent" if outbound else "message_received"
                    InteractionEvent.objects.get_or_create(
                        message=message,
                        kind=kind,
                        defaults={
                            "page_id": page_pk,
                            "conversation": conversation,
                            "dedupe_key": f"{kind}:{message.mid}",
                            "occurred_at": message.sent_at,
                            "source": "sync",
                        },
                    )
                    stored += created
                next_after = page.next_after
                page = (
                    client.messages(thread_id=thread.id, after=next_after) if next_after else None
                )
        after = listing.next_after
        if after is None:
            break
    return time.perf_counter() - started, stored


def run(ctx: Context) -> list[Result]:
    from conversations.services import page_upsert

    conversations = ctx.size(quick=2_000, full=100_000, minimum=20)
    messages = conversations * 10
    naive_messages = ctx.size(quick=600, full=20_000, minimum=100)
    naive_kind = ctx.server_kind("insert_1_conn")
    seed = 900 + secrets.randbelow(99)
    page_id = str(7_000_000_000 + secrets.randbelow(999_999_999))
    simulator = Simulator(
        page_id=page_id, conversations=conversations, messages=messages, seed=seed
    )
    env = _child_env(f"{simulator.base}/v21.0")
    with override_settings(FIELD_ENCRYPTION_KEY=BENCH_ENCRYPTION_KEY):
        page = page_upsert(page_id=page_id, name="bench sync page", access_token="sim-page-token")
    naive_page = page_upsert(page_id=f"{page_id}-naive", name="bench naive sync page")
    results: list[Result] = []
    try:
        wall, peak_rss_mb = _run_sync_page(page_id, env, full=True)
        full = _latest_run(page.pk)
        if full["status"] != "succeeded":
            raise AssertionError(f"the full sync ended {full['status']}: {full['error']}")
        _verify(page.pk, messages)
        results.append(
            Result(
                "conversations.sync.full",
                {
                    "messages_per_s": full["messages"] / full["seconds"],
                    "seconds": float(full["seconds"]),
                    "wall_seconds": wall,
                    "messages": full["messages"],
                    "conversations": full["conversations"],
                    "graph_calls": full["api_calls"],
                    "peak_rss_mb": peak_rss_mb,
                },
                targets=(
                    Target("messages_per_s", at_least=25_000),
                    Target("peak_rss_mb", at_most=256),
                ),
                notes=f"sync_page --full in its own process; wall includes Django start-up;"
                f" {conversations:,} conversations",
                reference={"messages_per_s": "copy"},
                durability=ASYNCHRONOUS_BATCHES,
                warmup="none: the run's own start and finish, as an operator sees it",
            )
        )

        _changed_threads(simulator, conversations, seed)
        simulator.control("POST", "reset")
        wall, _ = _run_sync_page(page_id, env, full=False)
        incremental = _latest_run(page.pk)
        calls = simulator.graph_calls()
        if incremental["status"] != "succeeded":
            raise AssertionError(f"the incremental sync ended {incremental['status']}")
        _verify(page.pk, messages + CHANGED_CONVERSATIONS)
        folders = len(settings.SYNC_FOLDERS)
        results.append(
            Result(
                "conversations.sync.incremental",
                {
                    "seconds": float(incremental["seconds"]),
                    "wall_seconds": wall,
                    "graph_calls": calls,
                    "changed": CHANGED_CONVERSATIONS,
                    "conversations": conversations,
                    "messages_inserted": incremental["messages"],
                    "full_sync_graph_calls": full["api_calls"],
                },
                targets=(
                    Target("seconds", at_most=2.0),
                    # O(k): a conversations page per folder, plus at most one more call per
                    # changed conversation; nothing that grows with the page's size.
                    Target("graph_calls", at_most=folders + 2 * CHANGED_CONVERSATIONS),
                ),
                notes=f"k = {CHANGED_CONVERSATIONS} of N = {conversations:,}; calls counted by"
                " the simulator; wall includes Django start-up",
            )
        )

        results.append(
            _write_path(
                conversations=ctx.size(quick=1_000, full=20_000, minimum=20),
                seed=seed + 1,
            )
        )

        seconds, stored = _naive_sync(simulator, naive_page.pk, naive_messages)
        results.append(
            Result(
                "conversations.sync.naive",
                {"messages_per_s": stored / seconds, "messages": stored},
                notes="same Graph pages, per-row update_or_create / get_or_create, in-process",
                reference={"messages_per_s": naive_kind},
                warmup="none: every row timed",
            )
        )
    finally:
        simulator.stop()
        _cleanup([page.pk, naive_page.pk], page_id)

    results.extend(
        reference_results(
            ctx,
            prefix="conversations.sync.postgres",
            copy_rows_count=messages,
            insert_rows_count=ctx.size(quick=2_000, full=60_000, minimum=16),
            kinds=("copy", naive_kind),
        )
    )
    return results


def _cleanup(page_pks: list[int], page_id: str) -> None:
    from conversations.services.purge import PURGE_LIFTS, statistics_refresh_before_bulk_delete

    # The benchmark's own rows: the delete guard of C8 is lifted as the purge lifts it.
    with transaction.atomic(), pgtrigger.ignore(*PURGE_LIFTS), connection.cursor() as cursor:
        statistics_refresh_before_bulk_delete(cursor)
        for table in ("interactionevent", "message", "conversation", "syncrun"):
            cursor.execute(
                f"DELETE FROM conversations_{table} WHERE page_id = ANY(%s)",  # noqa: S608
                [page_pks],
            )
        cursor.execute("DELETE FROM conversations_facebookpage WHERE id = ANY(%s)", [page_pks])
        cursor.execute("DELETE FROM evoflow_ratebucket WHERE key = %s", [f"graph:page:{page_id}"])
