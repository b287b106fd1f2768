"""evoflow's benchmarks: the types every benchmark module shares.

`python -m bench` (see `bench/harness.py`) runs every module `bench/bench_*.py`. A module exposes
`run(ctx: Context) -> list[Result]`; it sizes its workload with `ctx.size(...)` so that
`--quick` and `--scale` shrink it, and returns one `Result` per thing it measured. The figures
sit beside the raw PostgreSQL limit measured in the same run (`bench.reference`), because an
absolute rate means little without the machine's own ceiling next to it.

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

__all__ = ["Context", "Result", "Target", "peak_rss_mb", "percentile_ms", "reset_peak_rss"]


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

    def __post_init__(self) -> None:
        if not self.benchmark.strip():
            raise ValueError("a benchmark result needs a name")
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
