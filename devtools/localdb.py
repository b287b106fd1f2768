"""The embedded PostgreSQL cluster that local runs, tests and benchmarks use.

    python -m devtools.localdb start|stop|status|url [--dir DIR] [--port PORT]

`start` creates a cluster under `.local/pgdata` with `initdb` the first time, starts it with
`pg_ctl` listening on 127.0.0.1 only (port `EVOFLOW_PG_PORT`, default 54329), creates the
`evoflow` database and prints its `DATABASE_URL`. It is idempotent: a running cluster is left
alone and a pid file left behind by a dead server is removed. PostgreSQL refuses to run as
root, so when the current user is root the server runs as the `postgres` system user.

The cluster's port and URL come from `evoflow.local_database`, which the settings use too; this
module imports nothing from Django, so it runs before any settings are configured.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import pwd
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from evoflow.local_database import DATABASE_NAME, DEFAULT_PORT, SUPERUSER, database_url

SERVER_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    # No Unix socket: every client connects over TCP, and a long checkout path cannot break
    # the socket name's length limit.
    "unix_socket_directories": "",
    "max_connections": "200",
    "shared_buffers": "256MB",
    "work_mem": "16MB",
    "maintenance_work_mem": "256MB",
    # A development cluster: commits are not waited for on disk (a crash loses at most the
    # last few hundred milliseconds, never corrupts anything).
    "synchronous_commit": "off",
    "max_wal_size": "2GB",
    "log_min_duration_statement": "-1",
}
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class LocalDbError(RuntimeError):
    """The local cluster could not be created, started or stopped."""


def find_pg_bin() -> Path:
    """The directory holding initdb and pg_ctl: PATH first, then Debian's versioned paths."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(os.path.realpath(found)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)
    if candidates:
        return Path(candidates[0]).parent
    raise LocalDbError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or under "
        "/usr/lib/postgresql; install PostgreSQL 15 (`make system-deps` does it on Debian)."
    )


@dataclass(frozen=True)
class Cluster:
    data_dir: Path
    port: int

    @property
    def log_file(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    @property
    def url(self) -> str:
        return database_url(self.port)

    # -- running the server binaries as the right user ----------------------------------------

    @staticmethod
    def _run_as() -> pwd.struct_passwd | None:
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam(SUPERUSER)
        except KeyError as exc:
            raise LocalDbError(
                "running as root, but there is no `postgres` system user to run the server as"
            ) from exc

    def _pg(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(find_pg_bin() / tool), *args]
        account = self._run_as()
        kwargs: dict = {"capture_output": True, "text": True, "cwd": "/"}
        if account is not None:
            kwargs.update(user=account.pw_uid, group=account.pw_gid, extra_groups=[])
            kwargs["env"] = {**os.environ, "HOME": account.pw_dir, "USER": SUPERUSER}
        result = subprocess.run(command, check=False, **kwargs)
        if check and result.returncode != 0:
            raise LocalDbError(
                f"{tool} failed ({result.returncode}): {result.stderr.strip() or result.stdout}"
            )
        return result

    def _prepare_dir(self) -> None:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        account = self._run_as()
        if account is None:
            return
        if not server_can_reach(self.data_dir.parent):
            raise LocalDbError(
                f"the `postgres` user cannot reach {self.data_dir.parent}; make its parent "
                "directories traversable (chmod o+x) or pass --dir elsewhere"
            )
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        os.chown(self.data_dir, account.pw_uid, account.pw_gid)
        self.log_file.touch(exist_ok=True)
        os.chown(self.log_file, account.pw_uid, account.pw_gid)

    # -- lifecycle ---------------------------------------------------------------------------

    def is_initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def postmaster_pid(self) -> int | None:
        """The pid recorded in postmaster.pid, if the file exists and is readable."""
        try:
            first_line = (self.data_dir / "postmaster.pid").read_text().splitlines()[0]
            return int(first_line.strip())
        except (FileNotFoundError, IndexError, ValueError, PermissionError):
            return None

    def is_running(self) -> bool:
        """True when a postgres process owns this data directory.

        `pg_ctl status` only asks whether the recorded pid is alive; after a crash or a
        container restart that pid may belong to an unrelated process, so the process's name
        is checked too.
        """
        pid = self.postmaster_pid()
        if pid is None:
            return False
        comm = Path(f"/proc/{pid}/comm")
        if comm.parent.exists():
            try:
                return comm.read_text().strip() in {"postgres", "postmaster"}
            except OSError:
                return False
        return self._pg("pg_ctl", "status", "-D", str(self.data_dir), check=False).returncode == 0

    def init(self) -> bool:
        """Create the cluster unless it exists; True when it was created now."""
        if self.is_initialised():
            return False
        self._prepare_dir()
        self._pg(
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
        )
        with (self.data_dir / "postgresql.auto.conf").open("a") as conf:
            for name, value in SERVER_SETTINGS.items():
                conf.write(f"{name} = '{value}'\n")
        return True

    def start(self) -> bool:
        """Start the server unless it runs; True when it was started now."""
        self.init()
        if self.is_running():
            return False
        self._prepare_dir()
        stale = self.data_dir / "postmaster.pid"
        if stale.exists():
            # No postgres process owns the directory, so the pid file is a leftover of a killed
            # server; its pid may belong to another process by now, which would make the new
            # postmaster refuse to start.
            stale.unlink()
        self._pg(
            "pg_ctl",
            "start",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_file),
            "-o",
            f"-p {self.port}",
            "-w",
            "-t",
            "60",
        )
        self._wait_until_accepting()
        return True

    def _wait_until_accepting(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            result = self._pg(
                "pg_isready", "-h", "127.0.0.1", "-p", str(self.port), "-q", check=False
            )
            if result.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise LocalDbError(f"server did not accept connections; see {self.log_file}")
            time.sleep(0.1)

    def ensure_database(self, name: str = DATABASE_NAME) -> bool:
        """Create the application database unless it exists; True when it was created now."""
        exists = self._psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'")
        if exists.strip() == "1":
            return False
        self._psql(f'CREATE DATABASE "{name}"')
        return True

    def _psql(self, sql: str) -> str:
        psql = shutil.which("psql") or str(find_pg_bin() / "psql")
        result = subprocess.run(
            [psql, "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, "-d", "postgres"]
            + ["-tA", "-v", "ON_ERROR_STOP=1", "-c", sql],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise LocalDbError(f"psql failed: {result.stderr.strip()}")
        return result.stdout

    def stop(self) -> bool:
        """Stop the server if it runs; True when it was stopped now."""
        if not self.is_running():
            return False
        self._pg("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "60")
        return True


def server_can_reach(directory: Path) -> bool:
    """Whether the server's user can enter `directory` (every parent must be traversable)."""
    account = Cluster._run_as()
    if account is None:
        return True
    probe = subprocess.run(
        ["test", "-x", str(directory)],
        user=account.pw_uid,
        group=account.pw_gid,
        extra_groups=[],
        cwd="/",
        check=False,
    )
    return probe.returncode == 0


def default_data_dir() -> Path:
    """`.local/pgdata` in the checkout; when running as root in a checkout the `postgres` user
    cannot enter (a private home directory), a directory of its own under /var/tmp instead,
    named after the checkout so that each checkout keeps its own cluster."""
    local = PROJECT_ROOT / ".local"
    local.mkdir(exist_ok=True)
    if server_can_reach(local):
        return local / "pgdata"
    digest = hashlib.sha1(str(PROJECT_ROOT).encode()).hexdigest()[:12]
    fallback = Path("/var/tmp") / f"evoflow-{digest}"
    fallback.mkdir(mode=0o755, exist_ok=True)
    return fallback / "pgdata"


def default_cluster(port: int | None = None, data_dir: Path | None = None) -> Cluster:
    return Cluster(
        data_dir=data_dir or default_data_dir(),
        port=port or int(os.environ.get("EVOFLOW_PG_PORT") or DEFAULT_PORT),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.localdb", description=__doc__)
    parser.add_argument("action", choices=["start", "stop", "status", "url"])
    parser.add_argument("--dir", type=Path, help="data directory (default .local/pgdata)")
    parser.add_argument("--port", type=int, help="port (default EVOFLOW_PG_PORT or 54329)")
    args = parser.parse_args(argv)
    cluster = default_cluster(port=args.port, data_dir=args.dir.resolve() if args.dir else None)
    try:
        if args.action == "start":
            started = cluster.start()
            cluster.ensure_database()
            state = "started" if started else "already running"
            print(
                f"PostgreSQL {state} on 127.0.0.1:{cluster.port} ({cluster.data_dir})",
                file=sys.stderr,
            )
            print(cluster.url)
        elif args.action == "stop":
            stopped = cluster.stop()
            print("stopped" if stopped else "not running")
        elif args.action == "status":
            running = cluster.is_running()
            print(
                f"{'running' if running else 'stopped'} on port {cluster.port} ({cluster.data_dir})"
            )
            return 0 if running else 3
        else:
            print(cluster.url)
    except LocalDbError as exc:
        print(f"localdb: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
