"""The journeys benchmark runs end to end at a tiny scale and verifies its own work."""

from __future__ import annotations

import json

import pytest

from tests.helpers import run_python


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_journeys_benchmark_runs_and_cleans_up(subprocess_env, tmp_path):
    from journeys.models import Contact, Journey

    completed = run_python(
        "-m",
        "bench",
        "--quick",
        "--scale",
        "0.02",
        "--only",
        "journeys",
        "--json-only",
        "--results",
        str(tmp_path / "latest.jsonl"),
        env=subprocess_env,
        timeout=240,
    )

    assert completed.returncode == 0, completed.stderr[-3000:]
    records = {
        record["benchmark"]: record
        for record in (
            json.loads(line.removeprefix("BENCH "))
            for line in completed.stdout.splitlines()
            if line.startswith("BENCH ")
        )
    }
    assert records["journeys.engine"]["figures"]["node_steps"] == 20 * 5
    assert records["journeys.naive"]["figures"]["node_steps"] == 4 * 5
    assert "journeys.postgres.copy.write_row" in records
    assert Journey.objects.count() == 0
    assert Contact.objects.count() == 0
