"""The raw PostgreSQL limit on this machine, for every benchmark to print beside its own figures.

A rate such as "40,000 deliveries/s" only means something next to what the same database does
with no application in the way. These functions measure that ceiling with bare psycopg 3:

* `copy_rows`: COPY into a fresh table with a unique index, in batches each committed, the
  bulk-load ceiling;
* `insert_loop`: single-row `INSERT ... ON CONFLICT DO NOTHING` statements in autocommit from
  1 or N connections (threads, one connection each, disjoint keys), the per-event ceiling;
* `reference_results`: both, as `Result`s, for a benchmark that wants them in its own run;
* `measure_kind`: one of `bench.REFERENCE_KINDS`, for the harness to divide a figure by.

Each is measured in a steady state: the first tenth of the work (at least the first batch, or
the first five statements of every connection, the ones psycopg does not prepare yet) is left
out of the rate, which runs from the end of that warm-up to the last completion
(`bench.steady_rate`); `drift_pct` compares the two halves of what was measured.

The rows look like the application's narrow tables (a bigint key with a unique index, a text
id, a timestamptz and a webhook-like jsonb payload). They are written into scratch tables in the
`bench_scratch` schema, created and dropped here; application tables are never touched.
"""

from __future__ import annotations

import functools
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

from bench import Context, Result, kind_is_durable, percentile_ms, steady_rate
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
# Rows per COPY statement (one transaction each): large enough that a commit costs little,
# small enough that a run has tens of batches to leave a warm-up out of.
COPY_BATCH_ROWS = 5_000
# The warm-up left out of every reference rate: this share of the work, at least the first
# batch, or the first statements of each connection (psycopg prepares from the sixth).
WARMUP_SHARE = 0.1
STATEMENTS_BEFORE_PREPARED = 5
CACHED_ROWS_AT_MOST = 100_000
COPY_WARMUP = "the first 10% of the COPY batches (at least one)"
INSERT_WARMUP = "the first 10% of the statements (at least 5 per connection)"


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


@functools.lru_cache(maxsize=8)
def server_commits_durably(conninfo: str) -> bool:
    with _connect(conninfo, autocommit=True) as conn:
        row = conn.execute("SHOW synchronous_commit").fetchone()
    assert row is not None
    return str(row[0]).lower() not in ("off", "false", "0")


def commit_options(conninfo: str, *, durable: bool) -> str | None:
    """Server options that make a connection commit durably (`synchronous_commit = on`) or
    not (`off`), whatever the server's own setting; None when the server's matches already.

    A reference kind names its durability (`bench.REFERENCE_KINDS`), so the same kind measures
    the same thing on a cluster that commits asynchronously and on one that commits durably.
    Asked at connect time, not with a session `SET`: the reference connects to PostgreSQL
    directly, never through a transaction pooler (which would refuse the options).
    """
    if server_commits_durably(conninfo) == durable:
        return None
    return f"-c synchronous_commit={'on' if durable else 'off'}"


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


def _cached_sample_rows(count: int) -> list[Row]:
    # References are measured in every module of every repetition: the rows of a quick run
    # (seconds of json.dumps) are made once. A full run's million rows are not kept, so that
    # they do not sit in the memory of the benchmarks that follow.
    if count > CACHED_ROWS_AT_MOST:
        return sample_rows(1, count)
    return _small_sample_rows(count)


@functools.lru_cache(maxsize=4)
def _small_sample_rows(count: int) -> list[Row]:
    return sample_rows(1, count)


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
    """Rows written and the steady rate after the warm-up, with per-statement latencies (of
    the measured window) when there were statements."""

    rows: int
    # The measured window: from the end of the warm-up to the last completion.
    seconds: float
    rows_per_s: float
    warmup_rows: float = 0
    drift_pct: float = 0.0
    # Set for statement loops; a COPY batch is one statement on one connection.
    connections: int | None = None
    latencies_s: Sequence[float] = ()

    def figures(self) -> dict[str, float]:
        figures: dict[str, float] = {"rows": self.rows}
        if self.connections is not None:
            figures["connections"] = self.connections
        figures["warmup_rows"] = self.warmup_rows
        figures["seconds"] = round(self.seconds, 4)
        figures["rows_per_s"] = round(self.rows_per_s, 1)
        figures["drift_pct"] = round(self.drift_pct, 1)
        if self.latencies_s:
            figures["p50_ms"] = round(percentile_ms(self.latencies_s, 0.50), 3)
            figures["p99_ms"] = round(percentile_ms(self.latencies_s, 0.99), 3)
        return figures


def copy_rows(
    conninfo: str,
    rows: int | Sequence[Row],
    *,
    method: CopyMethod = FASTEST_COPY_METHOD,
    durable: bool = False,
) -> Measurement:
    """COPY rows into a fresh scratch table with a unique index, in batches of up to
    COPY_BATCH_ROWS rows (at least twenty batches), each its own transaction.

    The clock covers formatting the Python tuples, the COPY and the commit, not generating the
    rows: an application has its rows in memory already. Pass the rows to reuse them across
    calls, or a count to have `sample_rows` make them. `durable`: every commit waits for its
    WAL flush (`synchronous_commit = on`), else none does (`off`), as in `insert_loop`.
    """
    data = _cached_sample_rows(rows) if isinstance(rows, int) else rows
    if len(data) < 2:
        raise ValueError("a COPY reference needs at least two rows (a warm-up and a measure)")
    batch = max(1, min(COPY_BATCH_ROWS, len(data) // 20))
    options = commit_options(conninfo, durable=durable)
    completions: list[tuple[float, float]] = []
    with scratch_table(conninfo) as table, _connect(conninfo, options=options) as conn:
        statement = sql.SQL("COPY {} ({}) FROM STDIN").format(table, _COLUMN_LIST)
        started = time.perf_counter()
        for start in range(0, len(data), batch):
            chunk = data[start : start + batch]
            with conn.cursor() as cursor, cursor.copy(statement) as copy:
                if method == "write_row":
                    for row in chunk:
                        copy.write_row(row)
                else:
                    for offset in range(0, len(chunk), TEXT_STREAM_BATCH_ROWS):
                        copy.write(_copy_text(chunk[offset : offset + TEXT_STREAM_BATCH_ROWS]))
            conn.commit()
            completions.append((time.perf_counter(), len(chunk)))
        _check_row_count(conninfo, table, len(data))
    batches = len(completions)
    steady = steady_rate(
        completions, started=started, warmup_ops=min(batches - 1, max(1, round(batches * 0.1)))
    )
    return Measurement(
        rows=len(data),
        seconds=steady.seconds,
        rows_per_s=steady.rate_per_s,
        warmup_rows=steady.warmup_units,
        drift_pct=steady.drift_pct,
    )


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
    receipt commit does; without it the connections commit with `synchronous_commit = off`
    (`commit_options`).

    Each thread has its own connection and a disjoint key range; the rows are split evenly.
    Every thread connects and holds its rows before the stream starts (the application keeps
    connections open and has the event in hand); the rate runs from the end of the warm-up to
    the last statement.
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
        # Per thread: (sent, finished) of every statement.
        timings: list[list[tuple[float, float]]] = [[] for _ in range(connections)]
        errors: list[BaseException] = []

        def worker(index: int, first_key: int, count: int) -> None:
            try:
                data = sample_rows(first_key, count)
                options = commit_options(conninfo, durable=durable)
                with _connect(conninfo, autocommit=True, options=options) as conn:
                    cursor = conn.cursor()
                    ready.wait(timeout=120)
                    own = timings[index]
                    for row in data:
                        sent = time.perf_counter()
                        cursor.execute(statement, row)
                        own.append((sent, time.perf_counter()))
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
        if errors:
            raise errors[0]
        _check_row_count(conninfo, table, rows)
    every = [timing for own in timings for timing in own]
    warmup_ops = min(
        rows // 2, max(round(rows * WARMUP_SHARE), connections * STATEMENTS_BEFORE_PREPARED)
    )
    steady = steady_rate(
        [(finished, 1) for _, finished in every], started=started, warmup_ops=warmup_ops
    )
    window_start = steady_window_start(every, warmup_ops)
    return Measurement(
        rows=rows,
        seconds=steady.seconds,
        rows_per_s=steady.rate_per_s,
        warmup_rows=steady.warmup_units,
        drift_pct=steady.drift_pct,
        connections=connections,
        latencies_s=[done - sent for sent, done in every if done > window_start],
    )


def steady_window_start(timings: Sequence[tuple[float, float]], warmup_ops: int) -> float:
    """When the warm-up of `warmup_ops` statements ended (the clock's start)."""
    finished = sorted(done for _, done in timings)
    return finished[warmup_ops - 1] if warmup_ops else float("-inf")


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
    durable_copy: bool = False,
    kinds: Sequence[str] | None = None,
) -> list[Result]:
    """The PostgreSQL ceiling as `Result`s named `<prefix>.copy...` and `<prefix>.insert...`.

    A benchmark passes its own row counts so that its figures and the ceiling describe the same
    amount of work, measured in the same run. Each result says which reference kind it is
    (`reference_kind`), so the harness divides the module's rates by it. `kinds` (of
    `bench.REFERENCE_KINDS`) measures only those, whatever the flags say: the ones the
    module's rates name, and nothing it would not use.
    """

    def wanted(kind: str) -> bool:
        return kinds is None or kind in kinds

    results: list[Result] = []
    copies = [
        durable
        for durable in ((False, True) if durable_copy or kinds is not None else (False,))
        if wanted("copy_durable" if durable else "copy")
    ]
    data = _cached_sample_rows(copy_rows_count) if copies else []
    for durable in copies:
        # The ways of feeding COPY differ on the client's side only: compared without the WAL
        # flush, the durable COPY measured with the first one.
        for index, method in enumerate(copy_methods[:1] if durable else copy_methods):
            measurement = copy_rows(ctx.conninfo, data, method=method, durable=durable)
            results.append(
                Result(
                    benchmark=f"{prefix}.copy.{method}" + (".durable" if durable else ""),
                    figures=measurement.figures(),
                    notes="COPY FROM STDIN into a fresh table with a unique index, batches of"
                    f" at most {COPY_BATCH_ROWS:,} rows, one transaction each"
                    + (", synchronous_commit on" if durable else ", synchronous_commit off"),
                    # The first method is the one the others' rates are divided by.
                    reference_kind=("copy_durable" if durable else "copy") if index == 0 else None,
                    durability={"synchronous_commit": "on" if durable else "off"},
                    warmup=COPY_WARMUP,
                )
            )
    del data
    # With `durable_inserts`, the same loops with every commit waiting for its WAL flush too
    # (`durable_rows_count` rows: a flush per row makes them an order of magnitude slower).
    for durable in (False, True) if durable_inserts or kinds is not None else (False,):
        rows = (durable_rows_count or insert_rows_count) if durable else insert_rows_count
        for connections in (1, concurrent_connections):
            kind = f"insert_{connections}_conn" + ("_durable" if durable else "")
            if not wanted(kind):
                continue
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
                    reference_kind=kind if connections in (1, 16) else None,
                    durability={"synchronous_commit": "on" if durable else "off"},
                    warmup=INSERT_WARMUP,
                )
            )
    return results


def kind_sizes(ctx: Context, kind: str) -> int:
    """Rows for one measurement of a reference kind: about 1-3 s each on a 2-core machine in
    `--quick` (several times that in a full run), enough for tens of batches or thousands of
    statements after the warm-up."""
    if kind.startswith("copy"):
        return ctx.size(quick=60_000, full=400_000, minimum=20)
    connections = 16 if "_16_" in kind else 1
    if kind_is_durable(kind):
        quick, full = (3_000, 20_000) if connections == 16 else (600, 3_000)
    else:
        quick, full = (6_000, 40_000) if connections == 16 else (2_000, 10_000)
    return ctx.size(quick=quick, full=full, minimum=max(2, connections * 2))


def measure_kind(ctx: Context, kind: str) -> Measurement:
    """One reference measurement of `kind` (bench.REFERENCE_KINDS) on the run's database."""
    rows = kind_sizes(ctx, kind)
    durable = kind_is_durable(kind)
    if kind.startswith("copy"):
        return copy_rows(ctx.conninfo, rows, durable=durable)
    connections = 16 if "_16_" in kind else 1
    return insert_loop(ctx.conninfo, rows, connections=connections, durable=durable)
