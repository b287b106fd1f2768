"""The benchmark harness (`python -m bench`): its output contract and its exit status.

Only the shape of what it reports is checked here, never how fast anything is: speed belongs
to the benchmarks, and a timed assertion would fail on a busy machine for no fault of the code.
"""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Callable

import pytest

from bench import Context, Result, harness
from tests.helpers import run_python

REFERENCE_BENCHMARKS = {
    "postgres.copy.write_row",
    "postgres.copy.text_stream",
    "postgres.insert_on_conflict.1_conn",
    "postgres.insert_on_conflict.16_conn",
}


def bench_lines(stdout: str) -> list[dict]:
    return [
        json.loads(line.removeprefix(harness.JSON_PREFIX))
        for line in stdout.splitlines()
        if line.startswith(harness.JSON_PREFIX)
    ]


@pytest.mark.slow
@pytest.mark.django_db
def test_quick_run_prints_a_table_and_one_json_line_per_result(subprocess_env, tmp_path):
    # Given the harness pointed at the test database, at a tiny scale
    results_file = tmp_path / "latest.jsonl"

    # When it runs the PostgreSQL reference benchmark
    completed = run_python(
        "-m",
        "bench",
        "--quick",
        "--scale",
        "0.01",
        "--only",
        "postgres_reference",
        "--results",
        str(results_file),
        env=subprocess_env,
        timeout=240,
    )

    # Then it succeeds and prints the table, every benchmark named in it
    assert completed.returncode == 0, completed.stderr
    table_header = completed.stdout.splitlines()[0].split()
    assert table_header == ["benchmark", "figure", "value", "target", "notes"]
    for name in REFERENCE_BENCHMARKS:
        assert name in completed.stdout

    # And exactly one parseable JSON line per result, with the run's facts
    records = bench_lines(completed.stdout)
    assert sorted(record["benchmark"] for record in records) == sorted(REFERENCE_BENCHMARKS)
    for record in records:
        assert record["module"] == "postgres_reference"
        assert record["quick"] is True
        assert record["scale"] == 0.01
        assert record["machine"]["cpu_count"] >= 1
        assert record["machine"]["python"] == ".".join(map(str, sys.version_info[:3]))
        assert record["machine"]["postgres"].startswith("15")

    # And positive figures for COPY and for the 1- and 16-connection insert loops
    by_name = {record["benchmark"]: record["figures"] for record in records}
    for name in ("postgres.copy.write_row", "postgres.copy.text_stream"):
        assert by_name[name]["rows"] == 2_000
        assert by_name[name]["rows_per_s"] > 0
        assert by_name[name]["seconds"] > 0
    for connections in (1, 16):
        figures = by_name[f"postgres.insert_on_conflict.{connections}_conn"]
        assert figures["connections"] == connections
        assert figures["rows"] == 150
        assert figures["rows_per_s"] > 0
        assert figures["p99_ms"] >= figures["p50_ms"] > 0

    # And the same lines in the results file
    saved = [json.loads(line) for line in results_file.read_text().splitlines()]
    assert saved == records


def test_an_unknown_module_name_is_a_usage_error(capsys, tmp_path):
    exit_code = harness.main(["--only", "no_such_benchmark", "--results", str(tmp_path / "r")])

    assert exit_code == harness.EXIT_USAGE
    assert "available: " in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def install_fake_modules(monkeypatch, runs: dict[str, Callable[[Context], list[Result]]]) -> None:
    """Make the harness find exactly these benchmark modules, none of which needs a database."""
    for name, run in runs.items():
        module = types.ModuleType(f"bench.{name}")
        module.run = run  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, f"bench.{name}", module)
    monkeypatch.setattr(harness, "discover_modules", lambda only=(): sorted(runs))
    monkeypatch.setattr(harness, "machine_facts", lambda *args, **kwargs: {"cpu_count": 2})


def test_a_module_that_raises_fails_the_run_but_the_others_are_reported(
    monkeypatch, capsys, tmp_path
):
    # Given two modules, the first of which raises
    def broken_run(ctx: Context) -> list[Result]:
        raise RuntimeError("the scratch table vanished")

    def working_run(ctx: Context) -> list[Result]:
        return [Result(benchmark="fake.ok", figures={"rows_per_s": 10.0}, notes="fine")]

    install_fake_modules(
        monkeypatch, {"bench_fake_broken": broken_run, "bench_fake_ok": working_run}
    )

    # When the harness runs them
    exit_code = harness.main(["--results", str(tmp_path / "latest.jsonl")])

    # Then the run fails, naming the module and its error
    output = capsys.readouterr()
    assert exit_code == harness.EXIT_BENCHMARK_FAILED
    assert "RuntimeError: the scratch table vanished" in output.err
    assert "FAILED: fake_broken" in output.err
    # And the working module's result is still printed and saved
    records = bench_lines(output.out)
    assert [record["benchmark"] for record in records] == ["fake.ok"]
    assert records[0]["figures"] == {"rows_per_s": 10.0}
    saved = [json.loads(line) for line in (tmp_path / "latest.jsonl").read_text().splitlines()]
    assert saved == records


def test_a_benchmark_name_reported_twice_fails_the_second_module(monkeypatch, capsys, tmp_path):
    # Given two modules reporting the same benchmark name
    def same_name(ctx: Context) -> list[Result]:
        return [Result(benchmark="fake.same", figures={"seconds": 1.0})]

    install_fake_modules(monkeypatch, {"bench_fake_a": same_name, "bench_fake_b": same_name})

    # When the harness runs them
    exit_code = harness.main(["--json-only", "--results", str(tmp_path / "latest.jsonl")])

    # Then only the first one's line is printed, and the run fails on the second
    output = capsys.readouterr()
    assert exit_code == harness.EXIT_BENCHMARK_FAILED
    assert "FAILED: fake_b" in output.err
    assert [record["module"] for record in bench_lines(output.out)] == ["fake_a"]
    # And --json-only printed nothing but the JSON lines
    assert all(line.startswith(harness.JSON_PREFIX) for line in output.out.splitlines())


def test_a_result_rejects_figures_that_are_not_finite_numbers():
    with pytest.raises(ValueError, match="not finite"):
        Result(benchmark="x", figures={"rows_per_s": float("nan")})
    with pytest.raises(TypeError, match="not a number"):
        Result(benchmark="x", figures={"rows_per_s": True})


@pytest.mark.slow
@pytest.mark.django_db
def test_own_database_measures_in_a_database_of_its_own_and_drops_it(subprocess_env, tmp_path):
    from django.db import connection

    def bench_databases() -> set[str]:
        with connection.cursor() as cursor:
            cursor.execute("SELECT datname FROM pg_database WHERE datname LIKE 'evoflow_bench_%%'")
            return {row[0] for row in cursor.fetchall()}

    before = bench_databases()

    # When the harness runs with --own-database against the test database's server
    completed = run_python(
        *("-m", "bench", "--quick", "--scale", "0.01", "--only", "postgres_reference"),
        *("--own-database", "--results", str(tmp_path / "latest.jsonl")),
        env=subprocess_env,
        timeout=240,
    )

    # Then it measured in a database it created, and dropped that database at the end
    assert completed.returncode == 0, completed.stderr
    created = [
        line.split()[4].rstrip(",")
        for line in completed.stderr.splitlines()
        if line.startswith("bench: measuring in database ")
    ]
    assert len(created) == 1
    assert created[0].startswith("evoflow_bench_")
    assert created[0] not in before
    assert created[0] not in bench_databases()
    assert sorted(record["benchmark"] for record in bench_lines(completed.stdout)) == sorted(
        REFERENCE_BENCHMARKS
    )


def test_repeat_interleaves_the_modules_and_reports_each_figure_s_median_min_and_max(
    monkeypatch, capsys, tmp_path
):
    # Given two modules whose figures differ from one repetition to the next
    order: list[str] = []
    steady = iter([100.0, 102.0, 101.0])
    noisy = iter([50.0, 400.0, 90.0])

    def steady_run(ctx: Context) -> list[Result]:
        order.append("steady")
        return [Result(benchmark="fake.steady", figures={"rows_per_s": next(steady)})]

    def noisy_run(ctx: Context) -> list[Result]:
        order.append("noisy")
        return [Result(benchmark="fake.noisy", figures={"events_per_s": next(noisy)}, notes="n")]

    install_fake_modules(monkeypatch, {"bench_fake_a": steady_run, "bench_fake_b": noisy_run})

    # When the harness runs them three times
    exit_code = harness.main(["--repeat", "3", "--results", str(tmp_path / "latest.jsonl")])

    # Then the modules ran interleaved, and each figure is the median of its three values
    output = capsys.readouterr()
    assert exit_code == harness.EXIT_OK
    assert order == ["steady", "noisy"] * 3
    records = {record["benchmark"]: record for record in bench_lines(output.out)}
    assert records["fake.steady"]["figures"] == {"rows_per_s": 101.0}
    assert records["fake.steady"]["repetitions"] == {
        "rows_per_s": {"values": [100.0, 102.0, 101.0], "min": 100.0, "max": 102.0}
    }
    assert records["fake.steady"]["notes"] == "median of 3, spread 2%"
    assert records["fake.noisy"]["figures"] == {"events_per_s": 90.0}
    # And a figure whose repetitions disagree widely is flagged in the table and the JSON
    assert records["fake.noisy"]["notes"] == "n; median of 3, spread 389%, TOO WIDE TO JUDGE"
    assert "TOO WIDE TO JUDGE" in output.out.split(harness.JSON_PREFIX)[0]


def test_repeat_refuses_less_than_one(capsys):
    with pytest.raises(SystemExit):
        harness.main(["--repeat", "0"])
    assert "must be at least 1" in capsys.readouterr().err
