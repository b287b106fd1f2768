"""The shared outgoing HTTP client, against a real local HTTP server."""

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from evoflow.http import HttpClient, RetryPolicy, UpstreamUnavailable, redact_url
from evoflow.requestid import bound_request_id


class ScriptedServer:
    """Answers each request with the next scripted (status, headers, body, delay) and records it."""

    def __init__(self) -> None:
        self.script: list[tuple[int, dict[str, str], dict, float]] = []
        self.received: list[dict] = []
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                self._answer()

            def do_POST(self) -> None:  # noqa: N802
                self._answer()

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                server.received.append(
                    {"path": self.path, "headers": dict(self.headers), "body": body}
                )
                status, headers, payload, delay = (
                    server.script.pop(0) if server.script else (200, {}, {"ok": True}, 0.0)
                )
                if delay:
                    server.release.wait(delay)
                data = json.dumps(payload).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "ScriptedServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as running:
        yield running


@pytest.fixture
def sleeps() -> list[float]:
    return []


def make_client(server: ScriptedServer, sleeps: list[float], **kwargs) -> HttpClient:
    return HttpClient(
        server.url,
        sleep=sleeps.append,
        retry=kwargs.pop("retry", RetryPolicy(max_attempts=4, backoff_base=0.1, backoff_max=1)),
        **kwargs,
    )


def test_5xx_is_retried_with_growing_jittered_backoff_until_success(server, sleeps):
    server.script = [(503, {}, {}, 0), (502, {}, {}, 0), (200, {}, {"id": 1}, 0)]

    response = make_client(server, sleeps).request("GET", "/things/1")

    assert response.status_code == 200
    assert response.json() == {"id": 1}
    assert len(server.received) == 3
    assert len(sleeps) == 2
    assert 0 <= sleeps[0] <= 0.1
    assert 0 <= sleeps[1] <= 0.2


def test_429_waits_as_retry_after_says(server, sleeps):
    server.script = [(429, {"Retry-After": "7"}, {}, 0), (200, {}, {}, 0)]

    response = make_client(server, sleeps).request("GET", "/limited")

    assert response.status_code == 200
    assert sleeps == [7.0]


def test_other_4xx_is_returned_without_retry(server, sleeps):
    server.script = [(404, {}, {"error": "missing"}, 0)]

    response = make_client(server, sleeps).request("GET", "/contacts/x")

    assert response.status_code == 404
    assert len(server.received) == 1
    assert sleeps == []


def test_persistent_failure_raises_after_the_last_attempt(server, sleeps):
    server.script = [(500, {}, {}, 0)] * 3
    client = make_client(server, sleeps, retry=RetryPolicy(max_attempts=3, backoff_base=0.01))

    with pytest.raises(UpstreamUnavailable) as error:
        client.request("GET", "/down")

    assert len(server.received) == 3
    assert len(sleeps) == 2
    assert "after 3 attempts (HTTP 500)" in str(error.value)
    assert error.value.response is not None
    assert error.value.response.status_code == 500


def test_a_read_timeout_is_retried(server, sleeps):
    server.script = [(200, {}, {}, 2.0), (200, {}, {"late": False}, 0)]
    client = make_client(server, sleeps, timeout=(1.0, 0.3))

    response = client.request("GET", "/slow")

    assert response.json() == {"late": False}
    assert len(sleeps) == 1


def test_request_id_idempotency_key_and_service_headers_are_sent(server, sleeps):
    client = make_client(server, sleeps, headers={"Authorization": "Bearer service-token"})

    with bound_request_id("req-http-1"):
        client.request("POST", "/messages", json={"text": "hi"}, idempotency_key="session-1:4")

    headers = server.received[0]["headers"]
    assert headers["X-Request-ID"] == "req-http-1"
    assert headers["Idempotency-Key"] == "session-1:4"
    assert headers["Authorization"] == "Bearer service-token"
    assert json.loads(server.received[0]["body"]) == {"text": "hi"}


def test_tokens_never_reach_the_logs(server, sleeps, caplog):
    client = make_client(server, sleeps, headers={"Authorization": "Bearer service-token"})

    with caplog.at_level(logging.INFO, logger="evoflow.http"):
        client.request("GET", "/me", params={"access_token": "EAAB-secret", "fields": "id"})

    assert "EAAB-secret" not in caplog.text
    assert "service-token" not in caplog.text
    assert "access_token=***" in caplog.text
    assert server.received[0]["path"] == "/me?access_token=EAAB-secret&fields=id"


def test_redact_url_keeps_other_parameters():
    assert (
        redact_url("https://graph.example/v1/me?fields=id,name&access_token=abc&after=QVF")
        == "https://graph.example/v1/me?fields=id%2Cname&access_token=***&after=QVF"
    )
