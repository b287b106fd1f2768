"""The benchmark runner behind `python -m bench` (`make bench`, `make bench QUICK=1`).

    python -m bench [--quick] [--only NAME ...] [--scale FACTOR] [--repeat N] [--json-only]
                    [--results PATH] [--own-database]

It finds every module `bench/bench_*.py` (in name order), sets Django up (settings module
`evoflow.settings` unless DJANGO_SETTINGS_MODULE says otherwise), runs each module's
`run(ctx)`, then prints an aligned table of every figure and one line per result of the form
`BENCH {json}`, so that `grep '^BENCH ' | cut -c7-` yields JSON lines. The same lines go to
`bench/results/latest.jsonl`.

Every rate a result ties to a PostgreSQL reference kind (`Result.reference`, see `bench`) gets
its ratio to that reference measured in the same repetition: by the module itself (a result
with `reference_kind`) or, when the module has none, by the harness right after the module
(`bench.reference.measure_kind`). The table shows the ratio's median beside the figure, the
JSON line every repetition's ratio. The server's durability settings (`fsync`,
`synchronous_commit`, `full_page_writes`, `wal_level`) head the table and go into every JSON
line with what the result's path changed (`Result.durability`); a ratio whose reference ran
with another `synchronous_commit` than its figure fails the module. With `--own-database`
(what `make bench` passes) the run creates a
database of its own on the server DATABASE_URL names, migrates it, measures there and drops it
at the end, so nothing of the development database (its data, a feature flag turned off in the
admin) changes a figure, and no benchmark row is left behind. A module that raises is reported
on stderr and makes the exit status 1; the other modules still run. A missed target is
reported, never an error: speed is measured here, not asserted. A module that raises
`bench.Skipped` is reported as skipped with its reason, and does not fail the run.

`--quick` promises QUICK_BUDGET_SECONDS per repetition for every module together, plus the
`QUICK_BUDGET_SECONDS` a module declares for itself (one that starts a topology); a quick run
over its budget names the modules that took longest.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import bench
from bench import (
    DURABILITY_SETTINGS,
    Context,
    Result,
    Skipped,
    cpu_count,
    format_figure,
    kind_is_durable,
    reset_peak_rss,
)

JSON_PREFIX = "BENCH "
MODULE_PREFIX = "bench_"
DEFAULT_RESULTS = Path(bench.__file__).resolve().parent / "results" / "latest.jsonl"
# A figure whose repetitions spread wider than this around their median is flagged as too
# noisy to judge: (max - min) / median of its rates and of the figures a target is set on.
SPREAD_LIMIT = 0.25
# A result whose measured window's two halves differ by more than this (its `drift_pct`) was
# still warming up or was disturbed: flagged as not steady.
DRIFT_LIMIT_PCT = 25.0
# The quick run is meant for every commit; past this per repetition (every module without a
# budget of its own, the harness's reference measurements included) it is no longer quick.
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
    # Per benchmark, per rate: its reference kind, the reference's rows/s and the ratio; in a
    # combined outcome, their medians with every repetition's values.
    ratios: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    # Set when the module raised `bench.Skipped`: why it did not run.
    skipped: str | None = None
    quick_budget_seconds: float | None = None


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
        "durability": server_durability(conninfo),
    }


def server_durability(conninfo: str) -> dict[str, str]:
    """The server's settings that decide what a commit costs (bench.DURABILITY_SETTINGS), as
    the benchmark's connections see them."""
    import psycopg

    from evoflow.db import psycopg_connect_kwargs

    with psycopg.connect(conninfo, autocommit=True, **psycopg_connect_kwargs()) as connection:
        rows = connection.execute(
            "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
            [list(DURABILITY_SETTINGS)],
        ).fetchall()
    found = dict(rows)
    return {name: str(found[name]) for name in DURABILITY_SETTINGS if name in found}


def commits_durably(setting: str | None) -> bool | None:
    """Whether a `synchronous_commit` value waits for the WAL flush on a standalone server."""
    if setting is None:
        return None
    return setting.lower() not in ("off", "false", "0")


def run_module(module: str, ctx: Context, taken_names: set[str]) -> ModuleOutcome:
    """Import and run one benchmark module; any exception becomes the outcome's error.

    `taken_names` holds the benchmark names reported so far: a name reported twice would make
    the JSON lines ambiguous for whoever compares runs, so it fails the module. The ratios of
    the module's rates to their references are resolved here, in the same repetition.
    """
    # Each module's peak memory is its own, not the largest one's before it.
    reset_peak_rss()
    started = time.perf_counter()
    budget: float | None = None
    try:
        loaded = importlib.import_module(f"bench.{module}")
        budget = getattr(loaded, "QUICK_BUDGET_SECONDS", None)
        results = loaded.run(ctx)
        if not isinstance(results, list) or not all(isinstance(r, Result) for r in results):
            raise TypeError(f"bench.{module}.run() must return a list of bench.Result")
        if not results:
            raise ValueError(f"bench.{module}.run() returned no results")
        names = [result.benchmark for result in results]
        repeated = sorted({name for name in names if name in taken_names or names.count(name) > 1})
        if repeated:
            raise ValueError(f"bench.{module}: benchmark names reported twice: {repeated}")
        ratios = resolve_ratios(results, ctx)
    except Skipped as skipped:
        return ModuleOutcome(
            module,
            time.perf_counter() - started,
            skipped=str(skipped) or "no reason given",
            quick_budget_seconds=budget,
        )
    except Exception:
        return ModuleOutcome(
            module,
            time.perf_counter() - started,
            error=traceback.format_exc(),
            quick_budget_seconds=budget,
        )
    taken_names.update(names)
    return ModuleOutcome(
        module,
        time.perf_counter() - started,
        results=results,
        ratios=ratios,
        quick_budget_seconds=budget,
    )


def resolve_ratios(results: Sequence[Result], ctx: Context) -> dict[str, dict[str, dict]]:
    """Each rate with a reference kind, divided by that kind's rows/s of this repetition.

    The reference comes from the result's own `reference_values`, else from a result of the
    same module run that is that kind, else the harness measures it now, on the run's
    database. A reference that committed with another `synchronous_commit` than the figure's
    path is refused: the ratio would compare a durable path with a non-durable ceiling.
    """
    server = dict(ctx.machine.get("durability") or {})
    provided: dict[str, tuple[float, str | None]] = {}
    for result in results:
        if result.reference_kind is not None and result.reference_kind not in provided:
            setting = result.durability.get("synchronous_commit", server.get("synchronous_commit"))
            provided[result.reference_kind] = (result.figures["rows_per_s"], setting)
    needed = sorted(
        {
            kind
            for result in results
            for kind in result.reference.values()
            if kind not in result.reference_values and kind not in provided
        }
    )
    if needed:
        from bench.reference import measure_kind

        for kind in needed:
            setting = "on" if kind_is_durable(kind) else "off"
            provided[kind] = (measure_kind(ctx, kind).rows_per_s, setting)
    ratios: dict[str, dict[str, dict]] = {}
    for result in results:
        path_setting = result.durability.get("synchronous_commit", server.get("synchronous_commit"))
        for figure, kind in result.reference.items():
            if kind in result.reference_values:
                rows_per_s = result.reference_values[kind]
                setting = "on" if kind_is_durable(kind) else "off"
                source = "module"
            else:
                rows_per_s, setting = provided[kind]
                source = "harness" if kind in needed else "module"
            if commits_durably(setting) != commits_durably(path_setting):
                raise ValueError(
                    f"{result.benchmark}: {figure} ran with synchronous_commit={path_setting}"
                    f" but its reference {kind} with synchronous_commit={setting}; name the"
                    " reference kind of the same durability"
                )
            if not rows_per_s > 0:
                raise ValueError(f"{result.benchmark}: reference {kind} measured no rate")
            ratios.setdefault(result.benchmark, {})[figure] = {
                "reference": kind,
                "reference_rows_per_s": rows_per_s,
                "ratio": result.figures[figure] / rows_per_s,
                "measured_by": source,
            }
    return ratios


def combine(module: str, runs: Sequence[ModuleOutcome]) -> ModuleOutcome:
    """One outcome from a module's repetitions: each figure the median of its values, with
    every value, the min and the max kept; a rate spread wider than SPREAD_LIMIT is noted.
    Ratios to the reference are combined the same way, each repetition's ratio computed with
    that repetition's reference (never a median divided by a median)."""
    seconds = sum(run.seconds for run in runs)
    budget = runs[0].quick_budget_seconds if runs else None
    failed = [run.error for run in runs if run.error is not None]
    if failed:
        return ModuleOutcome(module, seconds, error=failed[0], quick_budget_seconds=budget)
    skipped = [run.skipped for run in runs if run.skipped is not None]
    if skipped:
        return ModuleOutcome(module, seconds, skipped=skipped[0], quick_budget_seconds=budget)
    by_name: dict[str, list[Result]] = {}
    ratio_runs: dict[str, list[dict[str, dict[str, Any]]]] = {}
    for run in runs:
        for result in run.results:
            by_name.setdefault(result.benchmark, []).append(result)
            ratio_runs.setdefault(result.benchmark, []).append(run.ratios.get(result.benchmark, {}))
    combined: list[Result] = []
    repetitions: dict[str, dict[str, dict[str, Any]]] = {}
    ratios: dict[str, dict[str, dict[str, Any]]] = {}
    for name, results in by_name.items():
        first = results[0]
        ratios[name] = combine_ratios(ratio_runs[name])
        if len(runs) == 1:
            unsteady = steadiness_note(first.figures)
            combined.append(
                dataclasses.replace(
                    first, notes="; ".join(part for part in (first.notes, unsteady) if part)
                )
                if unsteady
                else first
            )
            continue
        stats: dict[str, dict[str, Any]] = {}
        medians: dict[str, float] = {}
        for figure in first.figures:
            values = [r.figures[figure] for r in results if figure in r.figures]
            medians[figure] = statistics.median(values)
            stats[figure] = {"values": values, "min": min(values), "max": max(values)}
        # Judged: every rate, and every figure a target is set on (a duration such as the
        # integrity run's seconds is as noisy as a rate and decides a verdict too).
        judged = {target.figure for target in first.targets}
        spreads = [
            (stats[figure]["max"] - stats[figure]["min"]) / abs(medians[figure])
            for figure in medians
            if (figure.endswith("_per_s") or figure in judged) and medians[figure]
        ]
        spread = max(spreads, default=0.0)
        note = f"median of {len(results)}, spread {spread:.0%}"
        ratio_spreads = [entry["spread"] for entry in ratios[name].values()]
        if ratio_spreads:
            note += f", ratio spread {max(ratio_spreads):.0%}"
        if spread > SPREAD_LIMIT:
            note += ", TOO WIDE TO JUDGE"
        unsteady = steadiness_note(medians)
        if unsteady:
            note += f", {unsteady}"
        repetitions[name] = stats
        combined.append(
            dataclasses.replace(
                first,
                figures=medians,
                notes="; ".join(part for part in (first.notes, note) if part),
            )
        )
    return ModuleOutcome(
        module,
        seconds,
        results=combined,
        repetitions=repetitions,
        ratios={name: entry for name, entry in ratios.items() if entry},
        quick_budget_seconds=budget,
    )


def steadiness_note(figures: Mapping[str, float]) -> str:
    """A warning when a result's measured window was not steady: its second half's rate moved
    from its first half's by more than DRIFT_LIMIT_PCT (`drift_pct`, see bench.steady_rate)."""
    drift = figures.get("drift_pct")
    if drift is None or abs(drift) <= DRIFT_LIMIT_PCT:
        return ""
    return f"drift {drift:+.0f}%: NOT STEADY"


def combine_ratios(per_run: Sequence[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """The median ratio of each rate over the repetitions that measured it, with its values."""
    combined: dict[str, dict[str, Any]] = {}
    figures = {figure for run in per_run for figure in run}
    for figure in sorted(figures):
        entries = [run[figure] for run in per_run if figure in run]
        values = [entry["ratio"] for entry in entries]
        references = [entry["reference_rows_per_s"] for entry in entries]
        median = statistics.median(values)
        combined[figure] = {
            "reference": entries[0]["reference"],
            "ratio": median,
            "values": values,
            "min": min(values),
            "max": max(values),
            "spread": (max(values) - min(values)) / median if median else 0.0,
            "reference_rows_per_s": statistics.median(references),
            "reference_values": references,
            "measured_by": entries[0]["measured_by"],
        }
    return combined


def json_record(
    result: Result, outcome: ModuleOutcome, ctx: Context, recorded_at: str
) -> dict[str, Any]:
    server = dict(ctx.machine.get("durability") or {})
    return {
        "benchmark": result.benchmark,
        "module": short_name(outcome.module),
        "figures": result.figures,
        "targets": [target.as_json(result.figures) for target in result.targets],
        "notes": result.notes,
        "ratios": outcome.ratios.get(result.benchmark, {}),
        "reference_kind": result.reference_kind,
        # What the server ran with, and what this result's path ran with (the server's
        # settings with the path's own on top).
        "durability": {"server": server, "path": {**server, **result.durability}},
        "warmup": result.warmup,
        "quick": ctx.quick,
        "scale": ctx.scale,
        "module_seconds": round(outcome.seconds, 3),
        "repetitions": outcome.repetitions.get(result.benchmark, {}),
        "recorded_at": recorded_at,
        "machine": dict(ctx.machine),
    }


def describe_durability(settings: Mapping[str, str]) -> str:
    return " ".join(f"{name}={value}" for name, value in settings.items())


def render_table(
    results: Sequence[Result],
    ratios: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
    durability: Mapping[str, str] | None = None,
) -> str:
    """One row per figure, the benchmark's name and notes on its first row only; a rate with a
    reference shows its median ratio to it. Headed by the server's durability settings."""
    ratios = ratios or {}
    header = ("benchmark", "figure", "value", "x reference", "target", "notes")
    rows: list[tuple[str, str, str, str, str, str]] = []
    for result in results:
        targets = {target.figure: target for target in result.targets}
        own_ratios = ratios.get(result.benchmark, {})
        notes = result.notes
        extras = []
        if result.durability:
            extras.append(f"this path: {describe_durability(result.durability)}")
        if result.warmup:
            extras.append(f"warm-up: {result.warmup}")
        notes = "; ".join(part for part in (notes, *extras) if part)
        for index, (figure, value) in enumerate(result.figures.items()):
            target = targets.get(figure)
            target_text = ""
            if target is not None:
                verdict = "met" if target.is_met(result.figures) else "MISSED"
                target_text = f"{target.describe()} {verdict}"
            ratio = own_ratios.get(figure)
            ratio_text = ""
            if ratio is not None:
                ratio_text = (
                    f"{ratio['ratio']:.3g} of {ratio['reference']}"
                    f" {format_figure(ratio['reference_rows_per_s'])}/s"
                )
            first = index == 0
            rows.append(
                (
                    result.benchmark if first else "",
                    figure,
                    format_figure(value),
                    ratio_text,
                    target_text,
                    notes if first else "",
                )
            )
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(5)]

    def line(row: tuple[str, str, str, str, str, str]) -> str:
        name, figure, value, ratio, target, notes = row
        cells = [
            name.ljust(widths[0]),
            figure.ljust(widths[1]),
            value.rjust(widths[2]),
            ratio.ljust(widths[3]),
            target.ljust(widths[4]),
            notes,
        ]
        return "  ".join(cells).rstrip()

    separator = tuple("-" * width for width in widths) + ("-----",)
    lines = []
    if durability is not None:
        lines.append(
            "PostgreSQL durability (server): " + (describe_durability(durability) or "unknown")
        )
    lines += [line(header), line(separator), *(line(row) for row in rows)]  # type: ignore[arg-type]
    return "\n".join(lines)


def quick_budget(outcomes: Sequence[ModuleOutcome]) -> float:
    """Seconds one quick repetition may take: the shared budget, plus the budget of each module
    that declares one of its own (and so is not counted in the shared one)."""
    return QUICK_BUDGET_SECONDS + sum(outcome.quick_budget_seconds or 0.0 for outcome in outcomes)


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
            elif outcome.skipped is not None:
                print(
                    f"bench: {short_name(module)} skipped: {outcome.skipped}",
                    file=sys.stderr,
                    flush=True,
                )
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
    skipped = [
        f"{short_name(outcome.module)} ({outcome.skipped})"
        for outcome in outcomes
        if outcome.skipped is not None
    ]
    if not args.json_only:
        ratios = {name: entry for outcome in outcomes for name, entry in outcome.ratios.items()}
        if results:
            print(render_table(results, ratios, machine.get("durability") or {}))
        if skipped:
            print("skipped: " + "; ".join(skipped))
        if results or skipped:
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
    if args.quick:
        budget = quick_budget(outcomes) * args.repeat
        if elapsed > budget:
            slowest = sorted(outcomes, key=lambda outcome: -outcome.seconds)[:3]
            print(
                f"bench: the quick run took {elapsed:.0f} s, over its {budget:.0f} s budget "
                f"({args.repeat} x {budget / args.repeat:.0f} s); slowest: "
                + ", ".join(
                    f"{short_name(outcome.module)} {outcome.seconds / args.repeat:.0f} s"
                    " per repetition"
                    for outcome in slowest
                )
                + "; shrink their quick sizes",
                file=sys.stderr,
            )
    if failed:
        print(f"bench: FAILED: {', '.join(failed)}", file=sys.stderr)
        return EXIT_BENCHMARK_FAILED
    return EXIT_OK
