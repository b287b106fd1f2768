"""The raw PostgreSQL limit on this machine, for every benchmark to print beside its own figures.

A rate such as "40,000 deliveries/s" only means something next to what the same database does
with no application in the way. These functions measure that ceiling with bare psycopg 3:

* `copy_rows`: COPY into a fresh table with a unique index, the bulk-load ceiling;
* `insert_loop`: single-row `INSERT ... ON CONFLICT DO NOTHING` statements in autocommit from
  1 or N connections (threads, one connection each, disjoint keys), the per-event ceiling;
* `reference_results`: both, as `Result`s, for a benchmark that wants them in its own run.

The rows look like the application's narrow tables (a bigint key with a unique index, a text
id, a timestamptz and a webhook-like jsonb payload). They are written into scratch tables in the
`bench_scratch` schema, created and dropped here; application tables are never touched.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from bench import Context, Result, percentile_ms
from evoflow.db import psycopg_connect_kwargs, psycopg_conninfo

SCRATCH_SCHEMA = "bench_scratch"
APPLICATION_NAME = "evoflow-bench"
COLUMNS = ("id", "external_id", "created_at", "payload")
_COLUMN_LIST = sql.SQL(", ").join(map(sql.Identifier, COLUMNS))

# One scratch row: (id, external_id, created_at, payload as JSON text).
Row = tuple[int, str, datetime, str]
CopyMethod = Literal["write_row", "text_stream"]

# Measured on the 2-core development machine (psycopg-binary 3.3, PostgreSQL 15), methods
# alternated to cancel order effects: at 200k rows `write_row` 144k-196k rows/s and a
# hand-escaped text stream 140k-196k, write_row ahead or level in every pair; at 1M rows
# write_row 144k-157k against 125k-142k. The server is the bottleneck (parsing jsonb and
# timestamps, the unique index, WAL): COPY of text formatted in advance gains under 10% and
# psycopg's queued writer thread a few percent. write_row is also the one without an escaping
# function to get wrong. bench_postgres_reference keeps measuring both so a change shows; the
# first large COPY of a run was up to 15% slower in these runs, so compare across runs.
FASTEST_COPY_METHOD: CopyMethod = "write_row"

# Rows formatted per `copy.write()` call in the text stream: large enough that the per-call
# overhead vanishes, small enough not to double the memory of the rows.
TEXT_STREAM_BATCH_ROWS = 2_000


def conninfo_from_django(alias: str = "default") -> str:
    """A libpq connection string for a Django database, labelled as the benchmark's."""
    return psycopg_conninfo(alias, application_name=APPLICATION_NAME)


def _connect(
    conninfo: str, *, autocommit: bool = False, options: str | None = None
) -> psycopg.Connection:
    """A raw connection under the application's connection rules: behind a transaction pooler
    (`DATABASE_POOLER=transaction`), no prepared statements. `options` are server settings for
    the connection (`-c name=value`), for direct connections only: a pooler refuses them."""
    if options is not None:
        conninfo = make_conninfo(conninfo, options=options)
    return psycopg.connect(conninfo, autocommit=autocommit, **psycopg_connect_kwargs())


def server_version(conninfo: str) -> str:
    with _connect(conninfo, autocommit=True) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    assert row is not None
    return str(row[0])


# -- rows ----------------------------------------------------------------------------------------

_EPOCH = datetime(2025, 1, 1, tzinfo=UTC)


def sample_rows(first_key: int, count: int) -> list[Row]:
    """`count` rows with keys `first_key`, `first_key + 1`, ...; the same keys give the same rows.

    The payload has the shape and size (~260 bytes) of one Messenger webhook event, so the jsonb
    column costs what it costs in the application's tables.
    """
    rows: list[Row] = []
    for key in range(first_key, first_key + count):
        external_id = f"m_{key:016x}{key * 2654435761 % 2**32:08x}"
        created_at = _EPOCH + timedelta(milliseconds=key)
        payload = json.dumps(
            {
                "object": "page",
                "entry": [
                    {
                        "id": "104857600000001",
                        "time": 1735689600000 + key,
                        "messaging": [
                            {
                                "sender": {"id": str(7_000_000_000_000_000 + key % 50_000)},
                                "recipient": {"id": "104857600000001"},
                                "timestamp": 1735689600000 + key,
                                # A tab, as users type them: the text stream must escape it.
                                "message": {"mid": external_id, "text": f"Hello #{key}\tok"},
                            }
                        ],
                    }
                ],
            },
            separators=(",", ":"),
        )
        rows.append((key, external_id, created_at, payload))
    return rows


# -- scratch tables ------------------------------------------------------------------------------


@contextmanager
def scratch_table(conninfo: str) -> Iterator[sql.Identifier]:
    """A fresh, empty scratch table, dropped on exit; yields its qualified name.

    Several runs may share the database (the test suite and `make bench` side by side), so each
    table has a unique name, and the shared schema is created and dropped under an advisory lock
    by whichever run finds it missing or leaves it empty.
    """
    name = sql.Identifier(SCRATCH_SCHEMA, f"rows_{os.getpid()}_{secrets.token_hex(4)}")
    with _connect(conninfo, autocommit=True) as conn:
        with conn.transaction():
            _lock_scratch_schema(conn)
            conn.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCRATCH_SCHEMA))
            )
            conn.execute(
                sql.SQL(
                    "CREATE TABLE {} (id bigint NOT NULL, external_id text NOT NULL,"
                    " created_at timestamptz NOT NULL, payload jsonb NOT NULL)"
                ).format(name)
            )
            conn.execute(sql.SQL("CREATE UNIQUE INDEX ON {} (id)").format(name))
        try:
            yield name
        finally:
            with conn.transaction():
                _lock_scratch_schema(conn)
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(name))
                remaining = conn.execute(
                    "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE n.nspname = %s",
                    [SCRATCH_SCHEMA],
                ).fetchone()
                if remaining is not None and remaining[0] == 0:
                    conn.execute(
                        sql.SQL("DROP SCHEMA IF EXISTS {}").format(sql.Identifier(SCRATCH_SCHEMA))
                    )


def _lock_scratch_schema(conn: psycopg.Connection) -> None:
    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"evoflow.{SCRATCH_SCHEMA}"])


def _count_rows(conninfo: str, table: sql.Identifier) -> int:
    with _connect(conninfo, autocommit=True) as conn:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()
    assert row is not None
    return int(row[0])


# -- measurements --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measurement:
    """Rows written, wall time, and per-statement latencies when there were statements."""

    rows: int
    seconds: float
    # Set for statement loops; a COPY is one statement on one connection.
    connections: int | None = None
    latencies_s: Sequence[float] = ()

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds

    def figures(self) -> dict[str, float]:
        figures: dict[str, float] = {"rows": self.rows}
        if self.connections is not None:
            figures["connections"] = self.connections
        figures["seconds"] = round(self.seconds, 4)
        figures["rows_per_s"] = round(self.rows_per_s, 1)
        if self.latencies_s:
            figures["p50_ms"] = round(percentile_ms(self.latencies_s, 0.50), 3)
            figures["p99_ms"] = round(percentile_ms(self.latencies_s, 0.99), 3)
        return figures


def copy_rows(
    conninfo: str,
    rows: int | Sequence[Row],
    *,
    method: CopyMethod = FASTEST_COPY_METHOD,
) -> Measurement:
    """COPY rows into a fresh scratch table with a unique index, in one transaction.

    The clock covers formatting the Python tuples, the COPY and the commit, not generating the
    rows: an application has its rows in memory already. Pass the rows to reuse them across
    calls, or a count to have `sample_rows` make them.
    """
    data = sample_rows(1, rows) if isinstance(rows, int) else rows
    with scratch_table(conninfo) as table, _connect(conninfo) as conn:
        statement = sql.SQL("COPY {} ({}) FROM STDIN").format(table, _COLUMN_LIST)
        started = time.perf_counter()
        with conn.cursor() as cursor, cursor.copy(statement) as copy:
            if method == "write_row":
                for row in data:
                    copy.write_row(row)
            else:
                for start in range(0, len(data), TEXT_STREAM_BATCH_ROWS):
                    copy.write(_copy_text(data[start : start + TEXT_STREAM_BATCH_ROWS]))
        conn.commit()
        seconds = time.perf_counter() - started
        _check_row_count(conninfo, table, len(data))
    return Measurement(rows=len(data), seconds=seconds)


def _copy_text(rows: Sequence[Row]) -> str:
    """Rows in COPY's text format: tab-separated, with backslash escapes in text fields."""
    return "".join(
        f"{key}\t{_escape(external_id)}\t{created_at.isoformat()}\t{_escape(payload)}\n"
        for key, external_id, created_at, payload in rows
    )


def _escape(value: str) -> str:
    # Backslash first, or the escapes added for tabs and newlines would be doubled too.
    return (
        value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    )


def insert_loop(
    conninfo: str, rows: int, *, connections: int = 1, durable: bool = False
) -> Measurement:
    """Single-row `INSERT ... ON CONFLICT DO NOTHING` in autocommit, from `connections` threads.

    `durable` sets `synchronous_commit = on` on each connection: every commit waits for its WAL
    flush, whatever the server's setting (the local cluster runs with it off), as the webhook's
    receipt commit does.

    Each thread has its own connection and a disjoint key range; the rows are split evenly. The
    clock starts once every thread is connected and holds its rows (the application keeps
    connections open and has the event in hand), and stops when the last thread finishes.
    psycopg prepares the statement after a few executions, as a long-running process would
    (unless the database is reached through a transaction pooler, where nothing is prepared).
    """
    if rows < connections:
        raise ValueError(f"{rows} rows cannot be split across {connections} connections")
    shares = [
        rows // connections + (1 if index < rows % connections else 0)
        for index in range(connections)
    ]
    with scratch_table(conninfo) as table:
        statement = sql.SQL(
            "INSERT INTO {} ({}) VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING"
        ).format(table, _COLUMN_LIST)
        # Every thread and the main one meet here, so the clock starts with all of them ready.
        ready = threading.Barrier(connections + 1)
        latencies: list[list[float]] = [[] for _ in range(connections)]
        errors: list[BaseException] = []

        def worker(index: int, first_key: int, count: int) -> None:
            try:
                data = sample_rows(first_key, count)
                # A durable run asks for synchronous commit at connect time (the reference
                # connects to PostgreSQL directly, never through a transaction pooler).
                options = "-c synchronous_commit=on" if durable else None
                with _connect(conninfo, autocommit=True, options=options) as conn:
                    cursor = conn.cursor()
                    ready.wait(timeout=120)
                    own = latencies[index]
                    for row in data:
                        sent = time.perf_counter()
                        cursor.execute(statement, row)
                        own.append(time.perf_counter() - sent)
            except BaseException as exc:  # Re-raised in the main thread below.
                errors.append(exc)
                ready.abort()

        first_keys = [1 + sum(shares[:index]) for index in range(connections)]
        threads = [
            threading.Thread(target=worker, args=(index, first_keys[index], shares[index]))
            for index in range(connections)
        ]
        for thread in threads:
            thread.start()
        # A worker that fails before the start breaks the barrier; its error is raised below.
        with suppress(threading.BrokenBarrierError):
            ready.wait(timeout=120)
        started = time.perf_counter()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - started
        if errors:
            raise errors[0]
        _check_row_count(conninfo, table, rows)
    return Measurement(
        rows=rows,
        seconds=seconds,
        connections=connections,
        latencies_s=[latency for own in latencies for latency in own],
    )


def _check_row_count(conninfo: str, table: sql.Identifier, expected: int) -> None:
    # A figure for rows that did not arrive would be a lie; fail the benchmark instead.
    found = _count_rows(conninfo, table)
    if found != expected:
        raise RuntimeError(f"scratch table holds {found} rows, expected {expected}")


# -- results for benchmarks ----------------------------------------------------------------------


def reference_results(
    ctx: Context,
    *,
    prefix: str,
    copy_rows_count: int,
    insert_rows_count: int,
    concurrent_connections: int = 16,
    copy_methods: Sequence[CopyMethod] = (FASTEST_COPY_METHOD,),
    durable_inserts: bool = False,
    durable_rows_count: int | None = None,
) -> list[Result]:
    """The PostgreSQL ceiling as `Result`s named `<prefix>.copy...` and `<prefix>.insert...`.

    A benchmark passes its own row counts so that its figures and the ceiling describe the same
    amount of work, measured minutes apart on the same machine.
    """
    results: list[Result] = []
    data = sample_rows(1, copy_rows_count)
    for method in copy_methods:
        measurement = copy_rows(ctx.conninfo, data, method=method)
        results.append(
            Result(
                benchmark=f"{prefix}.copy.{method}",
                figures=measurement.figures(),
                notes="COPY FROM STDIN into a fresh table with a unique index, one transaction",
            )
        )
    del data
    # With `durable_inserts`, the same loops with every commit waiting for its WAL flush too
    # (`durable_rows_count` rows: a flush per row makes them an order of magnitude slower).
    for durable in (False, True) if durable_inserts else (False,):
        rows = (durable_rows_count or insert_rows_count) if durable else insert_rows_count
        for connections in (1, concurrent_connections):
            measurement = insert_loop(
                ctx.conninfo, max(rows, connections), connections=connections, durable=durable
            )
            results.append(
                Result(
                    benchmark=f"{prefix}.insert_on_conflict.{connections}_conn"
                    + (".durable" if durable else ""),
                    figures=measurement.figures(),
                    notes=(
                        "single-row INSERT ... ON CONFLICT DO NOTHING, autocommit"
                        + (", synchronous_commit on" if durable else "")
                        + f", {connections} connection{'s' if connections > 1 else ''},"
                        " disjoint keys"
                    ),
                )
            )
    return results
