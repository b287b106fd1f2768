"""Plain helpers for tests that start processes, servers and clusters."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def production_secrets() -> dict[str, str]:
    """Secrets production mode accepts (random, long enough), fresh for each call."""
    from cryptography.fernet import Fernet

    return {
        "SECRET_KEY": secrets.token_urlsafe(50),
        "FB_APP_SECRET": secrets.token_hex(16),
        "FB_VERIFY_TOKEN": secrets.token_urlsafe(24),
        "FIELD_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "CRM_API_TOKEN": secrets.token_urlsafe(24),
    }


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.1) -> bool:
    """Poll `predicate` until it is truthy (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def run_python(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run `python ARGS...` (a module, manage.py, a -c script) in the project, capturing text."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@contextmanager
def qcluster(env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """`manage.py qcluster` in its own process group, stopped cleanly (SIGINT to the group, as
    devtools.devstack does) unless the test killed it already."""
    process = subprocess.Popen(
        [sys.executable, "manage.py", "qcluster"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        process_group_stop(process, signal.SIGINT, timeout=30)


def process_group_stop(process: subprocess.Popen, stop_signal: int, *, timeout: float) -> None:
    """Send `stop_signal` to the process group of `process` (started with a session of its
    own) and wait for it; SIGKILL after `timeout` seconds. Nothing when it has ended already."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, stop_signal)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def bench_quick_records(
    name: str, *, env: dict[str, str], results: Path, scale: str = "0.01"
) -> dict[str, dict]:
    """Run one benchmark (`python -m bench --quick --scale S --only NAME`) and return its
    figures by benchmark name, from its `BENCH {json}` lines; it must exit 0."""
    completed = run_python(
        *("-m", "bench", "--quick", "--scale", scale, "--only", name),
        *("--results", str(results)),
        env=env,
        timeout=240,
    )
    assert completed.returncode == 0, completed.stderr + completed.stdout
    return {
        record["benchmark"]: record["figures"]
        for record in (
            json.loads(line.removeprefix("BENCH "))
            for line in completed.stdout.splitlines()
            if line.startswith("BENCH ")
        )
    }
