"""The local development stack that `make run` starts: `python -m devtools.devstack`.

It migrates the database, then starts every long-running process in `service_processes` (the
simulators, the django-q2 worker and the web server) as its own child, each in its own process
group, waiting for each to be ready before starting the next. Then it loads the demo data with
`seed_demo` and prints where everything is and how to log in.

Every line a child prints is shown with the child's name in front. Ctrl-C (SIGINT), SIGTERM or
SIGHUP stops every process it started and exits 0: each process group gets its stop signal,
then SIGKILL after a grace period (a second Ctrl-C skips the wait). If a child dies on its
own, the others are stopped and the exit status is non-zero, naming the one that died.

The database is whatever the settings point at: `DATABASE_URL`, or the embedded cluster on
`EVOFLOW_PG_PORT`, which the Makefile starts beforehand. The web server listens on
127.0.0.1:`EVOFLOW_WEB_PORT` (default 8000), the CRM and Graph API simulators on
`EVOFLOW_CRM_PORT` (8011) and `EVOFLOW_GRAPH_PORT` (8012), and the children are told where the
simulators are (`CRM_BASE_URL`, `GRAPH_API_BASE_URL`), so two checkouts run side by side when
each has its own ports. Every child writes its Prometheus samples into one directory,
`.local/prometheus` (emptied at start; `PROMETHEUS_MULTIPROC_DIR` names another), so the web
server's /metrics shows the worker's syncs and integrity runs too.

This module does not import Django: the children do, each with the settings of its own
environment.

It stays one module past ~500 lines: process specifications, the supervisor and the banner
are read together when changing what `make run` starts, and it must stay importable with no
Django and no other module of the project.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MANAGE_PY = PROJECT_ROOT / "manage.py"
# The checkout's local settings file, which the settings read (real environment variables
# win); EVOFLOW_LOCAL_ENV names another one (the tests' throwaway stacks use that).
LOCAL_ENV_DEFAULT = PROJECT_ROOT / ".local" / "env"
LOCAL_ENV_NOTE = "# Written by make run: where its simulators listen (see README, Settings)."
HOST = "127.0.0.1"
DEFAULT_WEB_PORT = 8000
# The settings' local defaults for CRM_BASE_URL and GRAPH_API_BASE_URL point at these.
DEFAULT_CRM_PORT = 8011
DEFAULT_GRAPH_PORT = 8012

# Printed once everything is up; tests and scripts wait for this text.
READY_MARKER = "evoflow is running"
# How long stopped children get to exit before they are killed.
STOP_GRACE_SECONDS = 10.0
POLL_SECONDS = 0.1

EXIT_STOPPED = 0
EXIT_CHILD_FAILED = 1
EXIT_CANNOT_START = 2


@dataclass(frozen=True)
class ProcessSpec:
    """One child process: its name (the prefix of its output), what to run, and readiness.

    With `ready_url`, the process counts as ready once that URL answers 200; the URL's port
    must be free before anything starts, so that another program answering on it is never
    mistaken for this one. `stop_signal` goes to the whole process group when the stack stops.
    """

    name: str
    argv: tuple[str, ...]
    ready_url: str | None = None
    ready_timeout: float = 60.0
    stop_signal: signal.Signals = signal.SIGTERM


@dataclass(frozen=True)
class DevstackConfig:
    """What differs between two stacks on one machine: the ports of the web server and of the
    simulators (each from its environment variable)."""

    web_port: int = DEFAULT_WEB_PORT
    crm_port: int = DEFAULT_CRM_PORT
    graph_port: int = DEFAULT_GRAPH_PORT

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.web_port}"

    @property
    def crm_base_url(self) -> str:
        return f"http://{HOST}:{self.crm_port}"

    @property
    def graph_base_url(self) -> str:
        return f"http://{HOST}:{self.graph_port}"

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> DevstackConfig:
        environ = os.environ if environ is None else environ
        return cls(
            web_port=_port_from(environ, "EVOFLOW_WEB_PORT", DEFAULT_WEB_PORT),
            crm_port=_port_from(environ, "EVOFLOW_CRM_PORT", DEFAULT_CRM_PORT),
            graph_port=_port_from(environ, "EVOFLOW_GRAPH_PORT", DEFAULT_GRAPH_PORT),
        )

    def service_environment(self) -> dict[str, str]:
        """Where the children find the simulators this stack starts."""
        return {
            "CRM_BASE_URL": self.crm_base_url,
            "GRAPH_API_BASE_URL": f"{self.graph_base_url}/v21.0",
        }


def _port_from(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "").strip() or str(default)
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise CannotStart(f"{name} must be a port number, got {raw!r}")
    return int(raw)


def manage_command(*args: str) -> tuple[str, ...]:
    return (sys.executable, str(MANAGE_PY), *args)


MIGRATE = ProcessSpec(name="migrate", argv=manage_command("migrate", "--no-input"))
# Run after the services are up, so that demo data can come from the simulators and any task
# it enqueues is picked up at once. `--json` lets the banner show the credentials.
SEED = ProcessSpec(name="seed", argv=manage_command("seed_demo", "--json"))


def service_processes(config: DevstackConfig) -> list[ProcessSpec]:
    """The long-running processes, started in this order, each ready before the next starts.

    A new process (a simulator, say) is one more entry here; put it before what depends on it.
    """
    return [
        # The Graph API simulator (GRAPH_API_BASE_URL's local default); new messages added
        # through its control API reach the local webhook as signed POSTs.
        ProcessSpec(
            name="graph",
            argv=manage_command(
                "graph_simulator",
                "--port",
                str(config.graph_port),
                "--conversations",
                "40",
                "--messages",
                "400",
                "--seed",
                "1",
                "--webhook-target",
                f"{config.base_url}/webhooks/messenger/",
            ),
            ready_url=f"{config.graph_base_url}/_control/state",
        ),
        # The CRM simulator (CRM_BASE_URL's local default): journeys' contacts and messages.
        ProcessSpec(
            name="crm",
            argv=manage_command("crm_simulator", "--port", str(config.crm_port), "--seed", "1"),
            ready_url=f"{config.crm_base_url}/_control/faults",
        ),
        ProcessSpec(
            name="worker",
            argv=manage_command("qcluster"),
            # django-q2's sentinel ignores SIGINT and dies at once on SIGTERM, so a SIGTERM to
            # the whole group kills the sentinel under the cluster's feet and the cluster then
            # hangs; SIGINT to the group (what Ctrl-C in a terminal does) stops it cleanly.
            stop_signal=signal.SIGINT,
        ),
        ProcessSpec(
            name="web",
            # No autoreloader: it would run the server as a grandchild, and reload the web
            # server but not the worker after an edit. Restart `make run` after changing code.
            argv=manage_command("runserver", f"{HOST}:{config.web_port}", "--noreload"),
            ready_url=f"{config.base_url}/healthz",
        ),
    ]


def local_env_path(environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    return Path(environ.get("EVOFLOW_LOCAL_ENV", "").strip() or LOCAL_ENV_DEFAULT)


def local_env_update(path: Path, values: Mapping[str, str]) -> None:
    """Set `values` in the KEY=VALUE file at `path`, keeping its other lines.

    So that a management command run in this checkout while the stack runs (`sync_page`,
    `integrity --fix`) reaches the simulators this stack started, not the default ports.
    """
    lines = path.read_text().splitlines() if path.is_file() else []
    kept = [
        line
        for line in lines
        if line.strip() != LOCAL_ENV_NOTE and line.partition("=")[0].strip() not in values
    ]
    added = [LOCAL_ENV_NOTE, *(f"{name}={value}" for name, value in values.items())]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([*kept, *added]) + "\n")


def child_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment every child gets: this process's, made fit for local runs."""
    env = dict(os.environ if base is None else base)
    # Local mode unless told otherwise, as in the Makefile: settings refuse to start without
    # production secrets when DEBUG is off.
    env.setdefault("DEBUG", "1")
    # Children write into pipes; without this their lines would arrive in late bursts.
    env["PYTHONUNBUFFERED"] = "1"
    return env


# Where every child of the stack writes its Prometheus samples, so that the web server's
# /metrics adds up the worker's too (prometheus-client's multiprocess mode; evoflow/metrics.py).
METRICS_DIR = PROJECT_ROOT / ".local" / "prometheus"


def metrics_directory_prepare(env: dict[str, str], directory: Path = METRICS_DIR) -> Path:
    """Point every child at one multiprocess metrics directory, emptied first (samples of an
    earlier run's processes would be added to this run's). A directory the environment names
    already (PROMETHEUS_MULTIPROC_DIR) is used as it is: it is someone else's to empty."""
    named = env.get("PROMETHEUS_MULTIPROC_DIR")
    if named:
        return Path(named)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
    env["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    return directory


# -- errors that end the run ------------------------------------------------------------------


class CannotStart(Exception):
    """The stack cannot start here (a port is taken, a setting is malformed)."""


class ChildFailed(Exception):
    """A child exited on its own: a setup step with an error, or a service at any time."""

    def __init__(self, name: str, returncode: int, *, is_service: bool) -> None:
        how = "exited unexpectedly" if is_service else "failed"
        super().__init__(f"{name} {how} with {_describe_returncode(returncode)}")
        self.name = name
        self.returncode = returncode


class StopRequested(Exception):
    """Ctrl-C, SIGTERM or SIGHUP arrived."""


def _describe_returncode(returncode: int) -> str:
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-returncode).name}"
    return f"exit code {returncode}"


# -- output -----------------------------------------------------------------------------------


class Console:
    """Writes whole lines from several threads without interleaving them."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self.prefix_width = 8

    def line(self, name: str, text: str) -> None:
        self.write(f"{name:>{self.prefix_width}} | {text}")

    def write(self, text: str) -> None:
        with self._lock:
            try:
                self._stream.write(text if text.endswith("\n") else text + "\n")
                self._stream.flush()
            except (BrokenPipeError, ValueError):
                # Nobody reads our output any more; keep supervising regardless.
                pass


# -- children ---------------------------------------------------------------------------------


def _parent_death_signal_setter() -> Callable[[], None] | None:
    """A function the child runs before exec so that it gets SIGTERM if this process dies.

    Ctrl-C and SIGTERM are handled here, but SIGKILL cannot be: without this, a killed
    supervisor would leave its worker and web server running. Linux only; elsewhere None.
    """
    if not sys.platform.startswith("linux"):
        return None
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return None
    # Resolved now, in the parent: between fork and exec only already-loaded code is safe.
    prctl = ctypes.CDLL(libc_name, use_errno=True).prctl
    pr_set_pdeathsig = 1
    supervisor_pid = os.getpid()

    def set_parent_death_signal() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != supervisor_pid:  # the supervisor died before prctl took effect
            os._exit(1)

    return set_parent_death_signal


def live_group_members(pgid: int) -> list[int]:
    """Pids in the process group that still run (zombies waiting to be reaped do not count).

    Orphaned zombies can linger where the init process does not reap them, and `killpg(pgid,
    0)` would count them; /proc tells them apart.
    """
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        except PermissionError:
            pass
        return [pgid]
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        # "pid (command) state ppid pgrp ...": the command may contain spaces and parentheses.
        fields = stat.rpartition(")")[2].split()
        if len(fields) >= 3 and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


@dataclass
class Child:
    """A started child process, in a process group of its own, with its output pumped."""

    spec: ProcessSpec
    process: subprocess.Popen[bytes]
    threads: list[threading.Thread] = field(default_factory=list)
    captured_stdout: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    def poll(self) -> int | None:
        return self.process.poll()

    def signal_group(self, signum: signal.Signals) -> None:
        # The child is its group's leader, so the group id is its pid; the group outlives the
        # leader while any of its own children still run.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)

    def is_group_alive(self) -> bool:
        self.poll()  # reap the leader, or it would count as alive
        return bool(live_group_members(self.pid))


class Supervisor:
    """Starts children, watches them, and stops every one of them at the end."""

    def __init__(self, *, console: Console, env: dict[str, str]) -> None:
        self.console = console
        self.env = env
        self.children: list[Child] = []
        self.services: list[Child] = []
        self._stop_requested = threading.Event()
        self._kill_now = threading.Event()
        self._stopping = False
        self._preexec = _parent_death_signal_setter()

    # -- signals ----------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        if self._stopping or self._stop_requested.is_set():
            # A second Ctrl-C: the user does not want to wait for the grace period.
            self._kill_now.set()
        self._stop_requested.set()

    def _raise_if_stop_requested(self) -> None:
        if self._stop_requested.is_set():
            raise StopRequested

    # -- starting ---------------------------------------------------------------------------

    def start(self, spec: ProcessSpec, *, capture_stdout: bool = False) -> Child:
        self._raise_if_stop_requested()
        process = subprocess.Popen(
            spec.argv,
            cwd=PROJECT_ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if capture_stdout else subprocess.STDOUT,
            # Its own group: Ctrl-C in the terminal reaches only this supervisor, which then
            # stops each child in order, and a signal to the group reaches the grandchildren.
            process_group=0,
            preexec_fn=self._preexec,
        )
        child = Child(spec=spec, process=process)
        self.children.append(child)
        self.console.line("devstack", f"started {spec.name} (pid {process.pid})")
        assert process.stdout is not None
        if capture_stdout:
            assert process.stderr is not None
            child.threads.append(self._pump(spec.name, process.stderr))
            child.threads.append(self._collect(process.stdout, child.captured_stdout))
        else:
            child.threads.append(self._pump(spec.name, process.stdout))
        return child

    def _pump(self, name: str, stream: IO[bytes]) -> threading.Thread:
        def pump() -> None:
            for raw in iter(stream.readline, b""):
                self.console.line(name, raw.decode("utf-8", errors="replace").rstrip("\r\n"))
            stream.close()

        thread = threading.Thread(target=pump, name=f"output-{name}", daemon=True)
        thread.start()
        return thread

    @staticmethod
    def _collect(stream: IO[bytes], lines: list[str]) -> threading.Thread:
        def collect() -> None:
            lines.extend(raw.decode("utf-8", errors="replace") for raw in stream)
            stream.close()

        thread = threading.Thread(target=collect, name="output-capture", daemon=True)
        thread.start()
        return thread

    def run_step(self, spec: ProcessSpec, *, capture_stdout: bool = False) -> Child:
        """Run a one-off command to completion; ChildFailed unless it exits 0."""
        child = self.start(spec, capture_stdout=capture_stdout)
        while (returncode := child.poll()) is None:
            self._raise_if_stop_requested()
            time.sleep(POLL_SECONDS)
        for thread in child.threads:
            thread.join(timeout=5)
        if returncode != 0:
            raise ChildFailed(spec.name, returncode, is_service=False)
        return child

    def start_service(self, spec: ProcessSpec) -> Child:
        """Start a long-running process and wait until it is ready."""
        child = self.start(spec)
        self.services.append(child)
        if spec.ready_url is not None:
            self._wait_until_ready(child, spec.ready_url, spec.ready_timeout)
            self.console.line("devstack", f"{spec.name} is ready ({spec.ready_url} answers)")
        return child

    def _wait_until_ready(self, child: Child, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not _answers_ok(url):
            self._raise_if_stop_requested()
            self._raise_if_a_service_died()
            if time.monotonic() > deadline:
                raise CannotStart(f"{child.spec.name} did not answer {url} within {timeout:.0f} s")
            time.sleep(POLL_SECONDS)

    # -- running ----------------------------------------------------------------------------

    def _raise_if_a_service_died(self) -> None:
        for child in self.services:
            returncode = child.poll()
            if returncode is not None:
                raise ChildFailed(child.spec.name, returncode, is_service=True)

    def watch(self) -> None:
        """Block until a stop is requested (StopRequested) or a service dies (ChildFailed)."""
        while True:
            self._raise_if_a_service_died()
            if self._stop_requested.wait(POLL_SECONDS):
                raise StopRequested

    # -- stopping ---------------------------------------------------------------------------

    def stop_all(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Stop every child, newest first; kill whatever is left after the grace period."""
        self._stopping = True
        running = [child for child in reversed(self.children) if child.is_group_alive()]
        for child in running:
            self.console.line("devstack", f"stopping {child.spec.name}")
            child.signal_group(child.spec.stop_signal)
        deadline = time.monotonic() + grace
        while running and time.monotonic() < deadline and not self._kill_now.is_set():
            running = [child for child in running if child.is_group_alive()]
            time.sleep(POLL_SECONDS)
        for child in running:
            if child.is_group_alive():
                self.console.line("devstack", f"{child.spec.name} did not stop; killing it")
                child.signal_group(signal.SIGKILL)
        for child in self.children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(timeout=5)
            for thread in child.threads:
                thread.join(timeout=1)


def _answers_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def ensure_ports_free(specs: Sequence[ProcessSpec]) -> None:
    """CannotStart when something already listens where a process will answer readiness."""
    for spec in specs:
        if spec.ready_url is None:
            continue
        parts = urlsplit(spec.ready_url)
        host, port = parts.hostname or HOST, parts.port or 80
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # As the servers themselves do, so a port in TIME_WAIT counts as free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise CannotStart(
                    f"{host}:{port} is already in use ({exc.strerror}), so {spec.name} cannot "
                    "listen there; stop what runs there or choose another port "
                    "(EVOFLOW_WEB_PORT, EVOFLOW_CRM_PORT, EVOFLOW_GRAPH_PORT)"
                ) from None


# -- the banner -------------------------------------------------------------------------------


def banner(config: DevstackConfig, seed_document: dict[str, Any]) -> str:
    base = config.base_url
    rows = [
        ("site", f"{base}/"),
        ("admin", f"{base}/admin/"),
        ("API root", f"{base}/api/"),
        ("API docs", f"{base}/api/docs/"),
        ("API schema", f"{base}/api/schema/"),
        ("health", f"{base}/healthz"),
    ]
    accounts = seed_document.get("accounts", [])
    name_width = max((len(account["username"]) for account in accounts), default=0)
    for account in accounts:
        password = account.get("password") or "(the value of EVOFLOW_DEMO_PASSWORD)"
        rows.append(
            (
                account["role"],
                f"username {account['username']:<{name_width}}  password {password}",
            )
        )
    width = max(len(label) for label, _ in rows)
    rule = "=" * 72
    lines = [rule, f"{READY_MARKER}. Ctrl-C stops everything.", ""]
    lines += [f"  {label:<{width}}  {value}" for label, value in rows]
    lines.append(rule)
    return "\n".join(lines)


def parse_seed_output(lines: Sequence[str]) -> dict[str, Any]:
    """The JSON document `seed_demo --json` printed (its last non-empty line)."""
    for line in reversed(lines):
        if line.strip():
            try:
                document = json.loads(line)
            except ValueError:
                break
            if isinstance(document, dict):
                return document
            break
    return {}


# -- main -------------------------------------------------------------------------------------


def run(config: DevstackConfig, console: Console) -> int:
    """Start the stack and supervise it until it is stopped; returns the exit status."""
    env = {**child_environment(), **config.service_environment()}
    metrics_directory_prepare(env)
    supervisor = Supervisor(console=console, env=env)
    supervisor.install_signal_handlers()
    services = service_processes(config)
    console.prefix_width = max(len(name) for name in ["devstack", *(s.name for s in services)])
    try:
        try:
            ensure_ports_free(services)
            local_env_update(local_env_path(env), config.service_environment())
            supervisor.run_step(MIGRATE)
            for spec in services:
                supervisor.start_service(spec)
            seeded = supervisor.run_step(SEED, capture_stdout=True)
            document = parse_seed_output(seeded.captured_stdout)
            for line in document.get("summary", []):
                console.line(SEED.name, line)
            console.write(banner(config, document))
            supervisor.watch()
        except StopRequested:
            console.line("devstack", "stopping everything")
            exit_status = EXIT_STOPPED
        except ChildFailed as exc:
            console.line("devstack", f"{exc}; stopping the others")
            exit_status = EXIT_CHILD_FAILED
        except CannotStart as exc:
            console.line("devstack", f"cannot start: {exc}")
            exit_status = EXIT_CANNOT_START
    finally:
        # Also on an unexpected error in this module: no child may outlive the supervisor.
        supervisor.stop_all()
    if supervisor.children:
        console.line("devstack", "every process it started has stopped")
    return exit_status


def main() -> int:
    console = Console(sys.stdout)
    try:
        config = DevstackConfig.from_environment()
    except CannotStart as exc:
        console.line("devstack", f"cannot start: {exc}")
        return EXIT_CANNOT_START
    return run(config, console)


if __name__ == "__main__":
    sys.exit(main())
