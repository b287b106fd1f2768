"""Journeys engine throughput: contacts none of which exists locally, through a 5-node journey.

Figures (target of docs/invariants.md in brackets):

* `journeys.engine`: N contacts enrolled in one call (the funnel creates N contact stubs) and
  run by two `manage.py qcluster` processes (one worker each) through set_variable, condition,
  split, set_variable, exit [>= 2,000 node steps/s]. `node_steps_per_s` is the steady rate:
  from the moment the first tenth of the steps had finished (the warm-up: enrollment, the first
  tasks, the workers' caches) to the last step (the steps' own database timestamps);
  `end_to_end_steps_per_s` runs the clock from the enrollment to the last session's completion
  instead, start-up included;
* `journeys.naive`: the approach users move away from, measured in-process on a smaller
  sample (flattered: no worker dequeues its tasks): one queued task per node step, and per
  step `get_or_create` of the contact, the session loaded and saved through the ORM, a step row
  created, and the next step's task enqueued;
* `journeys.postgres.*`: the PostgreSQL reference (COPY and single-row inserts) of this run.
  The engine writes set-based statements over batches of sessions, so its rate is divided by
  COPY's; the naive per-row loop by one connection's single-row inserts. Both commit with the
  server's own durability (no setting of their own).

Every run is verified: every session completed, exactly five step rows each, exactly one
contact row per contact. The bench journey, its sessions and its contacts are removed
afterwards. Contact enrichment is switched off for the workers (no CRM runs during the bench).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from bench import Context, Result, Target, steady_rate
from bench.processes import database_url
from bench.reference import reference_results

PROJECT_ROOT = Path(__file__).resolve().parent.parent
WORKER_PROCESSES = 2
NODES = 5
NAIVE_QUEUE = "evoflow-bench-naive"


def bench_flow() -> dict[str, Any]:
    branches = [{"handle": "a", "percentage": 50}, {"handle": "b", "percentage": 50}]
    return {
        "nodes": [
            {"id": "greet", "type": "set_variable", "config": {"name": "greeting", "value": "hi"}},
            {
                "id": "check",
                "type": "condition",
                "config": {"field": "variables.greeting", "operator": "equals", "value": "hi"},
            },
            {"id": "ab", "type": "split", "config": {"branches": branches}},
            {"id": "mark", "type": "set_variable", "config": {"name": "done", "value": True}},
            {"id": "end", "type": "exit", "config": {"reason": "finished"}},
        ],
        "edges": [
            {"source": "greet", "target": "check"},
            {"source": "check", "target": "ab", "handle": "true"},
            {"source": "check", "target": "end", "handle": "false"},
            {"source": "ab", "target": "mark", "handle": "a"},
            {"source": "ab", "target": "mark", "handle": "b"},
            {"source": "mark", "target": "end"},
        ],
    }


def _worker_env() -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": database_url(),
        "Q_WORKERS": "1",
        "Q_LOG_LEVEL": "WARNING",
        "LOG_LEVEL": "WARNING",
        "JOURNEYS_ENRICH_CONTACTS": "0",
        "PYTHONUNBUFFERED": "1",
    }


def _start_workers() -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen(
            [sys.executable, "manage.py", "qcluster"],
            cwd=PROJECT_ROOT,
            env=_worker_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for _ in range(WORKER_PROCESSES)
    ]


def _stop_workers(workers: list[subprocess.Popen[bytes]]) -> None:
    for worker in workers:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGINT)
    for worker in workers:
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()


def _scalar(sql: str, params: list[Any] | None = None) -> Any:
    with connection.cursor() as cursor:
        cursor.execute(sql, params or [])
        row = cursor.fetchone()
    assert row is not None
    return row[0]


def _cleanup(journey_id: int, contact_ids: list[uuid.UUID]) -> None:
    from journeys.models import Contact, Journey

    Journey.objects.filter(pk=journey_id).delete()  # cascades to sessions and steps
    for start in range(0, len(contact_ids), 5_000):
        Contact.objects.filter(pk__in=contact_ids[start : start + 5_000]).delete()


def _engine(ctx: Context, contacts: int) -> Result:
    from journeys.services import journey_create, sessions_start_many

    journey = journey_create(name=f"bench {uuid.uuid4()}", flow=bench_flow())
    contact_ids = [uuid.uuid4() for _ in range(contacts)]
    workers = _start_workers()
    try:
        time.sleep(2.5)  # let both clusters start polling before the clock starts
        started_db = _scalar("SELECT clock_timestamp()")
        started = time.perf_counter()
        sessions_start_many(journey_id=journey.pk, contact_ids=contact_ids)
        deadline = time.monotonic() + max(120.0, contacts / 50)
        remaining = contacts
        while remaining and time.monotonic() < deadline:
            time.sleep(0.1)
            remaining = _scalar(
                "SELECT count(*) FROM journeys_journeysession "
                "WHERE journey_id = %s AND status <> 'completed'",
                [journey.pk],
            )
        wall = time.perf_counter() - started
        finished_db = _scalar(
            "SELECT max(finished_at) FROM journeys_journeysession WHERE journey_id = %s",
            [journey.pk],
        )
        steps = _scalar(
            "SELECT count(*) FROM journeys_journeystep st JOIN journeys_journeysession s "
            "ON s.id = st.session_id WHERE s.journey_id = %s",
            [journey.pk],
        )
        stub_rows = _scalar(
            "SELECT count(*) FROM journeys_contact WHERE id = ANY (%s)", [contact_ids]
        )
        step_times = _scalar(
            "SELECT array_agg(extract(epoch FROM coalesce(st.finished_at, st.started_at))"
            " ORDER BY 1) FROM journeys_journeystep st JOIN journeys_journeysession s"
            " ON s.id = st.session_id WHERE s.journey_id = %s",
            [journey.pk],
        )
    finally:
        _stop_workers(workers)
    try:
        if remaining:
            raise RuntimeError(f"journeys bench: {remaining} sessions did not complete")
        if steps != contacts * NODES or stub_rows != contacts:
            raise RuntimeError(
                f"journeys bench: {steps} steps for {contacts} sessions, {stub_rows} contacts"
            )
        seconds = (finished_db - started_db).total_seconds()
        steady = steady_rate(
            [(float(at), 1) for at in step_times],
            started=started_db.timestamp(),
            warmup_ops=max(1, steps // 10),
        )
        return Result(
            benchmark="journeys.engine",
            figures={
                "contacts": contacts,
                "node_steps": steps,
                "seconds": seconds,
                "wall_seconds": wall,
                "node_steps_per_s": steady.rate_per_s,
                "end_to_end_steps_per_s": steps / seconds,
                "sessions_per_s": contacts / seconds,
                "drift_pct": round(steady.drift_pct, 1),
            },
            targets=(Target("node_steps_per_s", at_least=2_000),),
            notes=(
                f"{WORKER_PROCESSES} qcluster processes x 1 worker, ORM broker, batches of "
                "200 sessions per task, one funnel statement per node step of a batch"
            ),
            # The engine commits as the server does.
            reference={
                "node_steps_per_s": ctx.server_kind("copy"),
                "end_to_end_steps_per_s": ctx.server_kind("copy"),
            },
            warmup="the first 10% of the node steps (by their database timestamps)",
        )
    finally:
        _cleanup(journey.pk, contact_ids)


def naive_step_task(session_id: int, contact_id: str) -> None:
    """One node step the naive way (this is what the benchmark measures, not product code)."""
    from django_q.tasks import async_task

    from journeys.flows.flow import flow_parse
    from journeys.flows.nodes import NodeState, node_evaluate
    from journeys.models import Contact, JourneySession, JourneyStep

    contact, _ = Contact.objects.get_or_create(id=contact_id)
    session = JourneySession.objects.select_related("journey").get(pk=session_id)
    flow = flow_parse(session.journey.flow)
    node = flow.nodes[session.current_node_id]
    outcome = node_evaluate(
        node,
        NodeState(
            contact_id=contact_id, contact={"name": contact.name}, variables=session.variables
        ),
    )
    session.variables = {**session.variables, **outcome.variables}
    session.step_count += 1
    JourneyStep.objects.create(
        session=session,
        step_number=session.step_count,
        node_id=node.id,
        node_type=node.type,
        status="completed",
        result=outcome.result,
    )
    next_node = None if outcome.kind == "complete" else flow.next_node_id(node.id, outcome.handle)
    if next_node is None:
        session.status = "completed"
        session.finished_at = timezone.now()
    else:
        session.current_node_id = next_node
    session.save()
    if next_node is not None:
        async_task(
            "bench.bench_journeys.naive_step_task", session_id, contact_id, cluster=NAIVE_QUEUE
        )


def _naive(contacts: int, reference_kind: str) -> Result:
    from django_q.models import OrmQ

    from journeys.models import Contact, Journey, JourneySession

    journey = Journey.objects.create(name=f"bench naive {uuid.uuid4()}", flow=bench_flow())
    contact_ids = [uuid.uuid4() for _ in range(contacts)]
    try:
        completions: list[tuple[float, float]] = []
        started = time.perf_counter()
        for contact_id in contact_ids:
            with transaction.atomic():
                Contact.objects.get_or_create(id=contact_id)
                session = JourneySession.objects.create(
                    journey=journey, contact_id=contact_id, current_node_id="greet"
                )
            for _ in range(NODES):
                with transaction.atomic():
                    naive_step_task(session.pk, str(contact_id))
            completions.append((time.perf_counter(), NODES))
        seconds = time.perf_counter() - started
        steady = steady_rate(completions, started=started, warmup_ops=max(1, contacts // 10))
        completed = JourneySession.objects.filter(journey=journey, status="completed").count()
        if completed != contacts:
            raise RuntimeError(f"naive bench: {completed} of {contacts} completed")
        steps = contacts * NODES
        return Result(
            benchmark="journeys.naive",
            figures={
                "contacts": contacts,
                "node_steps": steps,
                "seconds": seconds,
                "node_steps_per_s": steady.rate_per_s,
            },
            notes=(
                "one process, in-process calls (no worker dequeue: flattered); per step "
                "get_or_create + ORM load/save + step row + enqueue of the next step's task"
            ),
            reference={"node_steps_per_s": reference_kind},
            warmup="the first 10% of the contacts",
        )
    finally:
        OrmQ.objects.filter(key=NAIVE_QUEUE).delete()
        _cleanup(journey.pk, contact_ids)


def run(ctx: Context) -> list[Result]:
    results = [
        _engine(ctx, ctx.size(quick=1_000, full=10_000, minimum=20)),
        _naive(ctx.size(quick=40, full=1_000, minimum=4), ctx.server_kind("insert_1_conn")),
    ]
    results.extend(
        reference_results(
            ctx,
            prefix="journeys.postgres",
            copy_rows_count=ctx.size(quick=40_000, full=250_000, minimum=20),
            insert_rows_count=ctx.size(quick=2_000, full=50_000, minimum=16),
            kinds=(ctx.server_kind("copy"), ctx.server_kind("insert_1_conn")),
        )
    )
    return results
