"""The production topology under a storm (docs/operations.md, "The production topology"):
PostgreSQL with fsync and synchronous_commit on, PgBouncer in transaction pooling with a pool
smaller than its clients, Redis as the queue and the rate limiter's store, two gunicorn groups
and two qclusters, all through PgBouncer. While signed webhooks (each sent twice, the copy to
the other group, with message edits and reactions shuffled and duplicated, some before their
message), a full and an incremental sync of two simulated pages (whose messages are edited and
reacted to meanwhile), journeys for 1,000 contacts with a wait between two CRM calls, guest
imports and links concurrent with deliveries run through it, one worker cluster is SIGKILLed
while it holds work and one web group restarted. Then every acknowledged webhook is stored
once with the texts, edit counts and reactions sent, the syncs equal the simulator's truth
(edits and reactions included), every journey step ran once with one CRM effect per key, every
delivery is linked and audited, `integrity` exits 0, and no log holds an error the faults do
not explain. With `-s` it prints the storm's figures (webhook events/s sent, journey steps/s,
PgBouncer's peaks), the ones docs/operations.md quotes.

The journeys run at the issue's size; the rest is scaled so that the module takes two to four
minutes on two loaded cores. `make topology` starts the same topology.
"""

from __future__ import annotations

import http.client
import json
import random
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
import requests

from conversations.simulator.graph import GraphSimulator
from conversations.simulator.payloads import (
    edit_event,
    message_event,
    named_reaction_event,
    signed_body,
    webhook_document,
)
from devtools.topology import LOCAL_SECRETS, Sizes, Topology, run_dir_default
from journeys.simulator import CrmSimulator
from tests.conversations.sync_helpers import truth_state
from tests.helpers import PROJECT_ROOT, free_port, wait_for
from tests.topology.storm import FLOW_NODES, WAIT_SECONDS

pytestmark = [pytest.mark.slow]

PAGES = [("910001", 91), ("910002", 92)]
CONVERSATIONS_PER_PAGE = 150
MESSAGES_PER_PAGE = 1_200
CONTACTS = 1_000
GUESTS = 120
LATE_GUESTS = 60  # imported while guests are linked and messages go out
WEBHOOK_PAGE = "920001"
WEBHOOK_DOCUMENTS = 300  # two messages each, every document sent twice
EDITED_EVERY = 3  # the first message of every third document is edited three times
REACTED_EVERY = 5  # the second of every fifth gets "love", "wow", then "love" taken off
SYNCED_EDITS = 20  # messages per synced page edited in the simulator during the full sync
SYNCED_REACTIONS = 10
T0_MS = 1_760_000_000_000
EDITS_MS = T0_MS + 10_000_000  # every edit and reaction is newer than every message


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
    as a load balancer would), retried on a refused connection or a 5xx like Meta retries.
    Remembers when each message was first posted and when each edit or reaction was first
    acknowledged, to tell the edits that came before their message."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.acknowledged: set[str] = set()
        self.attempts_failed = 0
        self.events_acknowledged = 0
        self.first_posted: dict[str, float] = {}
        self.extra_acknowledged: dict[str, float] = {}
        self.finished_at = 0.0  # when the last sending thread was done
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

    def post_twice(self, page_id: str, events: list[dict[str, Any]], first: int) -> int:
        body, headers = signed_body(
            webhook_document(page_id, events), secret=LOCAL_SECRETS["FB_APP_SECRET"]
        )
        acknowledged = 0
        for copy in range(2):
            if self.post(body, headers, first=first + copy):
                acknowledged += 1
                with self.lock:
                    self.events_acknowledged += len(events)
        return acknowledged

    def send(self, documents: range) -> None:
        for number in documents:
            mids = [f"m_storm_{number}_{n}" for n in range(2)]
            events = [
                message_event(
                    page_id=WEBHOOK_PAGE,
                    psid=webhook_psid(number),
                    mid=mid,
                    timestamp_ms=T0_MS + number * 10 + n,
                    text=f"storm {number}.{n}",
                )
                for n, mid in enumerate(mids)
            ]
            with self.lock:
                for mid in mids:
                    self.first_posted.setdefault(mid, time.monotonic())
            if self.post_twice(WEBHOOK_PAGE, events, first=number):
                with self.lock:
                    self.acknowledged.update(mids)
        self.finished()

    def finished(self) -> None:
        with self.lock:
            self.finished_at = max(self.finished_at, time.monotonic())

    def send_extras(self, documents: list[tuple[str, list[dict[str, Any]]]]) -> None:
        """Edits and reactions: (page id, events) documents, each sent twice."""
        for number, (page_id, events) in enumerate(documents):
            if self.post_twice(page_id, events, first=number):
                now = time.monotonic()
                with self.lock:
                    for event in events:
                        self.extra_acknowledged.setdefault(event_key(event), now)
        self.finished()

    def before_their_message(self) -> int:
        """Edits and reactions acknowledged before their message was first posted."""
        with self.lock:
            return sum(
                1
                for key, at in self.extra_acknowledged.items()
                if at < self.first_posted.get(key.split("|")[0], float("inf"))
            )


def webhook_psid(number: int) -> str:
    return str(7_000_000 + number % 40)


def event_key(event: dict[str, Any]) -> str:
    """mid|what: one key per distinct edit or reaction event."""
    if "message_edit" in event:
        edit = event["message_edit"]
        return f"{edit['mid']}|edit {edit['num_edit']}"
    reaction = event["reaction"]
    return f"{reaction['mid']}|{reaction['action']} {reaction['reaction']} {event['timestamp']}"


def in_documents(
    page_id: str, events: list[dict[str, Any]], rng: random.Random, size: int = 5
) -> list[tuple[str, list[dict[str, Any]]]]:
    """Every event twice, shuffled, `size` to a document."""
    doubled = events * 2
    rng.shuffle(doubled)
    return [(page_id, doubled[n : n + size]) for n in range(0, len(doubled), size)]


def webhook_page_extras(rng: random.Random) -> tuple[list[tuple[str, list]], dict[str, Any]]:
    """The edits and reactions Meta sends for the webhook page's messages, and what the page
    must hold at the end. The edits of the last documents go first, so they certainly come
    before their messages; the rest are shuffled among them."""
    edits: list[dict[str, Any]] = []
    reactions: list[dict[str, Any]] = []
    texts: dict[str, list[Any]] = {}
    on: set[tuple[str, str, str]] = set()
    for number in range(WEBHOOK_DOCUMENTS):
        psid = webhook_psid(number)
        first, second = f"m_storm_{number}_0", f"m_storm_{number}_1"
        texts[first] = [f"storm {number}.0", 0]
        texts[second] = [f"storm {number}.1", 0]
        if number % EDITED_EVERY == 0:
            for num_edit in (1, 2, 3):
                text = f"storm {number}.0, edit {num_edit}"
                edits.append(
                    edit_event(
                        page_id=WEBHOOK_PAGE,
                        psid=psid,
                        mid=first,
                        timestamp_ms=EDITS_MS + number * 10 + num_edit,
                        text=text,
                        num_edit=num_edit,
                    )
                )
            texts[first] = [text, 3]
        if number % REACTED_EVERY == 0:
            for step, (action, name) in enumerate(
                (("react", "love"), ("react", "wow"), ("unreact", "love"))
            ):
                reactions.append(
                    named_reaction_event(
                        page_id=WEBHOOK_PAGE,
                        psid=psid,
                        mid=second,
                        timestamp_ms=EDITS_MS + number * 10 + step,
                        action=action,
                        reaction=name,
                        emoji="x",
                    )
                )
            on.add((second, psid, "wow"))
    last = WEBHOOK_DOCUMENTS - 30
    early = [e for e in edits if int(e["message_edit"]["mid"].split("_")[2]) >= last]
    rest = [e for e in edits if int(e["message_edit"]["mid"].split("_")[2]) < last] + reactions
    documents = in_documents(WEBHOOK_PAGE, early, rng) + in_documents(WEBHOOK_PAGE, rest, rng)
    return documents, {"messages": texts, "reactions": sorted(on)}


def control(base: str, route: str, **values: Any) -> dict[str, Any]:
    """The Graph simulator's control API, over HTTP like any client of it."""
    response = requests.post(f"{base}/_control/{route}", json=values, timeout=30)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def synced_page_extras(
    graph: GraphSimulator, base: str, page_id: str, rng: random.Random, *, edits: int, reacts: int
) -> list[tuple[str, list[dict[str, Any]]]]:
    """Edit (once or twice) and react to messages of a synced page in the simulator, and
    return their webhook events as documents: every event twice, shuffled."""
    conversations = [c for c in graph.truth(page_id)["conversations"] if c["messages"]]
    events: list[dict[str, Any]] = []
    for n, conversation in enumerate(rng.sample(conversations, edits)):
        # Every other one is the conversation's last message (its preview changes too).
        messages = conversation["messages"]
        message = messages[-1] if n % 2 else rng.choice(messages)
        for version in range(1 + n % 2):
            events.append(
                control(
                    base,
                    "edits",
                    conversation=conversation["id"],
                    mid=message["id"],
                    text=f"{message['text']} (storm edit {version + 1})",
                )["event"]
            )
    for conversation in rng.sample(conversations, reacts):
        mid = conversation["messages"][0]["id"]
        for action, name in (("react", "love"), ("react", "wow"), ("unreact", "love")):
            events.append(
                control(
                    base,
                    "reactions",
                    conversation=conversation["id"],
                    mid=mid,
                    action=action,
                    reaction=name,
                    emoji="x",
                )["event"]
            )
    return in_documents(page_id, events, rng)


def truth_details(graph: GraphSimulator, page_id: str) -> dict[str, Any]:
    """The simulator's texts, edit counts and reactions, in the shape of `message_details`."""
    messages: dict[str, list[Any]] = {}
    reactions = []
    for conversation in graph.truth(page_id)["conversations"]:
        for message in conversation["messages"]:
            messages[message["id"]] = [message["text"], message["edit_count"]]
            reactions += [[message["id"], psid, name] for psid, name in message["reactions"]]
    return {"messages": messages, "reactions": sorted(reactions)}


class PoolWatcher(threading.Thread):
    """Samples PgBouncer's clients (per application_name) and pool twice a second: the peaks
    are the connection figures of docs/operations.md."""

    def __init__(self, topology: Topology) -> None:
        super().__init__(daemon=True)
        self.topology = topology
        self.stopped = threading.Event()
        self.clients: dict[str, int] = {}
        self.peak: dict[str, int] = {
            "clients": 0,
            "clients_waiting": 0,
            "server_active": 0,
            "servers": 0,
        }

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
                    servers = sum(
                        int(pool[column])
                        for column in ("sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login")
                    )
                    self.peak["servers"] = max(self.peak["servers"], servers)
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
            # Work a killed worker held is taken over within seconds, not minutes. A journey
            # session's lease must outlast the advance task that holds it (its time budget is
            # 60 s; the default lease is 300 s): with a shorter one, a batch still running on
            # a loaded machine loses its sessions to the next wake-up, which runs them too.
            "SYNC_LEASE_SECONDS": "5",
            "JOURNEYS_SESSION_LEASE_SECONDS": "65",
            # Tasks the killed cluster had taken from Redis are lost (the broker has no
            # acknowledgement): their sessions, never leased, restart after this (default 120).
            "JOURNEYS_STALLED_AFTER_SECONDS": "30",
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


ADVANCE_TASK = "journeys.tasks.sessions_advance_task"


def tasks_in_hand(log: Path) -> dict[str, str]:
    """The tasks a qcluster has taken and not yet reported done, with their functions, from
    its log: django-q2 logs "<process> processing <task> '<function>'" when a worker starts a
    task and "Processed '<function>' (<task>)" when the monitor has its result."""
    started: dict[str, str] = {}
    done: set[str] = set()
    for line in log.read_text(errors="replace").splitlines():
        try:
            message = str(json.loads(line).get("message", ""))
        except (ValueError, AttributeError):
            continue
        words = message.split()
        if len(words) >= 4 and words[1] == "processing":
            started[words[2]] = words[3].strip("'")
        elif message.startswith("Processed '") and message.endswith(")"):
            done.add(message.rsplit("(", 1)[1].rstrip(")"))
    return {task: function for task, function in started.items() if task not in done}


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


@pytest.mark.timeout(480)
def test_a_storm_with_a_killed_worker_and_a_restarted_web_group(topology, simulators, capsys):
    graph, crm, graph_url, _ = simulators
    control_base = graph_url.removesuffix("/v21.0")
    rng = random.Random(19)
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
        setup_seconds = time.monotonic() - started_at
        watcher = PoolWatcher(topology)
        watcher.start()
        sender = WebhookSender(topology.web_ports)
        extras, sent = webhook_page_extras(rng)
        half = WEBHOOK_DOCUMENTS // 2
        senders = [
            threading.Thread(target=sender.send, args=(range(0, half),)),
            threading.Thread(target=sender.send, args=(range(half, WEBHOOK_DOCUMENTS),)),
            threading.Thread(target=sender.send_extras, args=(extras,)),
        ]
        webhooks_started = time.monotonic()
        for thread in senders:
            thread.start()
        # ...the synced pages' messages edited and reacted to while their full sync runs
        synced_extras = [
            document
            for page_id in page_ids
            for document in synced_page_extras(
                graph, control_base, page_id, rng, edits=SYNCED_EDITS, reacts=SYNCED_REACTIONS
            )
        ]
        rng.shuffle(synced_extras)
        senders.append(threading.Thread(target=sender.send_extras, args=(synced_extras,)))
        senders[-1].start()

        # When one worker cluster dies at once in the middle of a journey task
        in_flight: dict[str, Any] = {}

        def holding() -> bool:
            """worker-a is running a journey advance task, and sessions are under a lease."""
            in_flight.update(driver("in_flight", journey_id=setup["journey"]))
            in_hand = tasks_in_hand(topology.workers[0].log)
            in_flight["worker_a_tasks"] = sorted(in_hand.values())
            return bool(in_flight["sessions_leased"] and ADVANCE_TASK in in_hand.values())

        assert wait_for(holding, timeout=60, interval=0.05), in_flight
        topology.worker_kill(0)
        # ...and one web group is restarted while the webhooks come in
        assert any(thread.is_alive() for thread in senders)
        topology.web_restart(1)
        topology.workers[0].start()  # its supervisor starts it again
        # ...while guests are imported and linked and messages go out
        linking = driver(
            "deliveries_storm",
            event_id=setup["event"],
            host_id=setup["host"],
            guest_ids=setup["guests"],
            late_guests=LATE_GUESTS,
        )
        restarted = 0
        journeys_done_at = 0.0

        def settled(mode: str, since: int) -> bool:
            nonlocal restarted, journeys_done_at
            state = driver(
                "progress", journey_id=setup["journey"], page_ids=page_ids, mode=mode, since=since
            )
            restarted += state["restarted"]
            synced = all(page["succeeded"] for page in state["syncs"].values())
            journeys_done = state["sessions"] == {"completed": CONTACTS}
            if journeys_done and not journeys_done_at:
                journeys_done_at = time.monotonic()
            return synced and journeys_done

        assert wait_for(lambda: settled("full", 0), timeout=330, interval=1.0), driver(
            "progress", journey_id=setup["journey"], page_ids=page_ids, mode="full", since=0
        )
        # ...the sessions the killed worker held were taken over once their lease ran out
        assert restarted > 0
        settled_seconds = time.monotonic() - started_at - setup_seconds
        journeys_seconds = journeys_done_at - started_at - setup_seconds
        for thread in senders:
            thread.join(timeout=120)
        webhook_seconds = sender.finished_at - webhooks_started
        events_sent = sender.events_acknowledged
        watcher.stopped.set()

        # ...and the pages change in the simulator before an incremental sync: new messages,
        # some edited and reacted to, their webhooks in before the sync brings the message
        later: list[tuple[str, list[dict[str, Any]]]] = []
        for page_id in page_ids:
            threads = [c["id"] for c in graph.truth(page_id)["conversations"][:5]]
            for number, thread_id in enumerate(threads):
                _, message = graph.message_add(thread_id=thread_id, text=f"later {number}")
                if number % 2 == 0:
                    edit = control(
                        control_base,
                        "edits",
                        conversation=thread_id,
                        mid=message.mid,
                        text=f"later {number}, edited",
                    )
                    react = control(
                        control_base,
                        "reactions",
                        conversation=thread_id,
                        mid=message.mid,
                        action="react",
                        reaction="like",
                        emoji="x",
                    )
                    later += in_documents(page_id, [edit["event"], react["event"]], rng)
        sender.send_extras(later)
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
        # ...with the texts, edit counts and reactions sent, edits that came first included
        sent_extras = len(extras) + len(synced_extras) + len(later)
        assert len(sender.extra_acknowledged) == len(
            {event_key(e) for _, events in [*extras, *synced_extras, *later] for e in events}
        )
        assert sender.before_their_message() > 0
        details = driver("message_details", page_ids=[WEBHOOK_PAGE, *page_ids])
        hooked = details[WEBHOOK_PAGE]
        assert hooked["messages"] == sent["messages"]
        assert hooked["reactions"] == [list(on) for on in sent["reactions"]]

        # ...the syncs equal the simulator's truth, texts, edit counts and reactions included
        states = driver("pages_state", page_ids=page_ids)
        for page_id in page_ids:
            truth = json.loads(json.dumps(truth_state(graph, page_id), default=str))
            assert states[page_id] == truth, page_id
            expected = truth_details(graph, page_id)
            assert details[page_id]["messages"] == expected["messages"], page_id
            assert details[page_id]["reactions"] == expected["reactions"], page_id
            assert sum(1 for _, count in expected["messages"].values() if count) == (
                SYNCED_EDITS + 3
            )

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

        # ...every delivery is linked to its guest's user and audited; a message sent during
        # the import counts the guests committed before it, one after counts them all
        deliveries = driver("deliveries_state", event_id=setup["event"])
        per_message = linking["per_message"]
        assert linking["linked"] == len(setup["guests"][::2])
        assert linking["imported"] == LATE_GUESTS
        assert per_message["before"] == [GUESTS] * 2
        assert per_message["after"] == [GUESTS + LATE_GUESTS] * 2
        assert all(GUESTS <= count <= GUESTS + LATE_GUESTS for count in per_message["during"])
        assert per_message["during"] == sorted(per_message["during"])
        messages_sent = sum(len(counts) for counts in per_message.values())
        assert deliveries["deliveries"] == sum(sum(c) for c in per_message.values())
        assert deliveries["linked"] == deliveries["should_be_linked"]
        assert deliveries["linked"] == messages_sent * len(setup["guests"][::2])
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
            f"\ntopology storm figures (loaded machine, {CONTACTS} contacts): "
            f"webhooks {events_sent / webhook_seconds:.0f} events/s acknowledged "
            f"({events_sent} events in {webhook_seconds:.1f} s: {2 * WEBHOOK_DOCUMENTS} "
            f"distinct messages, {sent_extras} edit and reaction documents, every document "
            f"twice; {sender.attempts_failed} attempts refused); journeys "
            f"{len(FLOW_NODES) * CONTACTS / journeys_seconds:.0f} steps/s "
            f"({len(FLOW_NODES) * CONTACTS} steps in {journeys_seconds:.1f} s after a "
            f"{setup_seconds:.1f} s setup, a {WAIT_SECONDS} s wait included; full syncs "
            f"settled after {settled_seconds:.1f} s); worker killed holding {in_flight}, "
            f"{restarted} sessions restarted after their lease ran out; PgBouncer peaks "
            f"{watcher.peak} (pool {topology.sizes.pool_size}), "
            f"clients by process {watcher.clients}"
        )
