"""Throughput through the production topology, beside the same programs at their smallest.

Runs `python -m bench.topology` (see there) in a child process: it starts, twice, PostgreSQL
with durable commits, PgBouncer in transaction pooling and Redis (devtools.topology), once
"single" (one web process, one cluster of one worker) and once "topology" (two web groups of
two processes, two clusters of two workers), and measures in each

* `topology.<label>.webhook`: signed one-event webhooks acknowledged per second (16 clients),
  divided by the durable single-row inserts of 16 connections on the topology's own server;
* `topology.<label>.journeys`: node steps per second of a five-node journey, divided by
  durable COPY batches on the same server;
* `topology.<label>.postgres`: those two references, measured right after, directly;
* `topology.scaling`: the topology's figures over the single process's.

Every figure runs with the topology's durability (`fsync`, `synchronous_commit`,
`full_page_writes` on: what a client is acknowledged is on disk), which each result carries.
The module is skipped, with the reason, when `pgbouncer` or `redis-server` is not installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench import Context, Result, Skipped

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# The programs the topology starts besides PostgreSQL, where Debian installs them.
REQUIRED_PROGRAMS = ("pgbouncer", "redis-server")
PROGRAM_DIRECTORIES = ("/usr/sbin", "/usr/bin")
# Two topologies are initialised, migrated, started and stopped per repetition: the fixed cost
# alone is about a minute on two cores, so the shared quick budget cannot hold it.
QUICK_BUDGET_SECONDS = 150.0
TIMEOUT_SECONDS = 1_800


def missing_programs() -> list[str]:
    def found(name: str) -> bool:
        if shutil.which(name):
            return True
        return any(os.access(Path(folder) / name, os.X_OK) for folder in PROGRAM_DIRECTORIES)

    return [name for name in REQUIRED_PROGRAMS if not found(name)]


def run(ctx: Context) -> list[Result]:
    missing = missing_programs()
    if missing:
        raise Skipped(
            f"{' and '.join(missing)} not installed (Debian packages pgbouncer, redis-server)"
        )
    # The child starts servers of its own; nothing of this run's database goes with it.
    env = {key: value for key, value in os.environ.items() if not key.startswith("DATABASE_")}
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.topology",
            *(["--quick"] if ctx.quick else []),
            *("--scale", repr(ctx.scale)),
        ],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"python -m bench.topology exited {completed.returncode}:\n{completed.stderr[-4000:]}"
        )
    records = [
        json.loads(line.removeprefix("BENCH "))
        for line in completed.stdout.splitlines()
        if line.startswith("BENCH ")
    ]
    return results_from_records(records)


def results_from_records(records: list[dict[str, Any]]) -> list[Result]:
    """`bench.topology`'s lines as results: each label's figures with the reference values of
    its own server, and the topology over the single process."""
    references: dict[str, dict[str, float]] = {}
    for record in records:
        if "reference_values" in record:
            references[record["label"]] = record["reference_values"]
    results: list[Result] = []
    by_name: dict[str, dict[str, float]] = {}
    for record in records:
        sizes = record["sizes"]
        shape = (
            f"{sizes['web_groups']} web group(s) x {sizes['web_processes']} process(es) x "
            f"{sizes['web_threads']} threads, {sizes['clusters']} cluster(s) x "
            f"{sizes['q_workers']} worker(s), PgBouncer pool {sizes['pool_size']}, Redis broker"
        )
        reference = record.get("reference", {})
        results.append(
            Result(
                benchmark=record["benchmark"],
                figures=record["figures"],
                notes=shape
                + ("" if reference else "; directly on the topology's PostgreSQL, not pooled"),
                reference=reference,
                reference_values=references.get(record["label"], {}) if reference else {},
                durability=record["durability"],
                warmup=record.get("warmup", ""),
            )
        )
        by_name[record["benchmark"]] = record["figures"]
    durability: dict[str, str] = next((record["durability"] for record in records), {})
    scaling: dict[str, float] = {}
    for part, figure in (("webhook", "events_per_s"), ("journeys", "steps_per_s")):
        single = by_name.get(f"topology.single.{part}", {}).get(figure)
        spread = by_name.get(f"topology.topology.{part}", {}).get(figure)
        if single and spread is not None:
            scaling[f"{part}_x_single"] = spread / single
    if scaling:
        results.append(
            Result(
                benchmark="topology.scaling",
                figures=scaling,
                notes="the topology's rate over the single process's, same run",
                durability=durability,
            )
        )
    return results
