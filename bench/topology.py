"""Throughput of the production topology against the same programs at their smallest.

`python -m bench.topology` starts `devtools.topology.Topology` twice, each time with durable
commits and PgBouncer in transaction pooling: first "single" (one gunicorn group of one process,
one qcluster with one worker), then "topology" (two web groups of two processes, two qclusters
of two workers each). In each it measures

* webhook events/s: signed one-event webhooks POSTed by 16 client threads over keep-alive
  connections, spread over the web groups, acknowledged (200) ones per second, after a warm-up
  of 64 POSTs answered before the clock starts;
* journey node steps/s: sessions of a five-node journey (no waits, one CRM call) started at
  once, steps completed per second from the moment the first tenth of the steps had finished
  (the warm-up, by the steps' database timestamps) to the last one;
* the PostgreSQL reference on the topology's own server, measured right after: durable
  single-row inserts from 16 connections (the webhook's shape) and durable COPY batches (the
  engine's set-based statements), directly, not through PgBouncer: the ceiling.

It prints one `BENCH {json}` line per measurement, with the durability settings of the
topology's PostgreSQL (`fsync`, `synchronous_commit`, `full_page_writes`, `wal_level`). In
`python -m bench` it runs as the module `bench_topology`, which turns these lines into results
beside the single-process figures. Figures from a machine shared with other work vary a lot:
say so beside them.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import sys
import threading
import time
import uuid
from typing import Any

CLIENTS = 16


def _post_all(
    ports: list[int], bodies: list[tuple[bytes, dict[str, str]]]
) -> tuple[float, list[float]]:
    """POST every body, spread over `ports` and CLIENTS threads; (the stream's start, the
    completion time of every acknowledged POST)."""
    acknowledged: list[list[float]] = [[] for _ in range(CLIENTS)]

    def client(index: int) -> None:
        port = ports[index % len(ports)]
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for body, headers in bodies[index::CLIENTS]:
            connection.request("POST", "/webhooks/messenger/", body=body, headers=headers)
            answer = connection.getresponse()
            answer.read()
            if answer.status == 200:
                acknowledged[index].append(time.perf_counter())
        connection.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return started, [at for own in acknowledged for at in own]


def _measure(
    label: str, sizes: Any, events: int, sessions: int, reference_rows: tuple[int, int]
) -> list[dict[str, Any]]:
    from devtools.topology import LOCAL_SECRETS, Topology, free_port, run_dir_default
    from journeys.simulator import CrmSimulator

    crm = CrmSimulator(seed=5)
    with crm.running(port=free_port()) as crm_base:
        topology = Topology(
            run_dir=run_dir_default(),
            graph_url="http://127.0.0.1:9/v21.0",
            crm_url=crm_base,
            sizes=sizes,
            extra_env={"JOURNEYS_ENRICH_CONTACTS": "0"},
        )
        topology.start()
        try:
            return _run(
                label, topology, LOCAL_SECRETS["FB_APP_SECRET"], events, sessions, reference_rows
            )
        finally:
            topology.stop()
            shutil.rmtree(topology.run_dir, ignore_errors=True)


def _run(
    label: str,
    topology: Any,
    secret: str,
    events: int,
    sessions: int,
    reference_rows: tuple[int, int],
) -> list[dict]:
    # This process joins the topology as one more Django process, through PgBouncer.
    os.environ.update(topology.env(name="bench"))
    import django

    django.setup()
    from django.db import connection

    from bench import DURABILITY_SETTINGS, steady_rate
    from bench.reference import copy_rows, insert_loop
    from conversations.simulator.payloads import message_event, signed_body, webhook_document
    from journeys.models import JourneySession
    from journeys.services import journey_create, sessions_start_many

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
            [list(DURABILITY_SETTINGS)],
        )
        durability = {str(name): str(setting) for name, setting in cursor.fetchall()}
    connection.close()

    page = "930001"
    prefix = uuid.uuid4().hex[:8]
    bodies = [
        signed_body(
            webhook_document(
                page,
                [
                    message_event(
                        page_id=page,
                        psid=str(8_000_000 + n % 500),
                        mid=f"m_{prefix}_{n}",
                        timestamp_ms=1_760_000_000_000 + n,
                        text=f"bench {n}",
                    )
                ],
            ),
            secret=secret,
        )
        for n in range(events)
    ]
    _post_all(topology.web_ports, bodies[: CLIENTS * 4])  # warm-up: connections, imports
    started, acknowledged = _post_all(topology.web_ports, bodies[CLIENTS * 4 :])
    webhook = steady_rate([(at, 1) for at in acknowledged], started=started)

    nodes = [
        ("start", "entry", {}),
        ("hello", "send_message", {"conversation_id": "{{contact.id}}", "content": "hi"}),
        ("mark", "set_variable", {"name": "greeted", "value": True}),
        ("again", "set_variable", {"name": "done", "value": True}),
        ("end", "exit", {}),
    ]
    flow = {
        "nodes": [{"id": i, "type": kind, "config": config} for i, kind, config in nodes],
        "edges": [{"source": a[0], "target": b[0]} for a, b in zip(nodes, nodes[1:], strict=False)],
    }
    journey = journey_create(name=f"bench {prefix}", flow=flow)
    with connection.cursor() as cursor:
        cursor.execute("SELECT extract(epoch FROM clock_timestamp())")
        started_db = float(cursor.fetchone()[0])
    sessions_start_many(
        journey_id=journey.pk, contact_ids=[str(uuid.uuid4()) for _ in range(sessions)]
    )
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        live = JourneySession.objects.filter(journey=journey).exclude(status="completed")
        if not live.exists():
            break
        time.sleep(0.2)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT extract(epoch FROM coalesce(st.finished_at, st.started_at))"
            " FROM journeys_journeystep st JOIN journeys_journeysession s"
            " ON s.id = st.session_id WHERE s.journey_id = %s AND st.status = 'completed'",
            [journey.pk],
        )
        step_times = [float(row[0]) for row in cursor.fetchall()]
    connection.close()
    steps = steady_rate(
        [(at, 1) for at in step_times], started=started_db, warmup_ops=max(1, len(step_times) // 10)
    )

    # The ceiling of the topology's own PostgreSQL, directly (its server commits durably).
    direct = topology.direct_url
    inserts = insert_loop(direct, reference_rows[0], connections=16, durable=True)
    copies = copy_rows(direct, reference_rows[1], durable=True)
    references = {
        "insert_16_conn_durable": inserts.rows_per_s,
        "copy_durable": copies.rows_per_s,
    }
    common = {"label": label, "durability": durability, "sizes": topology.sizes.__dict__}
    return [
        {
            "benchmark": f"topology.{label}.webhook",
            "figures": {
                "events_per_s": webhook.rate_per_s,
                "events": len(acknowledged),
                "posted": len(bodies) - CLIENTS * 4,
                "drift_pct": round(webhook.drift_pct, 1),
            },
            "reference": {"events_per_s": "insert_16_conn_durable"},
            "warmup": "64 POSTs (4 per client) answered before the clock starts",
            **common,
        },
        {
            "benchmark": f"topology.{label}.journeys",
            "figures": {
                "steps_per_s": steps.rate_per_s,
                "steps": len(step_times),
                "sessions": sessions,
                "drift_pct": round(steps.drift_pct, 1),
            },
            "reference": {"steps_per_s": "copy_durable"},
            "warmup": "the first 10% of the node steps (by their database timestamps)",
            **common,
        },
        {
            "benchmark": f"topology.{label}.postgres",
            "figures": {
                "insert_16_conn_durable_rows_per_s": inserts.rows_per_s,
                "copy_durable_rows_per_s": copies.rows_per_s,
            },
            "reference_values": references,
            "warmup": "the first 10% of the statements or COPY batches",
            **common,
        },
    ]


def sizes_for(*, quick: bool, scale: float) -> tuple[int, int, int, int]:
    """Webhook events, journey sessions, durable inserts and COPY rows of the reference."""
    base = (800, 600, 3_000, 40_000) if quick else (6_000, 2_000, 20_000, 400_000)
    minimum = (CLIENTS * 4 + CLIENTS, 10, 64, 40)
    return tuple(  # type: ignore[return-value]
        max(low, round(size * scale)) for size, low in zip(base, minimum, strict=True)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.topology", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small workloads")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every workload size")
    parser.add_argument("--only", choices=["single", "topology"])
    args = parser.parse_args(argv)
    from devtools.topology import Sizes

    events, sessions, insert_rows, copy_rows = sizes_for(quick=args.quick, scale=args.scale)
    runs = {
        "single": Sizes(web_groups=1, web_processes=1, clusters=1, q_workers=1, pool_size=6),
        "topology": Sizes(),
    }
    for label, sizes in runs.items():
        if args.only and args.only != label:
            continue
        # Each in a fresh interpreter: Django is set up once per process, against one topology.
        if os.environ.get("EVOFLOW_BENCH_TOPOLOGY_CHILD") != label:
            import subprocess

            child = subprocess.run(
                [sys.executable, "-m", "bench.topology", *(argv or sys.argv[1:]), "--only", label],
                env={**os.environ, "EVOFLOW_BENCH_TOPOLOGY_CHILD": label},
                check=False,
            )
            if child.returncode != 0:
                return child.returncode
            continue
        for record in _measure(label, sizes, events, sessions, (insert_rows, copy_rows)):
            print("BENCH " + json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
