"""The production topology on one machine: PostgreSQL with durable commits, PgBouncer in
transaction pooling in front of it, Redis as the task queue and the rate limiter's store, two
gunicorn groups and two `qcluster` processes, all connecting through PgBouncer (migrations
connect directly). docs/operations.md, "The production topology", draws it.

`make topology` (`python -m devtools.topology`) starts it for a person, with the Graph and CRM
simulators, prints where everything listens, and stops it all on Ctrl-C. The topology test
(tests/topology/test_topology.py) starts the same `Topology` and runs a storm through it.

Every program is Debian's: `postgres`, `pgbouncer` (which, like PostgreSQL, refuses to run as
root, so both run as the `postgres` user when this runs as root) and `redis-server`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.fernet import Fernet

from devtools.localdb import Cluster
from evoflow.local_database import DATABASE_NAME, SUPERUSER

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Production durability: every acknowledged commit is on disk.
DURABLE_SETTINGS = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}
# Secrets of a throwaway topology, made anew by each process that starts one: production mode
# refuses the repository's local placeholders and short secrets, as it should.
LOCAL_SECRETS = {
    "SECRET_KEY": secrets.token_urlsafe(50),
    "FB_APP_SECRET": secrets.token_hex(16),
    "FB_VERIFY_TOKEN": secrets.token_urlsafe(24),
    "FIELD_ENCRYPTION_KEY": Fernet.generate_key().decode(),
    "CRM_API_TOKEN": secrets.token_urlsafe(24),
}
STATEMENT_TIMEOUT = "30s"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _wait(predicate: Callable[[], object], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise TopologyError(f"{what} did not come up within {timeout:.0f} s")


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


class TopologyError(RuntimeError):
    """A part of the topology could not be started."""


@dataclass
class Sizes:
    """How big each part is. The PgBouncer pool is smaller than the client connections the web
    and worker processes may open (web: processes x threads; worker: Q_WORKERS + 2 each)."""

    web_groups: int = 2
    web_processes: int = 2
    web_threads: int = 4
    clusters: int = 2
    q_workers: int = 2
    pool_size: int = 6

    @property
    def client_connections(self) -> int:
        return self.web_groups * self.web_processes * self.web_threads + self.clusters * (
            self.q_workers + 2
        )


@dataclass
class Process:
    name: str
    command: list[str]
    env: dict[str, str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.command,
                cwd=PROJECT_ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal_group(self, signum: int) -> None:
        if self.alive:
            assert self.popen is not None
            os.killpg(self.popen.pid, signum)

    def stop(self, signum: int = signal.SIGTERM, *, timeout: float = 30) -> None:
        """Signal the main process (gunicorn and qcluster stop their own children), then kill
        the group if it is still there after `timeout` seconds."""
        if not self.alive:
            return
        assert self.popen is not None
        self.popen.send_signal(signum)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()
        # Children a main process left behind (it was killed) go with their group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)


@dataclass
class Topology:
    """Start with `start()`, stop with `stop()`; `env()` is the environment of a Django process
    that joins it (through PgBouncer), `env(direct=True)` one that bypasses PgBouncer."""

    run_dir: Path
    graph_url: str
    crm_url: str
    sizes: Sizes = field(default_factory=Sizes)
    extra_env: dict[str, str] = field(default_factory=dict)
    pg_port: int = field(default_factory=free_port)
    bouncer_port: int = field(default_factory=free_port)
    redis_port: int = field(default_factory=free_port)
    web_ports: list[int] = field(default_factory=list)
    webs: list[Process] = field(default_factory=list)
    workers: list[Process] = field(default_factory=list)
    _services: list[Process] = field(default_factory=list)
    _cluster: Cluster | None = None

    # -- environments ---------------------------------------------------------------------

    @property
    def direct_url(self) -> str:
        return f"postgres://{SUPERUSER}@127.0.0.1:{self.pg_port}/{DATABASE_NAME}"

    @property
    def pooled_url(self) -> str:
        return f"postgres://{SUPERUSER}@127.0.0.1:{self.bouncer_port}/{DATABASE_NAME}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def env(self, *, direct: bool = False, name: str = "evoflow") -> dict[str, str]:
        """`name` becomes the connections' application_name (PgBouncer's SHOW CLIENTS)."""
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("DATABASE_", "DJANGO_", "PYTEST_"))
        }
        env.update(LOCAL_SECRETS)
        env.update(
            DEBUG="0",
            DJANGO_SETTINGS_MODULE="evoflow.settings",
            LOG_FORMAT="json",
            PYTHONUNBUFFERED="1",
            ALLOWED_HOSTS="127.0.0.1,localhost",
            STATIC_ROOT=str(self.run_dir / "static"),
            REDIS_URL=self.redis_url,
            GRAPH_API_BASE_URL=self.graph_url,
            CRM_BASE_URL=self.crm_url,
            Q_WORKERS=str(self.sizes.q_workers),
            # A Django connection is kept for a minute; PgBouncer then multiplexes them.
            DB_CONN_MAX_AGE="60",
        )
        if direct:
            env["DATABASE_URL"] = self.direct_url
        else:
            env.update(
                DATABASE_URL=f"{self.pooled_url}?application_name={name}",
                DATABASE_POOLER="transaction",
            )
        env.update(self.extra_env)
        return env

    # -- starting and stopping ------------------------------------------------------------

    def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "static").mkdir(exist_ok=True)
        try:
            self._start_postgres()
            self._start_pgbouncer()
            self._start_redis()
            self._migrate()
            for index in range(self.sizes.web_groups):
                self.web_ports.append(free_port())
                self.webs.append(self._web(index))
                self.web_start(index)
            for index in range(self.sizes.clusters):
                self.workers.append(self._worker(index))
                self.workers[index].start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for process in [*reversed(self.workers), *reversed(self.webs)]:
            process.stop(signal.SIGTERM)
        for process in reversed(self._services):
            process.stop(signal.SIGTERM, timeout=10)
        if self._cluster is not None:
            self._cluster.stop()

    def _server_dir(self, name: str) -> Path:
        """A directory the server programs' user can write (they refuse to run as root)."""
        path = self.run_dir / name
        path.mkdir(parents=True, exist_ok=True)
        account = _server_account()
        if account is not None:
            os.chown(path, account.pw_uid, account.pw_gid)
        return path

    def _start_postgres(self) -> None:
        data_dir = self._server_dir("pg") / "data"
        cluster = Cluster(data_dir=data_dir, port=self.pg_port)
        if cluster.init():
            # Later lines of postgresql.auto.conf win: durable commits, unlike the dev cluster.
            with (data_dir / "postgresql.auto.conf").open("a") as conf:
                for name, value in DURABLE_SETTINGS.items():
                    conf.write(f"{name} = '{value}'\n")
        self._cluster = cluster
        cluster.start()
        cluster.ensure_database()
        # Behind PgBouncer the connection cannot carry `-c statement_timeout` (PgBouncer
        # refuses the `options` startup parameter), so the database carries it.
        cluster._psql(
            f"ALTER DATABASE \"{DATABASE_NAME}\" SET statement_timeout = '{STATEMENT_TIMEOUT}'"
        )

    def _start_pgbouncer(self) -> None:
        directory = self._server_dir("pgbouncer")
        users = directory / "users.txt"
        users.write_text(f'"{SUPERUSER}" ""\n')
        config = directory / "pgbouncer.ini"
        config.write_text(
            "[databases]\n"
            f"{DATABASE_NAME} = host=127.0.0.1 port={self.pg_port} dbname={DATABASE_NAME}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.bouncer_port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {users}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {self.sizes.pool_size}\n"
            "min_pool_size = 0\n"
            "reserve_pool_size = 0\n"
            f"max_client_conn = {max(200, 2 * self.sizes.client_connections)}\n"
            f"max_db_connections = {self.sizes.pool_size}\n"
            # A client waits for a server connection at most this long, then gets an error.
            "query_wait_timeout = 60\n"
            "server_lifetime = 3600\n"
            "log_connections = 0\n"
            "log_disconnections = 0\n"
            f"admin_users = {SUPERUSER}\n"
            "stats_users = " + SUPERUSER + "\n"
        )
        account = _server_account()
        if account is not None:
            for path in (users, config):
                os.chown(path, account.pw_uid, account.pw_gid)
        process = Process(
            "pgbouncer",
            _as_server_user(["pgbouncer", str(config)]),
            dict(os.environ),
            self.run_dir / "pgbouncer.log",
        )
        process.start()
        self._services.append(process)
        _wait(lambda: _port_open(self.bouncer_port), timeout=20, what="pgbouncer")

    def _start_redis(self) -> None:
        directory = self.run_dir / "redis"
        directory.mkdir(exist_ok=True)
        process = Process(
            "redis",
            [
                shutil.which("redis-server") or "/usr/bin/redis-server",
                *("--port", str(self.redis_port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(directory)),
            ],
            dict(os.environ),
            self.run_dir / "redis.log",
        )
        process.start()
        self._services.append(process)
        _wait(lambda: _port_open(self.redis_port), timeout=20, what="redis-server")

    def _migrate(self) -> None:
        result = subprocess.run(
            [sys.executable, "manage.py", "migrate", "--no-input"],
            cwd=PROJECT_ROOT,
            env=self.env(direct=True),
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
        (self.run_dir / "migrate.log").write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            raise TopologyError(f"migrate failed: {result.stderr[-2000:]}")

    def _web(self, index: int) -> Process:
        name = f"web-{'ab'[index] if index < 2 else index}"
        metrics = self.run_dir / f"{name}-metrics"
        metrics.mkdir(exist_ok=True)
        env = {**self.env(name=name), "PROMETHEUS_MULTIPROC_DIR": str(metrics)}
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "evoflow.wsgi:application",
            *("--config", "gunicorn.conf.py"),
            *("--bind", f"127.0.0.1:{self.web_ports[index]}"),
            *("--workers", str(self.sizes.web_processes)),
            *("--threads", str(self.sizes.web_threads)),
            *("--name", name),
            "--graceful-timeout",
            "20",
            # gunicorn's control socket is one path per user by default: two groups on one
            # host (and any other gunicorn of the user) would take it from each other.
            *("--control-socket", str(self.run_dir / f"{name}.ctl")),
        ]
        return Process(name, command, env, self.run_dir / f"{name}.log")

    def web_start(self, index: int) -> None:
        web = self.webs[index]
        metrics = Path(web.env["PROMETHEUS_MULTIPROC_DIR"])
        for stale in metrics.glob("*.db"):
            stale.unlink()
        web.start()
        port = self.web_ports[index]
        _wait(lambda: _healthy(port) or not web.alive, timeout=60, what=web.name)
        if not web.alive:
            raise TopologyError(f"{web.name} exited; see {web.log}")

    def web_restart(self, index: int) -> None:
        """What a deploy does to one group: stop it gracefully (SIGTERM lets running requests
        finish), start it again on the same port."""
        self.webs[index].stop(signal.SIGTERM)
        self.web_start(index)

    def _worker(self, index: int) -> Process:
        name = f"worker-{'ab'[index] if index < 2 else index}"
        return Process(
            name,
            [sys.executable, "manage.py", "qcluster"],
            self.env(name=name),
            self.run_dir / f"{name}.log",
        )

    def worker_kill(self, index: int) -> None:
        """SIGKILL a whole cluster (main process and its workers): a host lost at once."""
        worker = self.workers[index]
        worker.signal_group(signal.SIGKILL)
        assert worker.popen is not None
        worker.popen.wait(timeout=10)

    def pgbouncer_show(self, what: str) -> list[dict[str, str]]:
        """PgBouncer's admin console: `SHOW what` (POOLS, CLIENTS, STATS...) as rows."""
        psql = shutil.which("psql") or "psql"
        result = subprocess.run(
            [psql, "-h", "127.0.0.1", "-p", str(self.bouncer_port), "-U", SUPERUSER]
            + ["-d", "pgbouncer", "--csv", "-c", f"SHOW {what}"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
        lines = result.stdout.splitlines()
        header = lines[0].split(",")
        return [dict(zip(header, line.split(","), strict=False)) for line in lines[1:]]

    def logs(self) -> dict[str, Path]:
        """Every log the topology writes, by name."""
        found = {path.stem: path for path in sorted(self.run_dir.glob("*.log"))}
        if self._cluster is not None:
            found["postgres"] = self._cluster.log_file
        return found


def _server_account() -> pwd.struct_passwd | None:
    return pwd.getpwnam(SUPERUSER) if os.geteuid() == 0 else None


def _as_server_user(command: list[str]) -> list[str]:
    """PgBouncer refuses to run as root: as root, run it as the `postgres` user."""
    binary = shutil.which(command[0]) or f"/usr/sbin/{command[0]}"
    if _server_account() is None:
        return [binary, *command[1:]]
    return ["setpriv", "--reuid", SUPERUSER, "--regid", SUPERUSER, "--clear-groups", binary] + (
        command[1:]
    )


def run_dir_default() -> Path:
    """A fresh directory the server user can enter (every parent traversable)."""
    path = Path(tempfile.mkdtemp(prefix="evoflow-topology-", dir="/var/tmp"))
    path.chmod(0o755)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.topology", description=__doc__)
    parser.add_argument("--dir", type=Path, help="where data and logs go (default: /var/tmp)")
    args = parser.parse_args(argv)
    graph_port, crm_port = free_port(), free_port()
    topology = Topology(
        run_dir=(args.dir.resolve() if args.dir else run_dir_default()),
        graph_url=f"http://127.0.0.1:{graph_port}/v21.0",
        crm_url=f"http://127.0.0.1:{crm_port}",
    )
    topology.run_dir.mkdir(parents=True, exist_ok=True)
    simulators = [
        Process(
            "graph",
            [sys.executable, "manage.py", "graph_simulator", "--port", str(graph_port)],
            topology.env(direct=True),
            topology.run_dir / "graph.log",
        ),
        Process(
            "crm",
            [sys.executable, "manage.py", "crm_simulator", "--port", str(crm_port)],
            topology.env(direct=True),
            topology.run_dir / "crm.log",
        ),
    ]
    stopping = False

    def stop_on(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop_on)
    signal.signal(signal.SIGINT, stop_on)
    try:
        for simulator in simulators:
            simulator.start()
        topology.start()
        print(
            "topology | up:\n"
            f"  postgres   {topology.direct_url}  (migrations, fsync and synchronous_commit on)\n"
            f"  pgbouncer  {topology.pooled_url}  (transaction pooling, pool of "
            f"{topology.sizes.pool_size} for up to {topology.sizes.client_connections} clients)\n"
            f"  redis      {topology.redis_url}\n"
            + "".join(
                f"  {web.name:<10} http://127.0.0.1:{port}/\n"
                for web, port in zip(topology.webs, topology.web_ports, strict=True)
            )
            + "".join(f"  {worker.name:<10} manage.py qcluster\n" for worker in topology.workers)
            + f"  graph      {topology.graph_url}\n  crm        {topology.crm_url}\n"
            f"  logs       {topology.run_dir}/*.log\n"
            "Ctrl-C stops everything.",
            flush=True,
        )
        while not stopping:
            dead = [p.name for p in [*topology.webs, *topology.workers] if not p.alive]
            if dead:
                print(f"topology | {', '.join(dead)} exited; stopping", file=sys.stderr)
                return 1
            time.sleep(0.5)
        return 0
    except TopologyError as exc:
        print(f"topology | {exc}", file=sys.stderr)
        return 1
    finally:
        topology.stop()
        for simulator in simulators:
            simulator.stop(signal.SIGTERM, timeout=10)


if __name__ == "__main__":
    sys.exit(main())
