"""The benchmark runner behind `python -m bench` (`make bench`, `make bench QUICK=1`).

    python -m bench [--quick] [--only NAME ...] [--scale FACTOR] [--json-only] [--results PATH]
                    [--own-database]

It finds every module `bench/bench_*.py` (in name order), sets Django up (settings module
`evoflow.settings` unless DJANGO_SETTINGS_MODULE says otherwise), runs each module's
`run(ctx)`, then prints an aligned table of every figure and one line per result of the form
`BENCH {json}`, so that `grep '^BENCH ' | cut -c7-` yields JSON lines. The same lines go to
`bench/results/latest.jsonl`. With `--own-database` (what `make bench` passes) the run creates a
database of its own on the server DATABASE_URL names, migrates it, measures there and drops it
at the end, so nothing of the development database (its data, a feature flag turned off in the
admin) changes a figure, and no benchmark row is left behind. A module that raises is reported
on stderr and makes the exit status 1; the other modules still run. A missed target is
reported, never an error: speed is measured here, not asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import pkgutil
import platform
import secrets
import statistics
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import bench
from bench import Context, Result, cpu_count, format_figure, reset_peak_rss

JSON_PREFIX = "BENCH "
MODULE_PREFIX = "bench_"
DEFAULT_RESULTS = Path(bench.__file__).resolve().parent / "results" / "latest.jsonl"
# A figure whose repetitions spread wider than this around their median is flagged as too
# noisy to judge: (max - min) / median of its rates.
SPREAD_LIMIT = 0.25
# The quick run is meant for every commit; past this it is no longer quick.
QUICK_BUDGET_SECONDS = 60.0

EXIT_OK = 0
EXIT_BENCHMARK_FAILED = 1
EXIT_USAGE = 2


@dataclass
class ModuleOutcome:
    module: str
    seconds: float
    results: list[Result] = field(default_factory=list)
    error: str | None = None
    # Per benchmark, per figure: each repetition's value, min and max (see `combine`).
    repetitions: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="Run evoflow's benchmarks and print their figures."
    )
    parser.add_argument(
        "--quick", action="store_true", help="small workloads: the whole run in well under 60 s"
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help="run only modules whose name ends with NAME (repeatable), e.g. postgres_reference",
    )
    parser.add_argument(
        "--scale",
        type=positive_float,
        default=1.0,
        metavar="FACTOR",
        help="multiply every workload size (the test suite uses 0.01)",
    )
    parser.add_argument(
        "--repeat",
        type=positive_int,
        default=1,
        metavar="N",
        help="run every module N times, interleaved (the PostgreSQL reference among them), and "
        "report each figure's median with its min and max (make bench: 3)",
    )
    parser.add_argument(
        "--own-database",
        action="store_true",
        help="create a database for the run on DATABASE_URL's server, migrate it, drop it at "
        "the end (DATABASE_URL must reach PostgreSQL itself, not a transaction pooler)",
    )
    parser.add_argument(
        "--json-only", action="store_true", help="print only the BENCH JSON lines, no table"
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=DEFAULT_RESULTS,
        metavar="PATH",
        help="where to write the JSON lines (default bench/results/latest.jsonl)",
    )
    return parser.parse_args(argv)


def positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {raw!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {raw!r}")
    return value


def positive_float(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number: {raw!r}") from exc
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {raw!r}")
    return value


def discover_modules(only: Sequence[str] = ()) -> list[str]:
    """Names of the benchmark modules (without the `bench.` package), sorted."""
    names = sorted(
        info.name
        for info in pkgutil.iter_modules(bench.__path__)
        if info.name.startswith(MODULE_PREFIX)
    )
    if not only:
        return names
    return [name for name in names if any(name.endswith(wanted) for wanted in only)]


def short_name(module: str) -> str:
    return module.removeprefix(MODULE_PREFIX)


def setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "evoflow.settings")
    import django
    from django.apps import apps

    # Already set up when the harness runs inside another Django process (the test suite).
    if not apps.ready:
        django.setup()


@contextlib.contextmanager
def own_database() -> Iterator[str]:
    """Point DATABASE_URL at a new database on the same server for the block, created empty
    and dropped at the end (its name is yielded). Runs before Django is set up."""
    import psycopg

    from evoflow import local_database

    url = os.environ.get("DATABASE_URL", "").strip() or local_database.database_url(
        int(os.environ.get("EVOFLOW_PG_PORT") or local_database.DEFAULT_PORT)
    )
    parts = urlsplit(url)
    name = f"evoflow_bench_{secrets.token_hex(4)}"
    server = urlunsplit(parts._replace(path="/postgres", query=""))
    with psycopg.connect(server, autocommit=True, prepare_threshold=None) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    previous = os.environ.get("DATABASE_URL")
    os.environ["DATABASE_URL"] = urlunsplit(parts._replace(path=f"/{name}"))
    try:
        yield name
    finally:
        if previous is None:
            os.environ.pop("DATABASE_URL", None)
        else:
            os.environ["DATABASE_URL"] = previous
        with contextlib.suppress(Exception):
            from django.db import connections

            connections.close_all()
        with psycopg.connect(server, autocommit=True, prepare_threshold=None) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def machine_facts(conninfo: str, peak_rss_resettable: bool) -> dict[str, Any]:
    import django
    import psycopg

    from bench.reference import server_version

    try:
        memory_mb: int | None = (os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) >> 20
    except (ValueError, OSError, AttributeError):
        memory_mb = None
    return {
        "cpu_count": cpu_count(),
        "memory_mb": memory_mb,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "postgres": server_version(conninfo),
        "psycopg": psycopg.__version__,
        "django": django.get_version(),
        "peak_rss_per_benchmark": peak_rss_resettable,
    }


def run_module(module: str, ctx: Context, taken_names: set[str]) -> ModuleOutcome:
    """Import and run one benchmark module; any exception becomes the outcome's error.

    `taken_names` holds the benchmark names reported so far: a name reported twice would make
    the JSON lines ambiguous for whoever compares runs, so it fails the module.
    """
    # Each module's peak memory is its own, not the largest one's before it.
    reset_peak_rss()
    started = time.perf_counter()
    try:
        loaded = importlib.import_module(f"bench.{module}")
        results = loaded.run(ctx)
        if not isinstance(results, list) or not all(isinstance(r, Result) for r in results):
            raise TypeError(f"bench.{module}.run() must return a list of bench.Result")
        if not results:
            raise ValueError(f"bench.{module}.run() returned no results")
        names = [result.benchmark for result in results]
        repeated = sorted({name for name in names if name in taken_names or names.count(name) > 1})
        if repeated:
            raise ValueError(f"bench.{module}: benchmark names reported twice: {repeated}")
    except Exception:
        return ModuleOutcome(module, time.perf_counter() - started, error=traceback.format_exc())
    taken_names.update(names)
    return ModuleOutcome(module, time.perf_counter() - started, results=results)


def combine(module: str, runs: Sequence[ModuleOutcome]) -> ModuleOutcome:
    """One outcome from a module's repetitions: each figure the median of its values, with
    every value, the min and the max kept; a rate spread wider than SPREAD_LIMIT is noted."""
    seconds = sum(run.seconds for run in runs)
    failed = [run.error for run in runs if run.error is not None]
    if failed:
        return ModuleOutcome(module, seconds, error=failed[0])
    if len(runs) == 1:
        return ModuleOutcome(module, seconds, results=list(runs[0].results))
    by_name: dict[str, list[Result]] = {}
    for run in runs:
        for result in run.results:
            by_name.setdefault(result.benchmark, []).append(result)
    combined: list[Result] = []
    repetitions: dict[str, dict[str, dict[str, Any]]] = {}
    for name, results in by_name.items():
        first = results[0]
        stats: dict[str, dict[str, Any]] = {}
        medians: dict[str, float] = {}
        for figure in first.figures:
            values = [r.figures[figure] for r in results if figure in r.figures]
            medians[figure] = statistics.median(values)
            stats[figure] = {"values": values, "min": min(values), "max": max(values)}
        spreads = [
            (stats[figure]["max"] - stats[figure]["min"]) / abs(medians[figure])
            for figure in medians
            if figure.endswith("_per_s") and medians[figure]
        ]
        spread = max(spreads, default=0.0)
        note = f"median of {len(results)}, spread {spread:.0%}"
        if spread > SPREAD_LIMIT:
            note += ", TOO WIDE TO JUDGE"
        repetitions[name] = stats
        combined.append(
            Result(
                benchmark=name,
                figures=medians,
                targets=first.targets,
                notes="; ".join(part for part in (first.notes, note) if part),
            )
        )
    return ModuleOutcome(module, seconds, results=combined, repetitions=repetitions)


def json_record(
    result: Result, outcome: ModuleOutcome, ctx: Context, recorded_at: str
) -> dict[str, Any]:
    return {
        "benchmark": result.benchmark,
        "module": short_name(outcome.module),
        "figures": result.figures,
        "targets": [target.as_json(result.figures) for target in result.targets],
        "notes": result.notes,
        "quick": ctx.quick,
        "scale": ctx.scale,
        "module_seconds": round(outcome.seconds, 3),
        "repetitions": outcome.repetitions.get(result.benchmark, {}),
        "recorded_at": recorded_at,
        "machine": dict(ctx.machine),
    }


def render_table(results: Sequence[Result]) -> str:
    """One row per figure, the benchmark's name and notes on its first row only."""
    header = ("benchmark", "figure", "value", "target", "notes")
    rows: list[tuple[str, str, str, str, str]] = []
    for result in results:
        targets = {target.figure: target for target in result.targets}
        for index, (figure, value) in enumerate(result.figures.items()):
            target = targets.get(figure)
            target_text = ""
            if target is not None:
                verdict = "met" if target.is_met(result.figures) else "MISSED"
                target_text = f"{target.describe()} {verdict}"
            first = index == 0
            rows.append(
                (
                    result.benchmark if first else "",
                    figure,
                    format_figure(value),
                    target_text,
                    result.notes if first else "",
                )
            )
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(4)]

    def line(row: tuple[str, str, str, str, str]) -> str:
        name, figure, value, target, notes = row
        cells = [
            name.ljust(widths[0]),
            figure.ljust(widths[1]),
            value.rjust(widths[2]),
            target.ljust(widths[3]),
            notes,
        ]
        return "  ".join(cells).rstrip()

    separator = ("-" * widths[0], "-" * widths[1], "-" * widths[2], "-" * widths[3], "-----")
    return "\n".join([line(header), line(separator), *(line(row) for row in rows)])


def write_results(path: Path, lines: Sequence[str]) -> None:
    # Write then rename, so a reader never sees half a file from an interrupted run.
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text("".join(f"{line}\n" for line in lines))
    partial.replace(path)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(argv)
    modules = discover_modules(args.only)
    if not modules:
        available = ", ".join(short_name(name) for name in discover_modules()) or "none"
        print(
            f"bench: no benchmark module matches {args.only}; available: {available}",
            file=sys.stderr,
        )
        return EXIT_USAGE

    if not args.own_database:
        return run(args, modules)
    try:
        with own_database() as name:
            print(f"bench: measuring in database {name}, dropped at the end", file=sys.stderr)
            setup_django()
            from django.core.management import call_command

            call_command("migrate", verbosity=0)
            return run(args, modules)
    except Exception as exc:  # The server refused the database, or migrating it failed.
        print(f"bench: the run's own database failed: {exc}", file=sys.stderr)
        return EXIT_BENCHMARK_FAILED


def run(args: argparse.Namespace, modules: list[str]) -> int:
    run_started = time.perf_counter()
    # One timestamp for the whole run, so its lines group together when files are merged.
    recorded_at = datetime.now(UTC).isoformat(timespec="seconds")
    setup_django()
    from bench.reference import conninfo_from_django

    conninfo = conninfo_from_django()
    try:
        machine = machine_facts(conninfo, peak_rss_resettable=reset_peak_rss())
    except Exception as exc:  # The database is down or unreachable: nothing can be measured.
        print(f"bench: cannot reach the database: {exc}", file=sys.stderr)
        return EXIT_BENCHMARK_FAILED
    ctx = Context(quick=args.quick, scale=args.scale, conninfo=conninfo, machine=machine)

    runs: dict[str, list[ModuleOutcome]] = {module: [] for module in modules}
    # Repetitions interleave the modules (the PostgreSQL reference among them), so a machine
    # that slows down for a while moves every figure of that repetition, not one module's.
    for repetition in range(args.repeat):
        taken_names: set[str] = set()
        of = f" (repetition {repetition + 1} of {args.repeat})" if args.repeat > 1 else ""
        for module in modules:
            print(f"bench: {short_name(module)}{of} ...", file=sys.stderr, flush=True)
            outcome = run_module(module, ctx, taken_names)
            runs[module].append(outcome)
            if outcome.error is not None:
                print(
                    f"bench: {short_name(module)} FAILED after {outcome.seconds:.1f} s",
                    file=sys.stderr,
                )
                print(outcome.error, file=sys.stderr, end="")
            else:
                print(
                    f"bench: {short_name(module)} done in {outcome.seconds:.1f} s, "
                    f"{len(outcome.results)} results",
                    file=sys.stderr,
                    flush=True,
                )
    outcomes = [combine(module, runs[module]) for module in modules]

    results = [result for outcome in outcomes for result in outcome.results]
    lines = [
        JSON_PREFIX + json.dumps(json_record(result, outcome, ctx, recorded_at))
        for outcome in outcomes
        for result in outcome.results
    ]
    if results and not args.json_only:
        print(render_table(results))
        print()
    for line in lines:
        print(line)
    sys.stdout.flush()
    write_results(args.results, [line.removeprefix(JSON_PREFIX) for line in lines])

    elapsed = time.perf_counter() - run_started
    failed = [short_name(outcome.module) for outcome in outcomes if outcome.error is not None]
    mode = "quick" if args.quick else "full"
    print(
        f"bench: {len(results)} results from {len(outcomes)} module(s) in {elapsed:.1f} s "
        f"({mode}, scale {args.scale:g}); results in {args.results}",
        file=sys.stderr,
    )
    if args.quick and elapsed > QUICK_BUDGET_SECONDS * args.repeat:
        print(
            f"bench: the quick run took {elapsed:.0f} s, over its "
            f"{QUICK_BUDGET_SECONDS * args.repeat:.0f} s "
            "budget; shrink the quick sizes of the slowest module above",
            file=sys.stderr,
        )
    if failed:
        print(f"bench: FAILED: {', '.join(failed)}", file=sys.stderr)
        return EXIT_BENCHMARK_FAILED
    return EXIT_OK
