"""Messenger webhook ingest through gunicorn on loopback, with a load generator of signed POSTs.

Figures (targets of docs/invariants.md in brackets), all with durable commits: the receipt's
transaction commits with `synchronous_commit = on` (C7) whatever the server's setting:

* `conversations.webhook.single`: 1 event per POST from 16 concurrent clients
  [>= 1,000 events/s, p99 <= 50 ms];
* `conversations.webhook.batched`: 100 events per POST (16 clients) [>= 15,000 events/s];
* `conversations.webhook.single.async_commit`, `...batched.async_commit`: the same with the
  durable commit switched off (`bench.webhook_async_commit_wsgi`, never used in production), so
  `durability_cost_pct` says what waiting for the WAL flush costs;
* `conversations.webhook.naive`: the approach users move away from, measured in-process (no
  HTTP, so it is flattered): per event a receipt, `update_or_create` of the conversation,
  `get_or_create` of the message, the event, and a count update, each row by itself;
* `conversations.webhook.postgres.*`: the PostgreSQL reference (COPY and single-row inserts,
  with and without `synchronous_commit = on`: `...insert_on_conflict.16_conn.durable` is the
  durable single-row upsert rate of 16 connections to compare the webhook with).

Each rate is divided by the reference of its shape and durability measured right after its
stream, in the same repetition (`x reference` in the table): one event per POST by single-row
inserts from 16 connections, 100 events per POST by COPY, durable for the durable paths; the
naive loop by one connection's inserts. The first measurement of each kind is also reported
(`conversations.webhook.postgres.*`). Each server first answers 64 POSTs (4 per client) that
are left out of the figures (the warm-up: its processes import, connect and fill their
caches); `drift_pct` compares the two halves of the measured stream.

Every figure is verified afterwards: exactly the distinct messages, one message event each,
`message_count` equal to the stored messages, every receipt processed, and re-sending a share
of the payloads changes nothing (zero lost, zero duplicated). The server is gunicorn in
production mode (DEBUG off) with `gthread` workers, sized for a 2-core machine: 2 processes
of 4 threads, one process per core (threads wait on PostgreSQL round trips while another runs;
more processes only add context switches and GIL hand-offs on two cores: 3x4, 4x2 and 2x8 all
measured slower here). The rows are
written under a bench page created for the run and removed afterwards.
"""

from __future__ import annotations

import http.client
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pgtrigger
from cryptography.fernet import Fernet
from django.db import connection, transaction
from django.db.models import F

from bench import Context, Result, Target, percentile_ms, steady_rate
from bench.processes import database_url, free_port
from bench.reference import reference_results
from conversations.simulator.payloads import message_event, signed_body, webhook_document

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CLIENTS = 16
# Override to try other shapes: BENCH_WEBHOOK_WORKERS=2 BENCH_WEBHOOK_THREADS=8 make bench ...
GUNICORN_WORKERS = int(os.environ.get("BENCH_WEBHOOK_WORKERS", "2"))
GUNICORN_THREADS = int(os.environ.get("BENCH_WEBHOOK_THREADS", "4"))
PSIDS = 2_000
T0 = 1_741_000_000_000
BENCH_SECRET = "bench-app-secret-" + secrets.token_hex(8)


DURABLE_WSGI = "evoflow.wsgi:application"
ASYNC_COMMIT_WSGI = "bench.webhook_async_commit_wsgi:application"


class Server:
    """gunicorn serving evoflow in production mode on a loopback port."""

    def __init__(self, wsgi: str = DURABLE_WSGI) -> None:
        self.port = free_port()
        env = {
            **os.environ,
            "DEBUG": "0",
            "DATABASE_URL": database_url(),
            "SECRET_KEY": secrets.token_hex(32),
            "FB_APP_SECRET": BENCH_SECRET,
            "FB_VERIFY_TOKEN": secrets.token_hex(8),
            # Production mode refuses the local placeholders: secrets of the run's own.
            "FIELD_ENCRYPTION_KEY": Fernet.generate_key().decode(),
            "CRM_API_TOKEN": secrets.token_hex(16),
            "ALLOWED_HOSTS": "127.0.0.1",
            "LOG_LEVEL": "WARNING",
            "DJANGO_SETTINGS_MODULE": "evoflow.settings",
        }
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "gunicorn", wsgi,
                "--bind", f"127.0.0.1:{self.port}",
                "--worker-class", "gthread",
                "--workers", str(GUNICORN_WORKERS),
                "--threads", str(GUNICORN_THREADS),
                "--keep-alive", "30",
                "--backlog", "256",
            ],
            cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    conn.close()
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("gunicorn did not start")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def _bodies(page_id: str, prefix: str, posts: int, per_post: int) -> list[tuple[bytes, dict]]:
    """`posts` signed payloads of `per_post` distinct messages each, over PSIDS people."""
    bodies = []
    for post in range(posts):
        events = []
        for slot in range(per_post):
            n = post * per_post + slot
            events.append(
                message_event(
                    page_id=page_id,
                    psid=str(8_000_000_000 + n % PSIDS),
                    mid=f"m_{prefix}_{n}",
                    timestamp_ms=T0 + n,
                    text=f"benchmark message {n}",
                )
            )
        bodies.append(signed_body(webhook_document(page_id, events), secret=BENCH_SECRET))
    return bodies


class _KeepAliveClient:
    """A minimal HTTP/1.1 keep-alive client over a raw socket.

    The load generator shares the two cores with gunicorn and PostgreSQL, so it must cost as
    little as possible: requests are complete bytes prepared before the clock starts, and a
    response is read only as far as its status line, Content-Length and body.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: socket.socket | None = None
        self.buffer = b""

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=60)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock, self.buffer = sock, b""
        return sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def post(self, request: bytes) -> int:
        """Send one prepared request; its status (0 when the connection failed)."""
        try:
            sock = self.sock or self._connect()
            sock.sendall(request)
            while b"\r\n\r\n" not in self.buffer:
                self.buffer += self._receive(sock)
            head, _, rest = self.buffer.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            status = int(lines[0].split(b" ", 2)[1])
            length, must_close = 0, False
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    must_close = True
            while len(rest) < length:
                rest += self._receive(sock)
            self.buffer = rest[length:]
            if must_close:
                self.close()
            return status
        except (OSError, ValueError, IndexError):
            self.close()
            return 0

    @staticmethod
    def _receive(sock: socket.socket) -> bytes:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        return chunk


def _prepared_requests(port: int, bodies: Sequence[tuple[bytes, dict]]) -> list[bytes]:
    requests = []
    for body, headers in bodies:
        lines = [
            "POST /webhooks/messenger/ HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            *(f"{name}: {value}" for name, value in headers.items()),
            f"Content-Length: {len(body)}",
        ]
        requests.append(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    return requests


def _post_all(
    port: int, bodies: Sequence[tuple[bytes, dict]], clients: int
) -> tuple[float, list[float], int, list[float], float]:
    """POST every body from `clients` keep-alive connections; (seconds, latencies, non-200s,
    the completion time of every request, the stream's start)."""
    requests = _prepared_requests(port, bodies)
    latencies: list[float] = []
    completions: list[float] = []
    failures = [0]
    lock = threading.Lock()
    next_index = [0]

    def client() -> None:
        connection_ = _KeepAliveClient(port)
        own: list[float] = []
        finished: list[float] = []
        bad = 0
        while True:
            with lock:
                index = next_index[0]
                next_index[0] += 1
            if index >= len(requests):
                break
            started = time.perf_counter()
            status = connection_.post(requests[index])
            done = time.perf_counter()
            own.append(done - started)
            finished.append(done)
            if status != 200:
                bad += 1
        connection_.close()
        with lock:
            latencies.extend(own)
            completions.extend(finished)
            failures[0] += bad

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, latencies, failures[0], completions, started


def _fetch_one(sql: str, params: list[Any]) -> tuple:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    assert row is not None
    return tuple(row)


def _verify(page_pk: int, expected_messages: int, first_receipt_id: int) -> dict[str, float]:
    messages, events, counted, conversations = _fetch_one(
        "SELECT (SELECT count(*) FROM conversations_message WHERE page_id = %s),"
        " (SELECT count(*) FROM conversations_interactionevent WHERE page_id = %s),"
        " (SELECT COALESCE(sum(message_count), 0) FROM conversations_conversation"
        "  WHERE page_id = %s),"
        " (SELECT count(*) FROM conversations_conversation WHERE page_id = %s)",
        [page_pk] * 4,
    )
    unprocessed = _fetch_one(
        "SELECT count(*) FROM conversations_webhookreceipt WHERE id >= %s"
        " AND status <> 'processed'",
        [first_receipt_id],
    )[0]
    lost = expected_messages - messages
    if lost or events != messages or counted != messages or unprocessed:
        raise AssertionError(
            f"verification failed: expected {expected_messages} messages, stored {messages},"
            f" events {events}, message_count sum {counted}, unprocessed receipts {unprocessed}"
        )
    return {"messages_stored": messages, "conversations": conversations, "lost": 0, "dup": 0}


def _naive_ingest(page_pk: int, prefix: str, count: int) -> float:
    """The per-row ORM handler users are moving away from (in-process, no HTTP): its events/s
    after the first tenth of the events (the warm-up)."""
    from conversations.models import (
        Conversation,
        InteractionEvent,
        Message,
        SignatureVerdict,
        WebhookReceipt,
    )

    completions: list[tuple[float, float]] = []
    started = time.perf_counter()
    for n in range(count):
        sent_at = datetime.fromtimestamp((T0 + n) / 1000, tz=UTC)
        with transaction.atomic():
            WebhookReceipt.objects.create(
                body=b"{}", body_sha256="naive", signature_verdict=SignatureVerdict.INTERNAL,
                status="processed",
            )  # fmt: skip
            conversation, _ = Conversation.objects.update_or_create(
                page_id=page_pk,
                psid=str(8_500_000_000 + n % PSIDS),
                defaults={"last_message_text": f"naive {n}", "participant_name": ""},
            )
            message, created = Message.objects.get_or_create(
                page_id=page_pk,
                mid=f"m_{prefix}_naive_{n}",
                defaults={
                    "conversation": conversation, "direction": "inbound", "sent_at": sent_at,
                    "text": f"naive {n}", "source": "webhook",
                },
            )  # fmt: skip
            if created:
                InteractionEvent.objects.create(
                    page_id=page_pk, conversation=conversation, message=message,
                    kind="message_received", occurred_at=sent_at,
                    dedupe_key=f"message_received:{message.mid}", source="webhook",
                )  # fmt: skip
                Conversation.objects.filter(pk=conversation.pk).update(
                    last_message_mid=message.mid, version=F("version") + 1
                )
        completions.append((time.perf_counter(), 1))
    return steady_rate(completions, started=started, warmup_ops=max(1, count // 10)).rate_per_s


def _cleanup(page_pk: int, page_id: str, first_receipt_id: int) -> None:
    from conversations.services.purge import PURGE_LIFTS

    # The benchmark's own rows: the delete guard of C8 is lifted as the purge lifts it.
    with transaction.atomic(), pgtrigger.ignore(*PURGE_LIFTS), connection.cursor() as cursor:
        cursor.execute("DELETE FROM conversations_interactionevent WHERE page_id = %s", [page_pk])
        cursor.execute("DELETE FROM conversations_message WHERE page_id = %s", [page_pk])
        cursor.execute("DELETE FROM conversations_conversation WHERE page_id = %s", [page_pk])
        cursor.execute("DELETE FROM conversations_facebookpage WHERE id = %s", [page_pk])
        cursor.execute(
            "DELETE FROM conversations_webhookreceipt WHERE id >= %s"
            " AND (position(%s in body) > 0 OR body_sha256 = 'naive')",
            [first_receipt_id, page_id.encode()],
        )


WARMUP = "64 POSTs (4 per client) answered before the clock starts"


def _ingest_results(
    server: Server,
    single_bodies: Sequence[tuple[bytes, dict]],
    batched_bodies: Sequence[tuple[bytes, dict]],
    *,
    suffix: str,
    mode: str,
    durable: bool,
    server_kind: Callable[[str], str],
    reference_after: Callable[[str], float],
) -> list[Result]:
    """The single-event and the 100-event figures of one server; `durable`: the receipt's
    commit waits for the WAL flush, else it commits as the server does (`server_kind`). Right
    after each stream, `reference_after(kind)` measures its reference (rows/s)."""
    results = []
    durability = {"synchronous_commit": "on"} if durable else {}
    single_kind = "insert_16_conn_durable" if durable else server_kind("insert_16_conn")
    batched_kind = "copy_durable" if durable else server_kind("copy")
    _, latencies, failures, completions, started = _post_all(server.port, single_bodies, CLIENTS)
    single_reference = reference_after(single_kind)
    steady = steady_rate([(done, 1) for done in completions], started=started)
    results.append(
        Result(
            "conversations.webhook.single" + suffix,
            {
                "events_per_s": steady.rate_per_s,
                "p50_ms": percentile_ms(latencies, 0.50),
                "p99_ms": percentile_ms(latencies, 0.99),
                "events": len(single_bodies),
                "non_200": failures,
                "drift_pct": round(steady.drift_pct, 1),
            },
            targets=(
                Target("events_per_s", at_least=1_000),
                Target("p99_ms", at_most=50),
                Target("non_200", at_most=0),
            )
            if durable
            else (Target("non_200", at_most=0),),
            notes=f"1 event/POST, {CLIENTS} clients, gunicorn gthread "
            f"{GUNICORN_WORKERS}x{GUNICORN_THREADS}, {mode}",
            reference={"events_per_s": single_kind},
            reference_values={single_kind: single_reference},
            durability=durability,
            warmup=WARMUP,
        )
    )
    _, latencies, failures, completions, started = _post_all(server.port, batched_bodies, CLIENTS)
    batched_reference = reference_after(batched_kind)
    steady = steady_rate([(done, 100) for done in completions], started=started)
    results.append(
        Result(
            "conversations.webhook.batched" + suffix,
            {
                "events_per_s": steady.rate_per_s,
                "p50_ms": percentile_ms(latencies, 0.50),
                "p99_ms": percentile_ms(latencies, 0.99),
                "events": len(batched_bodies) * 100,
                "non_200": failures,
                "drift_pct": round(steady.drift_pct, 1),
            },
            targets=(Target("events_per_s", at_least=15_000), Target("non_200", at_most=0))
            if durable
            else (Target("non_200", at_most=0),),
            notes=f"100 events/POST, {CLIENTS} clients, {mode}",
            reference={"events_per_s": batched_kind},
            reference_values={batched_kind: batched_reference},
            durability=durability,
            warmup=WARMUP + " (the single-event stream before it too)",
        )
    )
    return results


DURABLE = "durable commits (synchronous_commit on for the receipt)"
ASYNC = "durable commit switched off (server default, off here): for comparison only"


def run(ctx: Context) -> list[Result]:
    from conversations.services import page_upsert

    # Quick: a few seconds per stream on a loaded 2-core machine, after its warm-up.
    single_posts = ctx.size(quick=800, full=30_000, minimum=CLIENTS)
    batched_posts = ctx.size(quick=32, full=600, minimum=CLIENTS)
    naive_events = ctx.size(quick=150, full=3_000, minimum=10)
    page_id = str(9_000_000_000 + secrets.randbelow(999_999_999))
    prefix = secrets.token_hex(3)
    page = page_upsert(page_id=page_id, name="bench page")
    first_receipt_id = _fetch_one(
        "SELECT COALESCE(max(id), 0) + 1 FROM conversations_webhookreceipt", []
    )[0]
    single_bodies = _bodies(page_id, f"{prefix}s", single_posts, 1)
    batched_bodies = _bodies(page_id, f"{prefix}b", batched_posts, 100)
    # The comparison without the durable commit: half the work, enough for its rate.
    async_single = _bodies(page_id, f"{prefix}as", max(CLIENTS, single_posts // 2), 1)
    async_batched = _bodies(page_id, f"{prefix}ab", max(CLIENTS, batched_posts // 2), 100)
    results: list[Result] = []
    # Each stream's reference, measured right after it (the same moment of a shared machine);
    # the first measurement of each kind is also reported as a result of its own.
    references: dict[str, Result] = {}

    def reference_after(kind: str) -> float:
        measured = reference_results(
            ctx,
            prefix="conversations.webhook.postgres",
            copy_rows_count=ctx.size(quick=40_000, full=1_000_000, minimum=20),
            insert_rows_count=ctx.size(quick=3_000, full=60_000, minimum=32),
            durable_rows_count=ctx.size(quick=1_500, full=20_000, minimum=32),
            kinds=(kind,),
        )[0]
        references.setdefault(kind, measured)
        return measured.figures["rows_per_s"]

    server = Server()
    try:
        # A short warm-up (connections, imports) whose messages count like the others.
        warmup = _bodies(page_id, f"{prefix}w", CLIENTS * 4, 1)
        _post_all(server.port, warmup, CLIENTS)
        results += _ingest_results(
            server,
            single_bodies,
            batched_bodies,
            suffix="",
            mode=DURABLE,
            durable=True,
            server_kind=ctx.server_kind,
            reference_after=reference_after,
        )

        # Meta re-delivers: a tenth of every payload again, which must change nothing.
        resend = single_bodies[: len(single_bodies) // 10] + batched_bodies[:4]
        resend_failures = _post_all(server.port, resend, CLIENTS)[2]
        server.stop()

        # The same work with the durable commit switched off: what durability costs.
        server = Server(ASYNC_COMMIT_WSGI)
        async_warmup = _bodies(page_id, f"{prefix}aw", CLIENTS * 4, 1)
        _post_all(server.port, async_warmup, CLIENTS)
        async_results = _ingest_results(
            server,
            async_single,
            async_batched,
            suffix=".async_commit",
            mode=ASYNC,
            durable=False,
            server_kind=ctx.server_kind,
            reference_after=reference_after,
        )
        for durable, fast in zip(results[:2], async_results, strict=True):
            fast.figures["durability_cost_pct"] = 100 * (
                1 - durable.figures["events_per_s"] / fast.figures["events_per_s"]
            )
        results += async_results

        expected = (
            len(warmup)
            + len(async_warmup)
            + single_posts
            + batched_posts * 100
            + len(async_single)
            + len(async_batched) * 100
        )
        verified = _verify(page.pk, expected, first_receipt_id)
        if resend_failures:
            raise AssertionError(f"{resend_failures} re-deliveries were not answered 200")
        results.append(
            Result(
                "conversations.webhook.verified",
                {
                    "messages_stored": verified["messages_stored"],
                    "messages_sent": expected,
                    "lost": verified["lost"],
                    "duplicated": verified["dup"],
                    "resent_payloads": len(resend),
                },
                targets=(Target("lost", at_most=0), Target("duplicated", at_most=0)),
                notes="counts checked after the runs and a re-delivery of 10% of the payloads",
            )
        )
    finally:
        server.stop()
        try:
            rate = _naive_ingest(page.pk, prefix, naive_events)
            naive_kind = ctx.server_kind("insert_1_conn")
            results.append(
                Result(
                    "conversations.webhook.naive",
                    {"events_per_s": rate, "events": naive_events},
                    notes="per-row ORM update_or_create, in-process, 1 client (no HTTP)",
                    reference={"events_per_s": naive_kind},
                    reference_values={naive_kind: reference_after(naive_kind)},
                    warmup="the first 10% of the events",
                )
            )
        finally:
            _cleanup(page.pk, page_id, first_receipt_id)

    results.extend(references.values())
    return results
