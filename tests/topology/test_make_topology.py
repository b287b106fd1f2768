"""`make topology` (`python -m devtools.topology`): everything comes up, the web groups answer
through PgBouncer, and Ctrl-C stops every program it started."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import PROJECT_ROOT, process_group_stop, wait_for

pytestmark = [pytest.mark.slow]


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_make_topology_starts_everything_and_ctrl_c_stops_it():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_"))}
    process = subprocess.Popen(
        [sys.executable, "-m", "devtools.topology"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    logs: Path | None = None
    try:
        assert process.stdout is not None
        banner = []
        for line in process.stdout:
            banner.append(line)
            if "Ctrl-C stops everything" in line:
                break
        text = "".join(banner)
        assert "transaction pooling, pool of 6 for up to 24 clients" in text, text
        found = re.search(r"logs\s+(\S+)/\*\.log", text)
        assert found, text
        logs = Path(found.group(1))
        web_ports = [int(p) for p in re.findall(r"web-[ab]\s+http://127\.0\.0\.1:(\d+)/", text)]
        # postgres, pgbouncer, redis, both web groups and both simulators
        ports = [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", text)]
        assert len(web_ports) == 2
        assert len(set(ports)) == 7, text
        assert all(listening(port) for port in ports)

        for port in web_ports:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as answer:
                assert json.loads(answer.read()) == {"status": "ok", "database": "ok"}

        os.kill(process.pid, signal.SIGINT)
        assert process.wait(timeout=90) == 0
        assert wait_for(lambda: not any(listening(port) for port in ports), timeout=30)
    finally:
        process_group_stop(process, signal.SIGKILL, timeout=5)
        if logs is not None:
            shutil.rmtree(logs, ignore_errors=True)
