"""The production topology under a storm (docs/operations.md, "The production topology"):
PostgreSQL with fsync and synchronous_commit on, PgBouncer in transaction pooling with a pool
smaller than its clients, Redis as the queue and the rate limiter's store, two gunicorn groups
and two qclusters, all through PgBouncer. While signed webhooks (each sent twice, the copy to
the other group), a full and an incremental sync of two simulated pages, journeys with waits
and CRM calls, guest imports, links and deliveries run through it, one worker cluster is
SIGKILLed and one web group restarted. Then every acknowledged webhook is stored once, the
syncs equal the simulator's truth, every journey step ran once with one CRM effect per key,
every delivery is linked and audited, `integrity` exits 0, and no log holds an error the
faults do not explain.

Scaled down to run in a few minutes on two cores; `make topology` starts the same topology.
"""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conversations.simulator.graph import GraphSimulator
from conversations.simulator.payloads import message_event, signed_body, webhook_document
from devtools.topology import LOCAL_SECRETS, Sizes, Topology, run_dir_default
from journeys.simulator import CrmSimulator
from tests.conversations.sync_helpers import truth_state
from tests.helpers import PROJECT_ROOT, free_port, wait_for
from tests.topology.storm import FLOW_NODES, WAIT_SECONDS

pytestmark = [pytest.mark.slow]

PAGES = [("910001", 91), ("910002", 92)]
CONVERSATIONS_PER_PAGE = 150
MESSAGES_PER_PAGE = 1_200
CONTACTS = 200
GUESTS = 120
WEBHOOK_PAGE = "920001"
WEBHOOK_DOCUMENTS = 300  # two events each, every document sent twice
T0_MS = 1_760_000_000_000


class Driver:
    """The storm driver process (tests/topology/storm.py), one JSON command per call."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.topology.storm"],
            cwd=PROJECT_ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )

    def __call__(self, do: str, **arguments: Any) -> Any:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(json.dumps({"do": do, **arguments}) + "\n")
        self.process.stdin.flush()
        answer = json.loads(self.process.stdout.readline())
        assert "error" not in answer, answer["error"]
        return answer["ok"]

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=30)
        self.log.close()


class WebhookSender:
    """Meta's side: signed documents, each delivered twice (the copy to the other web group,
    as a load balancer would), retried on a refused connection or a 5xx like Meta retries."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.acknowledged: set[str] = set()
        self.attempts_failed = 0
        self.lock = threading.Lock()

    def post(self, body: bytes, headers: dict[str, str], first: int) -> bool:
        for attempt in range(60):
            port = self.ports[(first + attempt) % len(self.ports)]
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                connection.request("POST", "/webhooks/messenger/", body=body, headers=headers)
                status = connection.getresponse().status
                connection.close()
            except OSError:
                status = 0
            if status == 200:
                return True
            with self.lock:
                self.attempts_failed += 1
            time.sleep(0.2)
        return False

    def send(self, documents: range) -> None:
        for number in documents:
            mids = [f"m_storm_{number}_{n}" for n in range(2)]
            events = [
                message_event(
                    page_id=WEBHOOK_PAGE,
                    psid=str(7_000_000 + number % 40),
                    mid=mid,
                    timestamp_ms=T0_MS + number * 10 + n,
                    text=f"storm {number}.{n}",
                )
                for n, mid in enumerate(mids)
            ]
            body, headers = signed_body(
                webhook_document(WEBHOOK_PAGE, events), secret=LOCAL_SECRETS["FB_APP_SECRET"]
            )
            for copy in range(2):
                if self.post(body, headers, first=number + copy):
                    with self.lock:
                        self.acknowledged.update(mids)


class PoolWatcher(threading.Thread):
    """Samples PgBouncer's clients (per application_name) and pool twice a second: the peaks
    are the connection figures of docs/operations.md."""

    def __init__(self, topology: Topology) -> None:
        super().__init__(daemon=True)
        self.topology = topology
        self.stopped = threading.Event()
        self.clients: dict[str, int] = {}
        self.peak: dict[str, int] = {"clients": 0, "server_active": 0, "clients_waiting": 0}

    def run(self) -> None:
        while not self.stopped.wait(0.5):
            try:
                clients = self.topology.pgbouncer_show("CLIENTS")
                pools = self.topology.pgbouncer_show("POOLS")
            except (subprocess.SubprocessError, IndexError):
                continue
            names = Counter(c["application_name"] for c in clients if c["database"] == "evoflow")
            for name, count in names.items():
                self.clients[name] = max(self.clients.get(name, 0), count)
            for pool in pools:
                if pool["database"] == "evoflow":
                    self.peak["clients"] = max(self.peak["clients"], sum(names.values()))
                    for key, column in (
                        ("server_active", "sv_active"),
                        ("clients_waiting", "cl_waiting"),
                    ):
                        self.peak[key] = max(self.peak[key], int(pool[column]))


@pytest.fixture(scope="module")
def simulators() -> Iterator[tuple[GraphSimulator, CrmSimulator, str, str]]:
    graph = GraphSimulator(
        page_id=PAGES[0][0],
        seed=PAGES[0][1],
        conversations=CONVERSATIONS_PER_PAGE,
        messages=MESSAGES_PER_PAGE,
    )
    graph.page_add(
        page_id=PAGES[1][0],
        seed=PAGES[1][1],
        conversations=CONVERSATIONS_PER_PAGE,
        messages=MESSAGES_PER_PAGE,
    )
    graph.page_add(page_id=WEBHOOK_PAGE, seed=94, conversations=0, messages=0)
    crm = CrmSimulator(seed=93)
    with graph.running(port=free_port()) as graph_base, crm.running(port=free_port()) as crm_base:
        yield graph, crm, graph_base + "/v21.0", crm_base


@pytest.fixture(scope="module")
def topology(simulators, request) -> Iterator[Topology]:
    _, _, graph_url, crm_url = simulators
    started = Topology(
        run_dir=run_dir_default(),
        graph_url=graph_url,
        crm_url=crm_url,
        sizes=Sizes(),
        extra_env={
            # Work a killed worker held is taken over within seconds, not minutes.
            "SYNC_LEASE_SECONDS": "5",
            "JOURNEYS_SESSION_LEASE_SECONDS": "5",
            "JOURNEYS_ENRICH_CONTACTS": "0",
            "GRAPH_PAGE_CALLS_PER_SECOND": "20",
        },
    )
    failed_before = request.session.testsfailed
    started.start()
    try:
        yield started
    finally:
        started.stop()
        if request.session.testsfailed > failed_before:
            print(f"topology logs kept in {started.run_dir}")
        else:
            shutil.rmtree(started.run_dir, ignore_errors=True)


def test_the_pool_is_smaller_than_its_clients_and_the_database_durable(topology):
    assert topology.sizes.pool_size < topology.sizes.client_connections
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django, json; django.setup(); from django.db import connection; "
            "c = connection.cursor(); out = {}\n"
            "for name in ('fsync', 'synchronous_commit', 'statement_timeout'):\n"
            "    c.execute('SHOW ' + name); out[name] = c.fetchone()[0]\n"
            "c.execute('SELECT inet_server_port()'); out['server_port'] = c.fetchone()[0]\n"
            "print(json.dumps(out))",
        ],
        cwd=PROJECT_ROOT,
        env=topology.env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # Through PgBouncer (the server's own port answers), durable, the role's statement timeout.
    assert json.loads(result.stdout) == {
        "fsync": "on",
        "synchronous_commit": "on",
        "statement_timeout": "30s",
        "server_port": topology.pg_port,
    }


def test_pgbouncer_refuses_the_connection_options_the_pooled_settings_leave_out(topology):
    # Without DATABASE_POOLER=transaction, every connection carries `-c statement_timeout` in
    # the `options` startup parameter, which PgBouncer 1.18 refuses outright.
    with pytest.raises(psycopg.OperationalError, match="unsupported startup parameter"):
        psycopg.connect(
            host="127.0.0.1",
            port=topology.bouncer_port,
            dbname="evoflow",
            user="postgres",
            options="-c statement_timeout=30000",
            connect_timeout=10,
        )


def error_lines(topology: Topology) -> dict[str, list[str]]:
    """Lines at error level in every log: JSON records at ERROR or above, tracebacks, and
    PostgreSQL's and PgBouncer's own ERROR, FATAL and PANIC lines."""
    found: dict[str, list[str]] = {}
    for name, path in topology.logs().items():
        bad = []
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if isinstance(record, dict):
                if record.get("level") in ("ERROR", "CRITICAL"):
                    bad.append(line)
            elif any(word in line for word in ("Traceback", "ERROR", "FATAL", "PANIC")):
                bad.append(line)
        if bad:
            found[name] = bad
    return found


def test_a_storm_with_a_killed_worker_and_a_restarted_web_group(topology, simulators, capsys):
    graph, crm, _, _ = simulators
    driver = Driver(topology.env(), topology.run_dir / "driver.log")
    page_ids = [page_id for page_id, _ in PAGES]
    try:
        # Given the work started through the services, and Meta sending webhooks
        started_at = time.monotonic()
        worlds = [graph.page(page_id) for page_id in page_ids]
        pages = [{"id": w.page_id, "name": w.name, "token": w.access_token} for w in worlds]
        # The page Meta sends webhooks for is connected too (the schedule syncs every page),
        # with no history in the simulator: only the webhooks write its messages.
        hooks = graph.page(WEBHOOK_PAGE)
        pages.append(
            {"id": WEBHOOK_PAGE, "name": hooks.name, "token": hooks.access_token, "sync": False}
        )
        setup = driver("setup", pages=pages, contacts=CONTACTS, guests=GUESTS)
        watcher = PoolWatcher(topology)
        watcher.start()
        sender = WebhookSender(topology.web_ports)
        half = WEBHOOK_DOCUMENTS // 2
        senders = [
            threading.Thread(target=sender.send, args=(range(0, half),)),
            threading.Thread(target=sender.send, args=(range(half, WEBHOOK_DOCUMENTS),)),
        ]
        webhooks_started = time.monotonic()
        for thread in senders:
            thread.start()
        linking = driver(
            "deliveries_storm",
            event_id=setup["event"],
            host_id=setup["host"],
            guest_ids=setup["guests"],
        )

        # When one worker cluster dies at once and one web group is restarted mid-storm
        topology.worker_kill(0)
        topology.web_restart(1)
        time.sleep(2)
        topology.workers[0].start()  # its supervisor starts it again

        def settled(mode: str, since: int) -> bool:
            state = driver(
                "progress", journey_id=setup["journey"], page_ids=page_ids, mode=mode, since=since
            )
            synced = all(page["succeeded"] for page in state["syncs"].values())
            return synced and state["sessions"] == {"completed": CONTACTS}

        assert wait_for(lambda: settled("full", 0), timeout=240, interval=1.0), driver(
            "progress", journey_id=setup["journey"], page_ids=page_ids, mode="full", since=0
        )
        journeys_seconds = time.monotonic() - started_at
        watcher.stopped.set()
        for thread in senders:
            thread.join(timeout=120)
        webhook_seconds = time.monotonic() - webhooks_started

        # ...and the pages change in the simulator before an incremental sync
        for page_id in page_ids:
            threads = [c["id"] for c in graph.truth(page_id)["conversations"][:5]]
            for number, thread_id in enumerate(threads):
                graph.message_add(thread_id=thread_id, text=f"later {number}")
        since = driver(
            "progress", journey_id=setup["journey"], page_ids=[], mode="incremental", since=0
        )["last_run"]
        assert wait_for(lambda: settled("incremental", since), timeout=120, interval=1.0)

        # Then every acknowledged webhook is stored exactly once
        assert not any(thread.is_alive() for thread in senders)
        stored = driver("webhook_messages", page_id=WEBHOOK_PAGE)
        assert len(sender.acknowledged) == 2 * WEBHOOK_DOCUMENTS
        assert set(stored["per_mid"]) == sender.acknowledged
        assert set(stored["per_mid"].values()) == {1}
        assert set(stored["receipts"]) == {"processed"}

        # ...the syncs equal the simulator's truth
        states = driver("pages_state", page_ids=page_ids)
        for page_id in page_ids:
            truth = json.loads(json.dumps(truth_state(graph, page_id), default=str))
            assert states[page_id] == truth, page_id

        # ...every journey step ran once, with one CRM effect per idempotency key
        journeys = driver("journey_state", journey_id=setup["journey"])
        assert journeys["sessions"] == {"completed": CONTACTS}
        assert journeys["step_counts"] == {str(len(journeys["per_node"])): CONTACTS}
        assert journeys["per_node"] == dict.fromkeys(FLOW_NODES, CONTACTS)
        assert journeys["step_statuses"] == {"completed": len(FLOW_NODES) * CONTACTS}
        assert journeys["duplicate_steps"] == 0
        effects = crm.effects()["idempotency_keys"]["conversations.messages.create"]
        assert len(effects) == 2 * CONTACTS
        assert set(effects.values()) == {1}

        # ...every delivery is linked to its guest's user and audited
        deliveries = driver("deliveries_state", event_id=setup["event"])
        assert linking["linked"] == len(setup["guests"][::2])
        assert deliveries["deliveries"] == 6 * GUESTS
        assert (
            deliveries["linked"] == deliveries["should_be_linked"] == 6 * len(setup["guests"][::2])
        )
        assert deliveries["wrong_user"] == 0
        assert deliveries["linked_without_audit"] == 0
    finally:
        driver.close()

    # ...the integrity checks pass, through PgBouncer
    integrity = subprocess.run(
        [sys.executable, "manage.py", "integrity", "--json"],
        cwd=PROJECT_ROOT,
        env=topology.env(),
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert integrity.returncode == 0, integrity.stdout + integrity.stderr

    # ...and no log holds an error
    assert error_lines(topology) == {}

    with capsys.disabled():
        print(
            f"\ntopology figures (loaded machine): webhooks "
            f"{4 * WEBHOOK_DOCUMENTS / webhook_seconds:.0f} events/s sent "
            f"({2 * WEBHOOK_DOCUMENTS} distinct, {sender.attempts_failed} attempts refused), "
            f"journeys {6 * CONTACTS / journeys_seconds:.0f} steps/s until settled "
            f"({journeys_seconds:.1f} s, a {WAIT_SECONDS} s wait and the full syncs included); "
            f"PgBouncer peaks {watcher.peak}, clients by process {watcher.clients}"
        )
