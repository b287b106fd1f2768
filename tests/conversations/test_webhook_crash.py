"""C7 under a crash: every payload the webhook answered 200 survives a `kill -9` of PostgreSQL.

The test runs its own PostgreSQL cluster (own data directory and port, through devtools.localdb,
with the development setting `synchronous_commit = off` on purpose: the receipt's durability must
not depend on it), migrates it, and serves the project under gunicorn against it. Eight client
threads post signed payloads (a new message each) while the postmaster and every process of the
cluster are killed with SIGKILL; then the cluster is started again. It checks that

- every payload answered 200 is stored, with its receipt, and applied (after the retry of
  receipts stored as `failed`, if any);
- while the database is down the webhook answers 503 `database_unavailable` (JSON), never 200
  for a payload it could not store;
- the same gunicorn process serves 200 again once the database is back, without a restart.

The figures (posts acknowledged before and after, 503s) are printed with `-s`.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from conversations.signatures import meta_json_bytes, signature_for
from devtools.localdb import SERVER_SETTINGS, Cluster
from tests.helpers import PROJECT_ROOT, free_port, process_group_stop, run_python, wait_for

pytestmark = pytest.mark.slow

CLIENTS = 8
PAGE_ID = "424242424242"
APP_SECRET = "crash-test-app-secret"
DATABASE = "evoflow_crash"
ACKED_BEFORE_KILL = 150
ACKED_AFTER_RESTART = 150


@dataclass
class Outcome:
    mid: str
    status: int | None  # None: no answer (connection refused or reset)
    code: str = ""
    phase: str = ""  # what the test was doing when the answer came


@dataclass
class Storm:
    port: int
    phase: str = "up"
    stop: threading.Event = field(default_factory=threading.Event)
    outcomes: list[Outcome] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def acked(self, phase: str) -> int:
        with self.lock:
            return sum(1 for o in self.outcomes if o.status == 200 and o.phase == phase)

    def client(self, number: int) -> None:
        psid = f"70010000{number:02d}"
        sequence = 0
        while not self.stop.is_set():
            sequence += 1
            mid = f"m_crash_{number}_{sequence}"
            timestamp = 1_741_000_000_000 + sequence * 1_000 + number
            document = {
                "object": "page",
                "entry": [
                    {
                        "id": PAGE_ID,
                        "time": timestamp,
                        "messaging": [
                            {
                                "sender": {"id": psid},
                                "recipient": {"id": PAGE_ID},
                                "timestamp": timestamp,
                                "message": {"mid": mid, "text": f"caf\u00e9 n\u00b0{sequence}"},
                            }
                        ],
                    }
                ],
            }
            body = meta_json_bytes(document)
            phase = self.phase
            status, code = _post(self.port, body)
            with self.lock:
                self.outcomes.append(Outcome(mid, status, code, phase))
            if status != 200:
                time.sleep(0.05)


def _post(port: int, body: bytes) -> tuple[int | None, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(
            "POST",
            "/webhooks/messenger/",
            body,
            headers={
                "Content-Type": "application/json",
                "X-Hub-Signature-256": signature_for(body, secret=APP_SECRET),
            },
        )
        response = connection.getresponse()
        payload = response.read()
        code = ""
        if response.status != 200:
            assert response.getheader("Content-Type", "").startswith("application/json"), payload
            code = json.loads(payload)["code"]
        return response.status, code
    except OSError:
        return None, ""
    finally:
        connection.close()


@pytest.fixture
def crash_cluster() -> Iterator[Cluster]:
    # Its own directory (reachable by the `postgres` user when the suite runs as root) and port.
    base = Path(tempfile.mkdtemp(prefix="evoflow-crash-"))
    base.chmod(0o755)
    cluster = Cluster(data_dir=base / "pgdata", port=free_port())
    try:
        cluster.start()
        cluster.ensure_database(DATABASE)
        yield cluster
    finally:
        try:
            cluster.stop()
        finally:
            shutil.rmtree(base, ignore_errors=True)


def _env(cluster: Cluster) -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "evoflow.settings",
        "DEBUG": "1",
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:{cluster.port}/{DATABASE}",
        "FB_APP_SECRET": APP_SECRET,
        "LOG_LEVEL": "CRITICAL",
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture
def web(crash_cluster: Cluster) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    env = _env(crash_cluster)
    migrated = run_python("manage.py", "migrate", "--no-input", env=env, timeout=240)
    assert migrated.returncode == 0, migrated.stderr
    port = free_port()
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "gunicorn", "evoflow.wsgi:application"),
            *("--config", "gunicorn.conf.py", "--bind", f"127.0.0.1:{port}"),
            *("--workers", "2", "--threads", "4", "--graceful-timeout", "5"),
        ],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert wait_for(lambda: _healthz(port), timeout=60, interval=0.2), "gunicorn did not start"
        yield process, port
    finally:
        process_group_stop(process, signal.SIGTERM, timeout=20)


def _healthz(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", "/healthz")
        return connection.getresponse().status in (200, 503)
    except OSError:
        return False
    finally:
        connection.close()


def _kill_cluster(cluster: Cluster) -> int:
    """SIGKILL the postmaster and, at once, every process it started (as a power cut would
    leave them: no shutdown, no flush of what is only in shared memory). Returns how many."""
    postmaster = cluster.postmaster_pid()
    assert postmaster is not None
    children = [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and _parent_of(int(entry.name)) == postmaster
    ]
    for pid in (postmaster, *children):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: not Path(f"/proc/{postmaster}").exists(), timeout=10)
    return 1 + len(children)


def _parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def test_every_acknowledged_payload_survives_a_kill_9_of_postgresql(crash_cluster, web):
    # Given a cluster that does not wait for commits on its own, and gunicorn serving against it
    assert SERVER_SETTINGS["synchronous_commit"] == "off"
    process, port = web
    storm = Storm(port=port)
    clients = [threading.Thread(target=storm.client, args=(n,)) for n in range(CLIENTS)]
    for thread in clients:
        thread.start()
    try:
        # When 8 clients post signed payloads and PostgreSQL is killed mid-storm
        assert wait_for(lambda: storm.acked("up") >= ACKED_BEFORE_KILL, timeout=60)
        storm.phase = "down"
        killed = _kill_cluster(crash_cluster)
        assert wait_for(
            lambda: sum(1 for o in list(storm.outcomes) if o.status == 503) >= CLIENTS,
            timeout=30,
        )
        storm.phase = "restarting"
        crash_cluster.start()
        storm.phase = "back"
        assert wait_for(lambda: storm.acked("back") >= ACKED_AFTER_RESTART, timeout=60), (
            "the web process did not recover"
        )
    finally:
        storm.stop.set()
        for thread in clients:
            thread.join(timeout=60)

    # Then the web process never restarted, and while the database was down it answered 503
    assert process.poll() is None
    outcomes = list(storm.outcomes)
    statuses = {o.status for o in outcomes}
    assert statuses <= {200, 503}, statuses
    unavailable = [o for o in outcomes if o.status == 503]
    assert unavailable
    assert {o.code for o in unavailable} == {"database_unavailable"}
    acked = {o.mid for o in outcomes if o.status == 200}

    # And every acknowledged payload is stored with its receipt, and applied once the receipts
    # stored as failed (if any) are retried
    env = _env(crash_cluster)
    retried = run_python("manage.py", "webhook_reprocess", "--status", "failed", env=env)
    assert retried.returncode == 0, retried.stdout + retried.stderr
    with psycopg.connect(
        f"postgresql://postgres@127.0.0.1:{crash_cluster.port}/{DATABASE}"
    ) as connection:
        stored = {row[0] for row in connection.execute("SELECT mid FROM conversations_message")}
        receipts = connection.execute(
            "SELECT status, count(*) FROM conversations_webhookreceipt GROUP BY status"
        ).fetchall()
        counts = connection.execute(
            "SELECT sum(message_count) FROM conversations_conversation"
        ).fetchone()
    lost = acked - stored
    assert not lost, f"{len(lost)} acknowledged payloads lost: {sorted(lost)[:10]}"
    assert counts[0] == len(stored)
    print(
        f"\ncrash test: {len(acked)} payloads acknowledged "
        f"({storm.acked('up')} before the kill, {storm.acked('back')} after the restart), "
        f"{len(unavailable)} answered 503 while down, {killed} PostgreSQL processes killed, "
        f"0 lost; receipts by status {dict(receipts)}"
    )
