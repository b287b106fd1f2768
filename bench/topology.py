"""Throughput of the production topology against the same programs at their smallest.

`python -m bench.topology` starts `devtools.topology.Topology` twice, each time with durable
commits and PgBouncer in transaction pooling: first "single" (one gunicorn group of one process,
one qcluster with one worker), then "topology" (two web groups of two processes, two qclusters
of two workers each). In each it measures

* webhook events/s: signed one-event webhooks POSTed by 16 client threads over keep-alive
  connections, spread over the web groups, acknowledged (200) ones per second;
* journey node steps/s: sessions of a five-node journey (no waits, one CRM call) started at
  once, steps completed per second until the last session completes.

It prints one `BENCH {json}` line per figure and the durability settings. It is not part of
`python -m bench` (it starts its own PostgreSQL, PgBouncer and Redis, which takes a while);
figures from a machine shared with other work vary a lot: say so beside them.
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


def _post_all(ports: list[int], bodies: list[tuple[bytes, dict[str, str]]]) -> tuple[float, int]:
    """POST every body, spread over `ports` and CLIENTS threads; (seconds, acknowledged)."""
    acknowledged = [0] * CLIENTS

    def client(index: int) -> None:
        port = ports[index % len(ports)]
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for body, headers in bodies[index::CLIENTS]:
            connection.request("POST", "/webhooks/messenger/", body=body, headers=headers)
            answer = connection.getresponse()
            answer.read()
            acknowledged[index] += answer.status == 200
        connection.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, sum(acknowledged)


def _measure(label: str, sizes: Any, events: int, sessions: int) -> list[dict[str, Any]]:
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
            return _run(label, topology, LOCAL_SECRETS["FB_APP_SECRET"], events, sessions)
        finally:
            topology.stop()
            shutil.rmtree(topology.run_dir, ignore_errors=True)


def _run(label: str, topology: Any, secret: str, events: int, sessions: int) -> list[dict]:
    # This process joins the topology as one more Django process, through PgBouncer.
    os.environ.update(topology.env(name="bench"))
    import django

    django.setup()
    from django.db import connection

    from conversations.simulator.payloads import message_event, signed_body, webhook_document
    from journeys.models import JourneySession, JourneyStep
    from journeys.services import journey_create, sessions_start_many

    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        durability = {"synchronous_commit": cursor.fetchone()[0]}
        cursor.execute("SHOW fsync")
        durability["fsync"] = cursor.fetchone()[0]
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
    seconds, acknowledged = _post_all(topology.web_ports, bodies[CLIENTS * 4 :])
    webhook = acknowledged / seconds

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
    started = time.perf_counter()
    sessions_start_many(
        journey_id=journey.pk, contact_ids=[str(uuid.uuid4()) for _ in range(sessions)]
    )
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        live = JourneySession.objects.filter(journey=journey).exclude(status="completed")
        if not live.exists():
            break
        time.sleep(0.2)
    steps_seconds = time.perf_counter() - started
    steps = JourneyStep.objects.filter(session__journey=journey, status="completed").count()
    connection.close()
    common = {"label": label, "durability": durability, "sizes": topology.sizes.__dict__}
    return [
        {
            "benchmark": f"topology.{label}.webhook",
            "figures": {"events_per_s": webhook, "events": acknowledged, **common},
        },
        {
            "benchmark": f"topology.{label}.journeys",
            "figures": {"steps_per_s": steps / steps_seconds, "steps": steps, **common},
        },
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.topology", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small workloads")
    parser.add_argument("--only", choices=["single", "topology"])
    args = parser.parse_args(argv)
    from devtools.topology import Sizes

    events, sessions = (800, 300) if args.quick else (6_000, 2_000)
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
        for record in _measure(label, sizes, events, sessions):
            print("BENCH " + json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
