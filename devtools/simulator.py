"""Plumbing shared by the HTTP simulators of outside services (the Graph API, the CRM).

A simulator is a `Simulator` subclass that registers routes; this module gives it a threaded
HTTP server, JSON requests and responses, per-endpoint call counters (with idempotency keys and
timestamps, which tests read), fault settings, and a small control API under `/_control/`:

- `GET /_control/counters`: calls per endpoint, per idempotency key, and their times;
- `POST /_control/reset`: forget the counters;
- `GET|POST /_control/faults`: read or change the fault settings while running.

A subclass adds its own control routes the same way it adds its service routes. Simulators are
for demos, tests and benchmarks; production talks to the real services.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

CONTROL_PREFIX = "/_control/"


class SimulatorError(Exception):
    """Raised by a handler to answer with an error status and a JSON body."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(status, body)
        self.status = status
        self.body = body


@dataclass
class SimRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    body: bytes
    params: dict[str, str] = field(default_factory=dict)  # the route's named groups

    def json(self) -> Any:
        if not self.body:
            return None
        try:
            return json.loads(self.body)
        except ValueError as error:
            raise SimulatorError(400, {"error": f"body is not JSON: {error}"}) from error

    @property
    def idempotency_key(self) -> str | None:
        return self.headers.get("idempotency-key")


@dataclass
class SimResponse:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    # Bytes sent as they are, for malformed or drifted payloads; `body` is ignored then.
    raw: bytes | None = None

    def encode(self) -> bytes:
        if self.raw is not None:
            return self.raw
        # Compact: a quarter faster to encode than the default separators, on large pages.
        return json.dumps(self.body, separators=(",", ":")).encode()


Handler = Callable[[SimRequest], SimResponse]


@dataclass
class Faults:
    """What goes wrong, and how often. Changed at run time through the control API."""

    fault_rate: float = 0.0  # share of service calls answered with a server error
    slow_ms: int = 0  # delay added to every service call
    malformed_rate: float = 0.0  # share of successful answers sent as broken JSON
    seed: int = 0

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)
        self._lock = threading.Lock()

    def roll(self, rate: float) -> bool:
        if rate <= 0:
            return False
        with self._lock:
            return self._random.random() < rate

    def update(self, values: dict[str, Any]) -> None:
        for name in ("fault_rate", "malformed_rate"):
            if name in values:
                setattr(self, name, _rate(values[name], name))
        if "slow_ms" in values:
            slow_ms = values["slow_ms"]
            if not isinstance(slow_ms, int) or slow_ms < 0:
                raise SimulatorError(400, {"error": "slow_ms must be a non-negative integer"})
            self.slow_ms = slow_ms

    def as_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if key != "seed"}


def _rate(value: Any, name: str) -> float:
    if not isinstance(value, int | float) or not 0 <= value <= 1:
        raise SimulatorError(400, {"error": f"{name} must be a number between 0 and 1"})
    return float(value)


class CallCounter:
    """Calls received per endpoint, per idempotency key, with their times. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._calls: Counter[str] = Counter()
            self._keys: defaultdict[str, Counter[str]] = defaultdict(Counter)
            self._times: defaultdict[str, list[float]] = defaultdict(list)

    def record(self, endpoint: str, idempotency_key: str | None = None) -> None:
        with self._lock:
            self._calls[endpoint] += 1
            self._times[endpoint].append(time.time())
            if idempotency_key:
                self._keys[endpoint][idempotency_key] += 1

    def calls(self, endpoint: str) -> int:
        with self._lock:
            return self._calls[endpoint]

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "calls": dict(self._calls),
                "idempotency_keys": {name: dict(keys) for name, keys in self._keys.items()},
                "timestamps": {name: list(times) for name, times in self._times.items()},
            }


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    endpoint: str
    handler: Handler
    is_control: bool


class Simulator:
    """Routes requests to handlers, counts them and applies the fault settings."""

    def __init__(self, *, faults: Faults | None = None) -> None:
        self.faults = faults or Faults()
        self.counters = CallCounter()
        self.lock = threading.RLock()  # for subclasses' state
        self._routes: list[Route] = []
        self.add_route("GET", r"/_control/counters", "control.counters", self._counters)
        self.add_route("POST", r"/_control/reset", "control.reset", self._reset)
        self.add_route("GET", r"/_control/faults", "control.faults", self._faults_read)
        self.add_route("POST", r"/_control/faults", "control.faults", self._faults_update)

    def add_route(self, method: str, pattern: str, endpoint: str, handler: Handler) -> None:
        """`pattern` is a regular expression over the whole path, with named groups."""
        self._routes.append(
            Route(
                method=method,
                pattern=re.compile(pattern),
                endpoint=endpoint,
                handler=handler,
                is_control=pattern.startswith(CONTROL_PREFIX),
            )
        )

    # -- hooks a subclass may override -------------------------------------------------------

    def fault_response(self, request: SimRequest) -> SimResponse:
        """The answer to a call picked for a fault; a service's own error shape goes here."""
        return SimResponse(500, {"error": "injected fault"})

    def call_received(self, route: Route, request: SimRequest) -> None:
        """Called for every service call as it arrives, before faults; for finer counters."""

    def malformed_response(self, response: SimResponse) -> SimResponse:
        encoded = response.encode()
        return SimResponse(response.status, raw=encoded[: max(1, len(encoded) // 2)])

    # -- dispatch ------------------------------------------------------------------------------

    def dispatch(self, request: SimRequest) -> SimResponse:
        path_matched = False
        for route in self._routes:
            match = route.pattern.fullmatch(request.path)
            if match is None:
                continue
            path_matched = True
            if route.method != request.method:
                continue
            request.params = match.groupdict()
            if route.is_control:
                return self._call(route.handler, request)
            self.counters.record(route.endpoint, request.idempotency_key)
            self.call_received(route, request)
            return self._serve(route, request)
        if path_matched:
            return SimResponse(405, {"error": "method not allowed"})
        return SimResponse(404, {"error": f"no route for {request.path}"})

    def _serve(self, route: Route, request: SimRequest) -> SimResponse:
        if self.faults.slow_ms:
            time.sleep(self.faults.slow_ms / 1000)
        if self.faults.roll(self.faults.fault_rate):
            return self.fault_response(request)
        response = self._call(route.handler, request)
        if response.status < 400 and self.faults.roll(self.faults.malformed_rate):
            return self.malformed_response(response)
        return response

    @staticmethod
    def _call(handler: Handler, request: SimRequest) -> SimResponse:
        try:
            return handler(request)
        except SimulatorError as error:
            return SimResponse(error.status, error.body)

    # -- control routes ------------------------------------------------------------------------

    def _counters(self, request: SimRequest) -> SimResponse:
        return SimResponse(200, self.counters.snapshot())

    def _reset(self, request: SimRequest) -> SimResponse:
        self.counters.reset()
        return SimResponse(200, {"reset": True})

    def _faults_read(self, request: SimRequest) -> SimResponse:
        return SimResponse(200, self.faults.as_dict())

    def _faults_update(self, request: SimRequest) -> SimResponse:
        values = request.json()
        if not isinstance(values, dict):
            raise SimulatorError(400, {"error": "expected a JSON object"})
        self.faults.update(values)
        return SimResponse(200, self.faults.as_dict())

    # -- serving -------------------------------------------------------------------------------

    def make_server(self, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
        server = ThreadingHTTPServer((host, port), _handler_class(self))
        server.daemon_threads = True
        return server

    @contextmanager
    def running(self, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
        """Serve in a background thread for the block; yields the base URL."""
        server = self.make_server(host, port)
        thread = threading.Thread(target=server.serve_forever, name="simulator", daemon=True)
        thread.start()
        try:
            yield f"http://{host}:{server.server_address[1]}"
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)


def _handler_class(simulator: Simulator) -> type[BaseHTTPRequestHandler]:
    class SimulatorRequestHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as clients with a pooled session expect
        # Headers and body leave in two writes; with Nagle's algorithm the second waits for the
        # client's delayed ACK of the first, about 40 ms per call on a kept-alive connection.
        disable_nagle_algorithm = True

        def _handle(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            request = SimRequest(
                method=self.command,
                path=parts.path,
                query=dict(parse_qsl(parts.query, keep_blank_values=True)),
                headers={name.lower(): value for name, value in self.headers.items()},
                body=self.rfile.read(length) if length else b"",
            )
            response = simulator.dispatch(request)
            payload = response.encode()
            self.send_response(response.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle

        def log_message(self, format: str, *args: Any) -> None:
            # Quiet by default: a benchmark makes thousands of calls. Commands log a summary.
            return

    return SimulatorRequestHandler


def rate_argument(value: str) -> float:
    """An argparse type: a share between 0 and 1."""
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0 <= number <= 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number between 0 and 1")
    return number


def add_simulator_arguments(parser: argparse.ArgumentParser, *, default_port: int) -> None:
    """The options every simulator command has: where it listens, its seed, its faults."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=default_port)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fault-rate", type=rate_argument, default=0.0, help="share of 5xx")
    parser.add_argument("--slow-ms", type=int, default=0, help="delay added to every call")
    parser.add_argument("--malformed-rate", type=rate_argument, default=0.0)


def faults_from_options(options: dict[str, Any]) -> Faults:
    return Faults(
        fault_rate=options["fault_rate"],
        slow_ms=options["slow_ms"],
        malformed_rate=options["malformed_rate"],
        seed=options["seed"],
    )


def serve_until_interrupted(
    simulator: Simulator, *, host: str, port: int, announce: Callable[[str], None]
) -> None:
    """What a `manage.py <name>_simulator` command does: serve in the foreground until Ctrl-C."""
    server = simulator.make_server(host, port)
    announce(f"listening on http://{host}:{server.server_address[1]}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
