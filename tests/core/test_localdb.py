"""The embedded PostgreSQL script: idempotent start and stop, stale pid files handled."""

import contextlib
import os
import shutil
import subprocess
import uuid

import psycopg
import pytest

from devtools.localdb import Cluster, default_data_dir, server_can_reach
from tests.helpers import free_port, run_python

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster():
    # Beside the project's own cluster (not in /tmp/pytest-of-root, which is private), so the
    # postgres user can reach it when the tests run as root.
    data_dir = default_data_dir().parent / "test-clusters" / uuid.uuid4().hex[:12]
    cluster = Cluster(data_dir=data_dir, port=free_port())
    yield cluster
    cluster.stop()
    shutil.rmtree(data_dir, ignore_errors=True)
    cluster.log_file.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        data_dir.parent.rmdir()  # only when no other test's cluster is left in it


def localdb(cluster: Cluster, action: str) -> subprocess.CompletedProcess[str]:
    return run_python(
        "-m",
        "devtools.localdb",
        action,
        "--dir",
        str(cluster.data_dir),
        "--port",
        str(cluster.port),
    )


def answers(url: str) -> bool:
    with psycopg.connect(url.replace("postgres://", "postgresql://"), connect_timeout=5) as conn:
        return conn.execute("SELECT 1").fetchone() == (1,)


def test_start_is_idempotent_and_prints_the_url(cluster):
    # When started twice
    first = localdb(cluster, "start")
    second = localdb(cluster, "start")

    # Then both succeed, the second is a no-op, and the printed URL works
    url = f"postgres://postgres@127.0.0.1:{cluster.port}/evoflow"
    assert first.returncode == 0, first.stderr
    assert "started" in first.stderr
    assert second.returncode == 0, second.stderr
    assert "already running" in second.stderr
    assert first.stdout.strip() == second.stdout.strip() == url
    assert answers(url)
    assert localdb(cluster, "status").returncode == 0


def test_stop_is_idempotent(cluster):
    localdb(cluster, "start")

    first = localdb(cluster, "stop")
    second = localdb(cluster, "stop")

    assert (first.returncode, first.stdout.strip()) == (0, "stopped")
    assert (second.returncode, second.stdout.strip()) == (0, "not running")
    assert localdb(cluster, "status").returncode == 3


@pytest.mark.parametrize("leftover", ["dead process", "live unrelated process"])
def test_a_stale_pid_file_does_not_block_start(cluster, leftover):
    # Given a stopped cluster whose pid file names a process that is not its postmaster
    assert localdb(cluster, "start").returncode == 0
    assert localdb(cluster, "stop").returncode == 0
    if leftover == "dead process":
        finished = subprocess.Popen(["true"])
        finished.wait()
        pid = finished.pid
    else:
        pid = os.getpid()
    pid_file = cluster.data_dir / "postmaster.pid"
    pid_file.write_text(f"{pid}\n{cluster.data_dir}\n")

    # When it is started
    result = localdb(cluster, "start")

    # Then the leftover is ignored and the server runs
    assert result.returncode == 0, result.stderr
    assert "started" in result.stderr
    assert answers(cluster.url)


def test_url_needs_no_server():
    result = run_python("-m", "devtools.localdb", "url", "--port", "61234")

    assert result.stdout.strip() == "postgres://postgres@127.0.0.1:61234/evoflow"


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the server to `postgres`")
def test_a_private_directory_is_detected_as_unreachable_for_the_server(tmp_path):
    private = default_data_dir().parent / f"private-{uuid.uuid4().hex[:8]}"
    private.mkdir(mode=0o700)
    try:
        assert not server_can_reach(private)
        private.chmod(0o755)
        assert server_can_reach(private)
    finally:
        private.rmdir()
