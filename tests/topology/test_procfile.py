"""The repository's Procfile, run by `honcho start` as a deployment would run it, against the
production topology's PostgreSQL (durable), PgBouncer (transaction pooling) and Redis
(docs/operations.md, "Running the Procfile"): the web process answers through PgBouncer, a task
queued in Redis runs on the worker, the connections each process opens are counted, and a
SIGTERM or SIGINT to honcho stops every process it started, within honcho's own grace period
(it SIGKILLs what is left after five seconds), with their ports and connections closed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.topology import Sizes, Topology, run_dir_default
from tests.helpers import PROJECT_ROOT, free_port, process_group_stop, wait_for

pytestmark = [pytest.mark.slow]

BIN = Path(sys.executable).parent
APPLICATION_NAME = "procfile"

# Queues an integrity run the way the admin's button does, then waits for a worker to finish
# it; prints the run's final status.
REQUEST_AND_WAIT = """
import json, time, django
django.setup()
from evoflow.integrity.lifecycle import integrity_run_request
from evoflow.models import IntegrityRun
run, created = integrity_run_request(trigger="admin")
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    run.refresh_from_db()
    if run.status not in ("queued", "running"):
        break
    time.sleep(0.5)
print(json.dumps({"id": run.pk, "created": created, "status": run.status}))
"""


@pytest.fixture(scope="module")
def services(request) -> Iterator[Topology]:
    """PostgreSQL, PgBouncer and Redis of the topology, migrated, without its own web groups
    and workers: the Procfile brings those."""
    nowhere = f"http://127.0.0.1:{free_port()}"  # no Graph or CRM call is made here
    topology = Topology(
        run_dir=run_dir_default(),
        graph_url=f"{nowhere}/v21.0",
        crm_url=nowhere,
        sizes=Sizes(web_groups=0, clusters=0),
    )
    failed_before = request.session.testsfailed
    topology.start()
    try:
        yield topology
    finally:
        topology.stop()
        if request.session.testsfailed > failed_before:
            print(f"topology logs kept in {topology.run_dir}")
        else:
            shutil.rmtree(topology.run_dir, ignore_errors=True)


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def process_table() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, state, start time) of every process, from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name (field 2) may hold spaces and parentheses: split after its end.
        fields = stat[stat.rindex(")") + 2 :].split()
        table[int(entry.name)] = (int(fields[1]), fields[0], fields[19])
    return table


def descendants(pid: int) -> dict[int, str]:
    """Every living process below `pid`, with its start time (so a reused pid is not it)."""
    table = process_table()
    children: dict[int, list[int]] = {}
    for child, (parent, _, _) in table.items():
        children.setdefault(parent, []).append(child)
    found, todo = {}, list(children.get(pid, []))
    while todo:
        child = todo.pop()
        if table[child][1] != "Z":
            found[child] = table[child][2]
        todo += children.get(child, [])
    return found


def still_running(processes: dict[int, str]) -> list[int]:
    table = process_table()
    return [
        pid
        for pid, started in processes.items()
        if pid in table and table[pid][2] == started and table[pid][1] != "Z"
    ]


def clients_of(topology: Topology, name: str) -> int:
    return sum(
        1
        for client in topology.pgbouncer_show("CLIENTS")
        if client["database"] == "evoflow" and client["application_name"] == name
    )


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_honcho_runs_the_procfile_through_pgbouncer_and_stops_it_all(services, stop_signal):
    run_dir = services.run_dir / f"honcho-{stop_signal.name}"
    run_dir.mkdir()
    (run_dir / "metrics").mkdir()
    empty_env_file = run_dir / "empty.env"  # honcho would read a developer's .env otherwise
    empty_env_file.write_text("")
    port = free_port()
    env = {
        **services.env(name=APPLICATION_NAME),
        "PORT": str(port),  # honcho gives it to the first process (web), +100 to the next
        "WEB_CONCURRENCY": "2",
        "PROMETHEUS_MULTIPROC_DIR": str(run_dir / "metrics"),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    output = run_dir / "honcho.log"
    processes: dict[int, str] = {}
    with output.open("wb") as out:
        honcho = subprocess.Popen(
            [str(BIN / "honcho"), "start", "--no-colour", "-e", str(empty_env_file)],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        # Given the Procfile's processes started by honcho
        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                    return bool(json.loads(r.read()) == {"status": "ok", "database": "ok"})
            except OSError:
                return False

        assert wait_for(lambda: healthy() or honcho.poll() is not None, timeout=120, interval=0.5)
        assert honcho.poll() is None, output.read_text()
        # When the web answers (through PgBouncer: its connections are PgBouncer's clients)
        for _ in range(20):
            assert healthy()
        assert clients_of(services, APPLICATION_NAME) >= 1

        # ...and a task queued in Redis runs on the worker
        requested = subprocess.run(
            [sys.executable, "-c", REQUEST_AND_WAIT],
            cwd=PROJECT_ROOT,
            env=services.env(name="requester"),
            capture_output=True,
            text=True,
            check=False,
            timeout=180,
        )
        assert requested.returncode == 0, requested.stderr
        run = json.loads(requested.stdout)
        assert run["created"] is True
        assert run["status"] == "healthy", (run, output.read_text()[-3000:])
        # honcho prefixes each line with its time and the process's name.
        worker_lines = [
            line for line in output.read_text().splitlines() if line.split()[1:2] == ["worker.1"]
        ]
        assert any("integrity_run_requested" in line for line in worker_lines), worker_lines
        held = Counter(
            client["application_name"]
            for client in services.pgbouncer_show("CLIENTS")
            if client["database"] == "evoflow"
        )[APPLICATION_NAME]
        processes.update(descendants(honcho.pid))
        # honcho -> sh -> gunicorn master -> 2 workers; honcho -> sh -> qcluster -> its children
        assert len(processes) >= 8, processes

        # Then a stop signal to honcho stops every process it started, gracefully
        started_stopping = time.monotonic()
        honcho.send_signal(stop_signal)
        honcho.wait(timeout=60)
        stop_seconds = time.monotonic() - started_stopping
        text = output.read_text()
        assert f"{stop_signal.name} received" in text, text[-3000:]
        assert "sending SIGKILL" not in text, text[-3000:]
        for name in ("web.1", "worker.1"):
            assert f"{name} stopped (rc=" in text, text[-3000:]
        assert wait_for(lambda: not still_running(processes), timeout=15), still_running(processes)
        # ...with the web port and every database connection closed
        assert not listening(port)
        assert wait_for(lambda: clients_of(services, APPLICATION_NAME) == 0, timeout=10)
        print(
            f"\nProcfile under honcho: {held} PgBouncer client connections held by web "
            f"(2 processes x 4 threads) and worker (Q_WORKERS={env['Q_WORKERS']}) after "
            f"serving and running a task; {len(processes)} processes; "
            f"{stop_signal.name} stopped them in {stop_seconds:.1f} s"
        )
    finally:
        processes.update(descendants(honcho.pid))
        process_group_stop(honcho, signal.SIGKILL, timeout=5)
        for pid in still_running(processes):  # what honcho left behind, if it failed
            os.kill(pid, signal.SIGKILL)
