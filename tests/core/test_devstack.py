"""`python -m devtools.devstack` (what `make run` starts), end to end over real HTTP.

The stack runs against a throwaway database on the same PostgreSQL server as the tests and on
a free port, exactly as a second checkout would run beside the first.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote, urljoin, urlsplit

import psycopg
import pytest
import requests
from django.conf import settings
from openapi_spec_validator import validate
from psycopg import sql
from psycopg.conninfo import make_conninfo

from devtools.devstack import LOCAL_ENV_NOTE, READY_MARKER
from evoflow.db import psycopg_conninfo
from evoflow.demo import DEMO_OPERATOR_USERNAME
from tests.helpers import PROJECT_ROOT, free_port, run_python

pytestmark = pytest.mark.slow

READY_TIMEOUT_SECONDS = 90
STOP_TIMEOUT_SECONDS = 30
DEMO_PASSWORD = "devstack-test-password"
STARTED_LINE = re.compile(r"started (?P<name>[\w-]+) \(pid (?P<pid>\d+)\)")
LOCAL_HOSTS = {"127.0.0.1", "localhost"}


@pytest.fixture
def throwaway_database_url() -> Iterator[str]:
    """A fresh, empty database on the tests' PostgreSQL server, dropped afterwards."""
    name = f"evoflow_devstack_{uuid.uuid4().hex[:12]}"
    server = make_conninfo(psycopg_conninfo(), dbname="postgres")
    with psycopg.connect(server, autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    database = settings.DATABASES["default"]
    credentials = quote(database["USER"], safe="")
    if database.get("PASSWORD"):
        credentials += ":" + quote(database["PASSWORD"], safe="")
    try:
        yield f"postgres://{credentials}@{database['HOST']}:{database['PORT']}/{name}"
    finally:
        with psycopg.connect(server, autocommit=True) as connection:
            connection.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@dataclass
class RunningStack:
    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    pending: queue.Queue[str | None] = field(default_factory=queue.Queue)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def child_pids(self) -> dict[str, int]:
        return {
            match["name"]: int(match["pid"])
            for match in map(STARTED_LINE.search, self.lines)
            if match
        }

    def wait_for_output(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"no {text!r} within {timeout} s; output:\n{self.output}")
            try:
                line = self.pending.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                pytest.fail(f"devstack exited before {text!r}; output:\n{self.output}")


def live_processes_in_group(pgid: int) -> list[str]:
    """`ps` lines of processes in the group that still run (zombies do not run)."""
    listing = subprocess.run(
        ["ps", "-eo", "pid=,pgid=,stat=,args="], capture_output=True, text=True, check=True
    )
    found = []
    for line in listing.stdout.splitlines():
        pid, group, state, *_ = line.split(maxsplit=3)
        if int(group) == pgid and not state.startswith("Z"):
            found.append(line.strip())
    return found


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.fixture
def web_port() -> int:
    return free_port()


@pytest.fixture
def simulator_ports() -> dict[str, int]:
    return {"crm": free_port(), "graph": free_port()}


@pytest.fixture
def local_env(tmp_path) -> Path:
    path = tmp_path / "env"
    path.write_text("DEBUG=1\nCRM_BASE_URL=http://127.0.0.1:1\n")
    return path


@pytest.fixture
def devstack(
    throwaway_database_url: str,
    web_port: int,
    simulator_ports: dict[str, int],
    local_env: Path,
) -> Iterator[RunningStack]:
    """`python -m devtools.devstack` in its own process group, its output collected."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "evoflow.settings",
        "DEBUG": "1",
        "DATABASE_URL": throwaway_database_url,
        "EVOFLOW_WEB_PORT": str(web_port),
        "EVOFLOW_CRM_PORT": str(simulator_ports["crm"]),
        "EVOFLOW_GRAPH_PORT": str(simulator_ports["graph"]),
        "EVOFLOW_DEMO_PASSWORD": DEMO_PASSWORD,
        "PYTHONUNBUFFERED": "1",
        # Not the checkout's own file: this stack's ports are throwaway ones.
        "EVOFLOW_LOCAL_ENV": str(local_env),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "devtools.devstack"],
        cwd=PROJECT_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        process_group=0,
    )
    stack = RunningStack(process=process)

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            stack.lines.append(line)
            stack.pending.put(line)
        stack.pending.put(None)

    threading.Thread(target=read, daemon=True).start()
    try:
        yield stack
    finally:
        # Whatever the test did, leave nothing running (a passing test has stopped it all).
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        for pid in stack.child_pids().values():
            if live_processes_in_group(pid):
                os.killpg(pid, signal.SIGKILL)


class AssetReferences(HTMLParser):
    """Every URL a page loads or links to: src and href attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


def test_devstack_serves_the_site_and_stops_everything_on_ctrl_c(
    devstack, web_port, simulator_ports, local_env, throwaway_database_url
):
    base = f"http://127.0.0.1:{web_port}"

    # Given the stack has started and printed its banner
    devstack.wait_for_output(READY_MARKER, READY_TIMEOUT_SECONDS)
    assert f"admin       {base}/admin/" in devstack.output
    assert f"API docs    {base}/api/docs/" in devstack.output
    assert f"API schema  {base}/api/schema/" in devstack.output
    assert f"username {DEMO_OPERATOR_USERNAME}  password {DEMO_PASSWORD}" in devstack.output
    children = devstack.child_pids()
    assert set(children) == {"migrate", "graph", "crm", "worker", "web", "seed"}

    # And the simulators answer on the ports they were given
    for port in simulator_ports.values():
        assert requests.get(f"http://127.0.0.1:{port}/_control/counters", timeout=10).ok

    # And the local env file names them, for the commands run in the checkout meanwhile; its
    # other lines stay, a stale simulator URL is replaced
    assert local_env.read_text().splitlines() == [
        "DEBUG=1",
        LOCAL_ENV_NOTE,
        f"CRM_BASE_URL=http://127.0.0.1:{simulator_ports['crm']}",
        f"GRAPH_API_BASE_URL=http://127.0.0.1:{simulator_ports['graph']}/v21.0",
    ]

    # And the fresh demo breaks no invariant: `integrity` (the cron command) exits 0
    checked = run_python(
        "manage.py",
        "integrity",
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "evoflow.settings",
            "DEBUG": "1",
            "DATABASE_URL": throwaway_database_url,
            "EVOFLOW_LOCAL_ENV": str(local_env),
        },
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr

    # Then /healthz answers
    health = requests.get(f"{base}/healthz", timeout=10)
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "database": "ok"}

    # And the admin login page renders its form, and the demo operator can log in with it
    session = requests.Session()
    login = session.get(f"{base}/admin/login/", timeout=10)
    assert login.status_code == 200
    assert '<form action="/admin/login/"' in login.text
    assert 'name="username"' in login.text
    assert 'name="password"' in login.text
    logged_in = session.post(
        f"{base}/admin/login/?next=/admin/",
        data={
            "username": DEMO_OPERATOR_USERNAME,
            "password": DEMO_PASSWORD,
            "csrfmiddlewaretoken": session.cookies["csrftoken"],
        },
        allow_redirects=False,
        timeout=10,
    )
    assert logged_in.status_code == 302
    assert logged_in.headers["Location"] == "/admin/"
    assert session.get(f"{base}/admin/", allow_redirects=False, timeout=10).status_code == 200

    # And the schema is a valid OpenAPI 3 document
    schema = requests.get(f"{base}/api/schema/", params={"format": "json"}, timeout=30)
    assert schema.status_code == 200
    document = schema.json()
    assert document["openapi"].startswith("3.")
    validate(document)

    # And the API docs load only local assets, each of which is served
    docs = requests.get(f"{base}/api/docs/", timeout=10)
    assert docs.status_code == 200
    absolute_urls = re.findall(r"https?://[^\s\"'<>)]+", docs.text)
    assert [url for url in absolute_urls if urlsplit(url).hostname not in LOCAL_HOSTS] == []
    references = AssetReferences()
    references.feed(docs.text)
    assert references.urls, "the docs page references no assets at all"
    for url in references.urls:
        asset = requests.get(urljoin(f"{base}/api/docs/", url), timeout=10)
        assert (url, asset.status_code) == (url, 200)

    # When Ctrl-C arrives
    os.killpg(devstack.process.pid, signal.SIGINT)

    # Then the stack exits 0 in time, having stopped every process it started
    assert devstack.process.wait(timeout=STOP_TIMEOUT_SECONDS) == 0
    for name, pid in children.items():
        assert (name, live_processes_in_group(pid)) == (name, [])
    assert port_is_free(web_port)
    assert all(port_is_free(port) for port in simulator_ports.values())


def test_devstack_refuses_a_port_that_is_taken(throwaway_database_url):
    # Given something already listens on the web port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        env = {
            **os.environ,
            "DEBUG": "1",
            "DATABASE_URL": throwaway_database_url,
            "EVOFLOW_WEB_PORT": str(port),
        }

        # When the stack starts
        result = run_python("-m", "devtools.devstack", env=env, timeout=60)

    # Then it refuses before starting anything, saying which port and why
    assert result.returncode == 2
    assert f"127.0.0.1:{port} is already in use" in result.stdout
    assert "started" not in result.stdout


def test_devstack_stops_the_others_and_fails_when_a_child_dies(devstack):
    # Given the stack is running
    devstack.wait_for_output(READY_MARKER, READY_TIMEOUT_SECONDS)
    children = devstack.child_pids()

    # When the web server dies on its own
    os.kill(children["web"], signal.SIGKILL)

    # Then the stack stops the worker and exits non-zero, naming the web server
    assert devstack.process.wait(timeout=STOP_TIMEOUT_SECONDS) == 1
    devstack.wait_for_output("every process it started has stopped", 5)
    assert "web exited unexpectedly with signal SIGKILL; stopping the others" in devstack.output
    assert live_processes_in_group(children["worker"]) == []


def test_the_stack_shares_one_emptied_metrics_directory_unless_one_is_named(tmp_path):
    from devtools.devstack import metrics_directory_prepare

    directory = tmp_path / "prometheus"
    directory.mkdir()
    (directory / "counter_123.db").write_bytes(b"stale")
    (directory / "keep.txt").write_text("not a sample file")
    env: dict[str, str] = {}

    assert metrics_directory_prepare(env, directory) == directory
    assert env["PROMETHEUS_MULTIPROC_DIR"] == str(directory)
    assert sorted(path.name for path in directory.iterdir()) == ["keep.txt"]

    named = tmp_path / "theirs"
    named.mkdir()
    (named / "counter_9.db").write_bytes(b"theirs")
    env = {"PROMETHEUS_MULTIPROC_DIR": str(named)}
    assert metrics_directory_prepare(env, directory) == named
    assert (named / "counter_9.db").exists()
