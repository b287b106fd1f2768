"""evoflow's benchmarks: the types every benchmark module shares.

`python -m bench` (see `bench/harness.py`) runs every module `bench/bench_*.py`. A module exposes
`run(ctx: Context) -> list[Result]`; it sizes its workload with `ctx.size(...)` so that
`--quick` and `--scale` shrink it, and returns one `Result` per thing it measured. The figures
sit beside the raw PostgreSQL limit measured in the same run (`bench.reference`), because an
absolute rate means little without the machine's own ceiling next to it.

How to read a figure (docs/operations.md, "Benchmarks"): a rate is the median of the run's
repetitions (`--repeat`, 3 in `make bench`), each measured in a steady state (a warm-up left
out, see `Result.warmup`), and printed with its ratio to the PostgreSQL reference measured in
the same repetition with the same durability. On a slower or busier machine both move and the
ratio stays; compare ratios across machines, absolute rates only within one run.

The optional fields of `Result`, all opt-in so a module that sets none of them works unchanged:

* `reference`: figure name -> reference kind (one of `REFERENCE_KINDS`), the PostgreSQL
  operation that fits the path measured: a durable single-row insert from 16 connections for
  one-event webhooks (`insert_16_conn_durable`), COPY for bulk and set-based paths (`copy`),
  one connection's single-row inserts for a per-row loop (`insert_1_conn`). Only rate figures
  (`..._per_s`) have one. Each kind names its durability (`_durable`: `synchronous_commit = on`,
  else `off`); a path that commits as the server does picks its kind with
  `ctx.server_kind("copy")`. The harness divides the figure by that kind's `rows_per_s` measured
  in the same repetition: by a result of the same module run that says it is that kind
  (`reference_kind`), else by the harness itself right after the module
  (`bench.reference.measure_kind`). The ratio's median over the repetitions is shown beside
  the figure (table column `x reference`, JSON `ratios`).
* `reference_kind`: this result is a PostgreSQL reference of that kind; its `rows_per_s` is the
  value the module's other results are divided by (`bench.reference.reference_results` sets it).
* `reference_values`: kind -> rows/s the module measured itself, for a path on another server
  (the topology's PostgreSQL): the harness uses these instead of measuring on its own server.
* `durability`: the settings the measured path ran with where they differ from the server's
  (e.g. `{"synchronous_commit": "on"}` for the webhook's durable receipt commit, `"off"` for a
  path that commits asynchronously), or the whole set for a path on another server. The
  harness prints the server's `fsync`, `synchronous_commit`, `full_page_writes` and
  `wal_level` in the table header and in every JSON record beside these, and refuses a ratio
  whose reference ran with another `synchronous_commit` than the figure (a durable path is
  compared with durable inserts, `..._durable` kinds).
* `warmup`: what each repetition left out before its clock started, in words ("the first 64
  POSTs", "the first 10% of the rows"): the rule, not a figure.

A module that cannot run on this machine (a program missing) raises `Skipped` with the reason;
the harness reports it and goes on, and the run does not fail for it. A module may set
`QUICK_BUDGET_SECONDS` (seconds per repetition in `--quick`) when it cannot fit the shared
budget (`bench.harness.QUICK_BUDGET_SECONDS`), e.g. one that starts a topology.

Importing this package must stay cheap and must not set Django up: the harness does that once,
after parsing its arguments.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DURABILITY_SETTINGS",
    "REFERENCE_KINDS",
    "Context",
    "Result",
    "Skipped",
    "SteadyRate",
    "Target",
    "peak_rss_mb",
    "percentile_ms",
    "reset_peak_rss",
    "steady_rate",
]

# The PostgreSQL operations a rate can be compared with (bench.reference measures them): COPY
# in batches of rows, each batch committed, and single-row `INSERT ... ON CONFLICT DO NOTHING`
# in autocommit from 1 or 16 connections; `_durable`: every commit waits for its WAL flush
# (`synchronous_commit = on`), the others never do (`off`), whatever the server's setting.
REFERENCE_KINDS = (
    "copy",
    "copy_durable",
    "insert_1_conn",
    "insert_16_conn",
    "insert_1_conn_durable",
    "insert_16_conn_durable",
)
# The server settings that decide what a commit costs, read and printed by the harness.
DURABILITY_SETTINGS = ("fsync", "synchronous_commit", "full_page_writes", "wal_level")


class Skipped(Exception):  # noqa: N818 (a module's outcome, not an error)
    """Raised by a benchmark module that cannot run on this machine; the message says why."""


def kind_is_durable(kind: str) -> bool:
    return kind.endswith("_durable")


@dataclass(frozen=True)
class Target:
    """A performance target from docs/invariants.md for one figure, e.g. `rows_per_s >= 100,000`."""

    figure: str
    at_least: float | None = None
    at_most: float | None = None

    def __post_init__(self) -> None:
        if self.at_least is None and self.at_most is None:
            raise ValueError(f"target for {self.figure!r} needs at_least or at_most")

    def is_met(self, figures: Mapping[str, float]) -> bool | None:
        """True/False when the figure was measured, None when the result lacks it."""
        value = figures.get(self.figure)
        if value is None:
            return None
        if self.at_least is not None and value < self.at_least:
            return False
        return not (self.at_most is not None and value > self.at_most)

    def describe(self) -> str:
        parts = []
        if self.at_least is not None:
            parts.append(f">= {format_figure(self.at_least)}")
        if self.at_most is not None:
            parts.append(f"<= {format_figure(self.at_most)}")
        return " and ".join(parts)

    def as_json(self, figures: Mapping[str, float]) -> dict[str, Any]:
        return {
            "figure": self.figure,
            "at_least": self.at_least,
            "at_most": self.at_most,
            "met": self.is_met(figures),
        }


@dataclass(frozen=True)
class Result:
    """What one benchmark measured.

    `figures` holds plain numbers under self-describing names with their unit as a suffix
    (`rows_per_s`, `seconds`, `p50_ms`, `p99_ms`, `peak_rss_mb`), so that the JSON lines can be
    compared across runs without a schema.
    """

    benchmark: str
    figures: dict[str, float]
    targets: tuple[Target, ...] = ()
    notes: str = ""
    # The optional fields below are described in this package's docstring.
    reference: Mapping[str, str] = field(default_factory=dict)
    reference_kind: str | None = None
    reference_values: Mapping[str, float] = field(default_factory=dict)
    durability: Mapping[str, str] = field(default_factory=dict)
    warmup: str = ""

    def __post_init__(self) -> None:
        if not self.benchmark.strip():
            raise ValueError("a benchmark result needs a name")
        for figure, kind in self.reference.items():
            if figure not in self.figures or not figure.endswith("_per_s"):
                raise ValueError(f"{self.benchmark}: reference for {figure!r}, not a rate of it")
            if kind not in REFERENCE_KINDS:
                raise ValueError(f"{self.benchmark}: unknown reference kind {kind!r}")
        named = [*self.reference_values]
        if self.reference_kind is not None:
            named.append(self.reference_kind)
        for given in named:
            if given not in REFERENCE_KINDS:
                raise ValueError(f"{self.benchmark}: unknown reference kind {given!r}")
        if self.reference_kind is not None and "rows_per_s" not in self.figures:
            raise ValueError(f"{self.benchmark}: a reference result needs rows_per_s")
        for name in self.durability:
            if name not in DURABILITY_SETTINGS:
                raise ValueError(f"{self.benchmark}: unknown durability setting {name!r}")
        for name, value in self.figures.items():
            # bool is an int subclass; a True figure is always a bug in the benchmark.
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"{self.benchmark}: figure {name!r} is not a number: {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{self.benchmark}: figure {name!r} is not finite: {value!r}")
        for target in self.targets:
            if target.figure not in self.figures:
                raise ValueError(f"{self.benchmark}: target on unmeasured {target.figure!r}")


@dataclass(frozen=True)
class Context:
    """What the harness hands every benchmark module."""

    quick: bool
    # Multiplies every workload size; the test suite runs the harness at a tiny scale.
    scale: float
    # libpq connection string for the Django `default` database (see bench.reference).
    conninfo: str
    machine: Mapping[str, Any] = field(default_factory=dict)

    def size(self, *, quick: int, full: int, minimum: int = 1) -> int:
        """The workload size for this run: `quick` or `full`, times the scale."""
        base = quick if self.quick else full
        return max(minimum, round(base * self.scale))

    def server_kind(self, kind: str) -> str:
        """The reference kind of `kind`'s shape that commits as this run's server does: for a
        path that keeps the server's `synchronous_commit` (its `durability` says nothing)."""
        setting = str((self.machine.get("durability") or {}).get("synchronous_commit", "off"))
        durable = setting.lower() not in ("off", "false", "0")
        base = kind.removesuffix("_durable")
        return f"{base}_durable" if durable else base

    def duration(self, *, quick: float, full: float) -> float:
        """A time budget in seconds for this run, times the scale."""
        return (quick if self.quick else full) * self.scale


def format_figure(value: float) -> str:
    """Readable numbers: thousands separators for large ones, 3 significant decimals else."""
    if isinstance(value, int) or (abs(value) >= 1000 and float(value).is_integer()):
        return f"{int(value):,}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def percentile_ms(samples_seconds: Sequence[float], quantile: float) -> float:
    """The `quantile` (0..1) of latency samples given in seconds, in milliseconds.

    Nearest-rank on the sorted samples: no interpolation, so a p99 is a latency some request
    really had.
    """
    if not samples_seconds:
        raise ValueError("no latency samples")
    ordered = sorted(samples_seconds)
    rank = max(1, math.ceil(quantile * len(ordered)))
    return ordered[rank - 1] * 1000.0


_PROC_SELF = Path("/proc/self")


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux `clear_refs`), so each benchmark sees its own peak.

    Returns False where the kernel does not support it; `peak_rss_mb` then reports the
    process's lifetime peak, which the harness notes in the machine facts.
    """
    try:
        (_PROC_SELF / "clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB since the last `reset_peak_rss()`."""
    try:
        for line in (_PROC_SELF / "status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource  # Not on every platform; only needed without /proc.

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_count() -> int:
    """CPUs this process may run on (a container's limit, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@dataclass(frozen=True)
class SteadyRate:
    """A rate over the part of a stream of operations after its warm-up."""

    rate_per_s: float
    # Units (rows, events) and seconds inside the measured window.
    units: float
    seconds: float
    # How far the second half of the window's rate moved from the first half's, in percent:
    # near 0 in a steady state; large when the run was still warming up or was disturbed.
    drift_pct: float
    warmup_units: float


def steady_rate(
    completions: Sequence[tuple[float, float]],
    *,
    started: float,
    warmup_ops: int = 0,
    warmup_seconds: float = 0.0,
) -> SteadyRate:
    """The rate of a stream of operations with its warm-up left out.

    `completions` holds one `(perf_counter time, units)` pair per finished operation (from any
    number of threads), `started` the stream's start. The warm-up is the first `warmup_ops`
    operations to finish, or everything finished in the first `warmup_seconds`, whichever ends
    later; the window runs from there to the last completion.
    """
    ordered = sorted(completions)
    if not ordered:
        raise ValueError("no operation finished")
    window_start = started + warmup_seconds
    if warmup_ops:
        window_start = max(window_start, ordered[min(warmup_ops, len(ordered)) - 1][0])
    inside = [(at, units) for at, units in ordered if at > window_start]
    if not inside:
        raise ValueError(
            f"no operation finished after the warm-up ({warmup_ops} operations,"
            f" {warmup_seconds:g} s): the run is too short to measure"
        )
    end = inside[-1][0]
    seconds = end - window_start
    if seconds <= 0:
        raise ValueError("the measured window is empty")
    units = sum(units for _, units in inside)
    middle = window_start + seconds / 2
    first = sum(units for at, units in inside if at <= middle)
    second = units - first
    drift = 100.0 * (second - first) / first if first else 0.0
    return SteadyRate(
        rate_per_s=units / seconds,
        units=units,
        seconds=seconds,
        drift_pct=drift,
        warmup_units=sum(units for at, units in ordered if at <= window_start),
    )
