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

from bench import DURABILITY_SETTINGS, Context, Result, Skipped, Target, harness, steady_rate
from tests.helpers import run_python

REFERENCE_BENCHMARKS = {
    "postgres.copy.write_row",
    "postgres.copy.text_stream",
    "postgres.copy.write_row.durable",
    "postgres.insert_on_conflict.1_conn",
    "postgres.insert_on_conflict.16_conn",
    "postgres.insert_on_conflict.1_conn.durable",
    "postgres.insert_on_conflict.16_conn.durable",
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

    # Then it succeeds and prints the table under the server's durability settings, every
    # benchmark named in it
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert lines[0].startswith("PostgreSQL durability (server): fsync=")
    assert lines[1].split() == ["benchmark", "figure", "value", "x", "reference", "target", "notes"]
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

    # And positive figures for COPY and for the 1- and 16-connection insert loops, each
    # measured after a warm-up it names, durable or not
    by_name = {record["benchmark"]: record["figures"] for record in records}
    kinds = {record["benchmark"]: record["reference_kind"] for record in records}
    copies = ("write_row", "text_stream", "write_row.durable")
    for name in copies:
        figures = by_name[f"postgres.copy.{name}"]
        assert figures["rows"] == 600
        # 20 batches of 30 rows, the first two of which warm up
        assert figures["warmup_rows"] == 60
        assert figures["rows_per_s"] > 0
        assert figures["seconds"] > 0
    assert kinds["postgres.copy.write_row"] == "copy"
    assert kinds["postgres.copy.write_row.durable"] == "copy_durable"
    assert kinds["postgres.copy.text_stream"] is None
    for connections in (1, 16):
        for durable, rows in (("", 40), (".durable", 32)):
            name = f"postgres.insert_on_conflict.{connections}_conn{durable}"
            figures = by_name[name]
            assert figures["connections"] == connections
            assert figures["rows"] == rows
            # the first statements of every connection are left out
            assert figures["warmup_rows"] == min(rows // 2, max(round(rows / 10), connections * 5))
            assert figures["rows_per_s"] > 0
            assert figures["p99_ms"] >= figures["p50_ms"] > 0
            assert kinds[name] == f"insert_{connections}_conn" + durable.replace(".", "_")

    # And every line carries the server's durability settings, as the server reports them, and
    # the path's: the durable references with synchronous_commit on, the others off
    server = server_durability_settings()
    assert set(server) == set(DURABILITY_SETTINGS)
    assert f"synchronous_commit={server['synchronous_commit']}" in lines[0]
    for record in records:
        assert record["durability"]["server"] == server
        expected_commit = "on" if "durable" in record["benchmark"] else "off"
        assert record["durability"]["path"] == {**server, "synchronous_commit": expected_commit}
        assert record["warmup"].startswith("the first 10% of the")

    # And the same lines in the results file
    saved = [json.loads(line) for line in results_file.read_text().splitlines()]
    assert saved == records


def server_durability_settings() -> dict[str, str]:
    from django.db import connection

    with connection.cursor() as cursor:
        return {name: _show(cursor, name) for name in DURABILITY_SETTINGS}


def _show(cursor, name: str) -> str:
    cursor.execute(f"SHOW {name}")
    return cursor.fetchone()[0]


def test_an_unknown_module_name_is_a_usage_error(capsys, tmp_path):
    exit_code = harness.main(["--only", "no_such_benchmark", "--results", str(tmp_path / "r")])

    assert exit_code == harness.EXIT_USAGE
    assert "available: " in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


FAKE_DURABILITY = {
    "fsync": "on",
    "synchronous_commit": "off",
    "full_page_writes": "on",
    "wal_level": "replica",
}


def install_fake_modules(
    monkeypatch,
    runs: dict[str, Callable[[Context], list[Result]]],
    *,
    real_machine: bool = False,
) -> None:
    """Make the harness find exactly these benchmark modules. Unless `real_machine`, the
    machine's facts (and the server's durability) are given, so no database is needed."""
    for name, run in runs.items():
        module = types.ModuleType(f"bench.{name}")
        module.run = run  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, f"bench.{name}", module)
    monkeypatch.setattr(harness, "discover_modules", lambda only=(): sorted(runs))
    if not real_machine:
        monkeypatch.setattr(
            harness,
            "machine_facts",
            lambda *args, **kwargs: {"cpu_count": 2, "durability": FAKE_DURABILITY},
        )


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


def test_a_duration_with_a_target_is_judged_for_its_spread_like_a_rate(
    monkeypatch, capsys, tmp_path
):
    # Given a module reporting a duration with a target, noisy from one repetition to the next,
    # and a duration without a target
    seconds = iter([0.4, 1.2, 0.5])

    def timed_run(ctx: Context) -> list[Result]:
        value = next(seconds)
        return [
            Result(
                benchmark="fake.timed",
                figures={"seconds": value, "setup_seconds": 10 * value},
                targets=(Target("seconds", at_most=5.0),),
            )
        ]

    install_fake_modules(monkeypatch, {"bench_fake_timed": timed_run})

    # When the harness runs it three times
    exit_code = harness.main(["--repeat", "3", "--results", str(tmp_path / "latest.jsonl")])

    # Then the targeted duration's spread decides the verdict (the other is only reported)
    records = {record["benchmark"]: record for record in bench_lines(capsys.readouterr().out)}
    assert exit_code == harness.EXIT_OK
    assert records["fake.timed"]["figures"]["seconds"] == 0.5
    assert records["fake.timed"]["notes"] == "median of 3, spread 160%, TOO WIDE TO JUDGE"


def test_repeat_refuses_less_than_one(capsys):
    with pytest.raises(SystemExit):
        harness.main(["--repeat", "0"])
    assert "must be at least 1" in capsys.readouterr().err


def test_each_rate_is_divided_by_the_reference_of_its_own_repetition(monkeypatch, capsys, tmp_path):
    # Given a module whose machine slows down and speeds up between repetitions: its rate and
    # its reference move together
    rates = iter([100.0, 200.0, 50.0])
    references = iter([1_000.0, 2_000.0, 500.0])

    def run(ctx: Context) -> list[Result]:
        return [
            Result(
                benchmark="fake.rate",
                figures={"events_per_s": next(rates), "events": 10.0},
                reference={"events_per_s": "copy"},
                warmup="the first 2 events",
            ),
            Result(
                benchmark="fake.postgres.copy",
                figures={"rows_per_s": next(references)},
                reference_kind="copy",
            ),
        ]

    install_fake_modules(monkeypatch, {"bench_fake": run})

    # When the harness runs it three times
    exit_code = harness.main(["--repeat", "3", "--results", str(tmp_path / "latest.jsonl")])

    # Then the rate's median is judged too wide, but its ratio is the same in every repetition
    output = capsys.readouterr()
    assert exit_code == harness.EXIT_OK, output.err
    record = {r["benchmark"]: r for r in bench_lines(output.out)}["fake.rate"]
    assert record["figures"]["events_per_s"] == 100.0
    ratio = record["ratios"]["events_per_s"]
    assert ratio["reference"] == "copy"
    assert ratio["values"] == [0.1, 0.1, 0.1]
    assert ratio["ratio"] == 0.1
    assert ratio["reference_values"] == [1_000.0, 2_000.0, 500.0]
    assert ratio["reference_rows_per_s"] == 1_000.0
    assert ratio["measured_by"] == "module"
    assert "events" not in record["ratios"]
    assert record["notes"] == "median of 3, spread 150%, ratio spread 0%, TOO WIDE TO JUDGE"
    assert record["warmup"] == "the first 2 events"
    # And the table shows the ratio beside the figure, and the warm-up rule
    table = output.out.split(harness.JSON_PREFIX)[0]
    row = next(line for line in table.splitlines() if line.startswith("fake.rate "))
    assert "0.1 of copy 1,000/s" in row
    assert "warm-up: the first 2 events" in row


def test_a_durable_path_compared_with_a_non_durable_reference_fails_the_module(
    monkeypatch, capsys, tmp_path
):
    # Given a durable path (synchronous_commit on, the server's is off) tied to COPY measured
    # with the server's setting
    def run(ctx: Context) -> list[Result]:
        return [
            Result(
                benchmark="fake.durable",
                figures={"events_per_s": 100.0},
                reference={"events_per_s": "copy"},
                durability={"synchronous_commit": "on"},
            ),
            Result(
                benchmark="fake.postgres.copy", figures={"rows_per_s": 10.0}, reference_kind="copy"
            ),
        ]

    install_fake_modules(monkeypatch, {"bench_fake": run})

    # When the harness runs it
    exit_code = harness.main(["--results", str(tmp_path / "latest.jsonl")])

    # Then the module fails, saying which durability each side had
    output = capsys.readouterr()
    assert exit_code == harness.EXIT_BENCHMARK_FAILED
    assert (
        "fake.durable: events_per_s ran with synchronous_commit=on but its reference copy with"
        " synchronous_commit=off" in output.err
    )
    assert bench_lines(output.out) == []


def test_every_record_says_the_server_s_durability_and_what_its_path_changed(
    monkeypatch, capsys, tmp_path
):
    def run(ctx: Context) -> list[Result]:
        return [
            Result(benchmark="fake.plain", figures={"seconds": 1.0}),
            Result(
                benchmark="fake.async",
                figures={"seconds": 1.0},
                durability={"synchronous_commit": "off"},
            ),
        ]

    install_fake_modules(monkeypatch, {"bench_fake": run})
    monkeypatch.setattr(
        harness,
        "machine_facts",
        lambda *args, **kwargs: {"durability": {**FAKE_DURABILITY, "synchronous_commit": "on"}},
    )

    assert harness.main(["--results", str(tmp_path / "latest.jsonl")]) == harness.EXIT_OK

    output = capsys.readouterr()
    records = {r["benchmark"]: r for r in bench_lines(output.out)}
    server = {**FAKE_DURABILITY, "synchronous_commit": "on"}
    assert records["fake.plain"]["durability"] == {"server": server, "path": server}
    assert records["fake.async"]["durability"] == {
        "server": server,
        "path": {**server, "synchronous_commit": "off"},
    }
    assert output.out.splitlines()[0] == (
        "PostgreSQL durability (server): "
        "fsync=on synchronous_commit=on full_page_writes=on wal_level=replica"
    )
    row = next(line for line in output.out.splitlines() if line.startswith("fake.async "))
    assert row.endswith("this path: synchronous_commit=off")


@pytest.mark.slow
@pytest.mark.django_db
def test_the_harness_measures_a_reference_the_module_did_not(monkeypatch, capsys, tmp_path):
    # Given a module with a durable rate and no reference of its own, on the test database
    def run(ctx: Context) -> list[Result]:
        return [
            Result(
                benchmark="fake.webhook",
                figures={"events_per_s": 50.0},
                reference={"events_per_s": "insert_16_conn_durable"},
                durability={"synchronous_commit": "on"},
            )
        ]

    install_fake_modules(monkeypatch, {"bench_fake": run}, real_machine=True)

    # When the harness runs it twice at a tiny scale
    exit_code = harness.main(
        ["--quick", "--scale", "0.01", "--repeat", "2", "--results", str(tmp_path / "r.jsonl")]
    )

    # Then it measured durable single-row inserts from 16 connections after the module, in
    # each repetition, and divided the rate by them
    output = capsys.readouterr()
    assert exit_code == harness.EXIT_OK, output.err
    record = bench_lines(output.out)[0]
    ratio = record["ratios"]["events_per_s"]
    assert ratio["measured_by"] == "harness"
    assert ratio["reference"] == "insert_16_conn_durable"
    assert len(ratio["reference_values"]) == 2
    assert all(value > 0 for value in ratio["reference_values"])
    assert ratio["values"] == [50.0 / value for value in ratio["reference_values"]]
    # And the record names the real server's settings, and the path's durable commit
    assert record["durability"]["server"] == server_durability_settings()
    assert record["durability"]["path"]["synchronous_commit"] == "on"


def test_a_skipped_module_is_reported_with_its_reason_and_does_not_fail_the_run(
    monkeypatch, capsys, tmp_path
):
    # Given the topology benchmark on a machine without one of its programs
    from bench import bench_topology

    monkeypatch.setattr(
        bench_topology, "REQUIRED_PROGRAMS", ("pgbouncer", "evoflow-no-such-program")
    )

    def working_run(ctx: Context) -> list[Result]:
        return [Result(benchmark="fake.ok", figures={"seconds": 1.0})]

    install_fake_modules(monkeypatch, {"bench_fake_ok": working_run})
    monkeypatch.setattr(
        harness, "discover_modules", lambda only=(): ["bench_fake_ok", "bench_topology"]
    )

    # When the harness runs both
    exit_code = harness.main(["--results", str(tmp_path / "latest.jsonl")])

    # Then the run succeeds, the topology skipped with the missing program named
    output = capsys.readouterr()
    assert exit_code == harness.EXIT_OK, output.err
    assert "bench: topology skipped: evoflow-no-such-program not installed" in output.err
    assert "skipped: topology (evoflow-no-such-program not installed" in output.out
    assert [record["benchmark"] for record in bench_lines(output.out)] == ["fake.ok"]


def test_the_topology_lines_become_results_with_their_own_server_s_reference():
    from bench.bench_topology import results_from_records

    durability = {**FAKE_DURABILITY, "synchronous_commit": "on"}
    sizes = {
        "web_groups": 2,
        "web_processes": 2,
        "web_threads": 4,
        "clusters": 2,
        "q_workers": 2,
        "pool_size": 6,
    }

    def record(label: str, part: str, figures: dict, **extra: object) -> dict:
        return {
            "benchmark": f"topology.{label}.{part}",
            "figures": figures,
            "label": label,
            "durability": durability,
            "sizes": sizes,
            **extra,
        }

    records = []
    for label, events, steps in (("single", 200.0, 300.0), ("topology", 250.0, 600.0)):
        records += [
            record(
                label,
                "webhook",
                {"events_per_s": events},
                reference={"events_per_s": "insert_16_conn_durable"},
            ),
            record(
                label, "journeys", {"steps_per_s": steps}, reference={"steps_per_s": "copy_durable"}
            ),
            record(
                label,
                "postgres",
                {"insert_16_conn_durable_rows_per_s": 2_000.0},
                reference_values={"insert_16_conn_durable": 2_000.0, "copy_durable": 60_000.0},
            ),
        ]

    results = {result.benchmark: result for result in results_from_records(records)}

    webhook = results["topology.topology.webhook"]
    assert webhook.reference_values["insert_16_conn_durable"] == 2_000.0
    assert webhook.durability == durability
    assert results["topology.scaling"].durability == durability
    assert results["topology.scaling"].figures == {
        "webhook_x_single": 1.25,
        "journeys_x_single": 2.0,
    }


def test_steady_rate_leaves_the_warm_up_out_and_measures_the_drift():
    # Ten operations a second after a slow start of two operations in the first two seconds
    completions = [(1.0, 1), (2.0, 1)] + [(2.0 + n / 10, 1) for n in range(1, 41)]

    by_operations = steady_rate(completions, started=0.0, warmup_ops=2)
    assert by_operations.rate_per_s == pytest.approx(10.0)
    assert by_operations.warmup_units == 2
    assert by_operations.seconds == pytest.approx(4.0)
    assert by_operations.drift_pct == pytest.approx(0.0)

    by_seconds = steady_rate(completions, started=0.0, warmup_seconds=2.0)
    assert by_seconds.rate_per_s == pytest.approx(10.0)

    # Without the warm-up the rate is lower and the halves disagree
    cold = steady_rate(completions, started=0.0)
    assert cold.rate_per_s == pytest.approx(42 / 6)
    assert cold.drift_pct > 50

    with pytest.raises(ValueError, match="too short"):
        steady_rate([(1.0, 1)], started=0.0, warmup_ops=1)


def test_a_path_that_commits_as_the_server_does_takes_the_server_s_kind():
    def context(setting: str) -> Context:
        return Context(
            quick=True,
            scale=1.0,
            conninfo="",
            machine={"durability": {**FAKE_DURABILITY, "synchronous_commit": setting}},
        )

    assert context("off").server_kind("copy") == "copy"
    assert context("on").server_kind("copy") == "copy_durable"
    assert context("local").server_kind("insert_16_conn_durable") == "insert_16_conn_durable"
    assert context("off").server_kind("insert_1_conn_durable") == "insert_1_conn"


def test_a_reference_names_a_known_kind_and_a_rate():
    with pytest.raises(ValueError, match="unknown reference kind"):
        Result(benchmark="x", figures={"rows_per_s": 1.0}, reference={"rows_per_s": "fast"})
    with pytest.raises(ValueError, match="not a rate"):
        Result(benchmark="x", figures={"p99_ms": 1.0}, reference={"p99_ms": "copy"})
    with pytest.raises(ValueError, match="unknown durability setting"):
        Result(benchmark="x", figures={"seconds": 1.0}, durability={"fsync_please": "on"})
    assert issubclass(Skipped, Exception)


def test_a_result_whose_halves_disagree_is_flagged_as_not_steady(monkeypatch, capsys, tmp_path):
    # Given a steady result and one whose second half ran 40% faster than its first
    def run(ctx: Context) -> list[Result]:
        return [
            Result(benchmark="fake.steady", figures={"events_per_s": 10.0, "drift_pct": 5.0}),
            Result(benchmark="fake.warming", figures={"events_per_s": 10.0, "drift_pct": 40.0}),
        ]

    install_fake_modules(monkeypatch, {"bench_fake": run})

    # When the harness runs it once, and then three times
    assert harness.main(["--results", str(tmp_path / "one.jsonl")]) == harness.EXIT_OK
    once = {r["benchmark"]: r["notes"] for r in bench_lines(capsys.readouterr().out)}
    assert harness.main(["--repeat", "3", "--results", str(tmp_path / "three.jsonl")]) == 0
    thrice = {r["benchmark"]: r["notes"] for r in bench_lines(capsys.readouterr().out)}

    # Then only the drifting one is flagged, both times
    assert once == {"fake.steady": "", "fake.warming": "drift +40%: NOT STEADY"}
    assert thrice["fake.steady"] == "median of 3, spread 0%"
    assert thrice["fake.warming"] == "median of 3, spread 0%, drift +40%: NOT STEADY"
