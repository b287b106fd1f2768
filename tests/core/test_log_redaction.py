"""The webhook's verify token never reaches a log line: Meta sends it in the query string of
its verification request, which gunicorn's access log and Django's development server print."""

from __future__ import annotations

import http.client
import secrets
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.helpers import PROJECT_ROOT, free_port, process_group_stop, wait_for

pytestmark = pytest.mark.slow


def _get(port: int, path: str) -> int | None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    except OSError:
        return None
    finally:
        connection.close()


def _verification_paths(token: str) -> list[str]:
    return [
        # Meta's verification, with the right token
        f"/webhooks/messenger/?hub.mode=subscribe&hub.challenge=42&hub.verify_token={token}",
        # the token percent-encoded, and as the value of a wrong guess
        f"/webhooks/messenger/?hub.mode=subscribe&hub%2Everify_token={quote(token)}x",
    ]


def _serve_and_ask(command: list[str], env: dict[str, str], tmp_path: Path, token: str) -> str:
    """Start a web server, ask it the verification paths, stop it; everything it logged."""
    port = free_port()
    log = tmp_path / "server.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [part.format(port=port) for part in command],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            assert wait_for(lambda: _get(port, "/healthz") == 200, timeout=60, interval=0.2), (
                log.read_text()
            )
            paths = _verification_paths(token)
            statuses = [_get(port, path) for path in paths]
            # A server writes a request's log line once the response is sent, possibly after the
            # client has read it: wait for every line before stopping the server.
            wait_for(
                lambda: log.read_text().count("/webhooks/messenger/") >= len(paths),
                timeout=10,
                interval=0.05,
            )
        finally:
            process_group_stop(process, signal.SIGTERM, timeout=20)
    assert statuses == [200, 403]
    return log.read_text()


@pytest.fixture
def token_env(subprocess_env: dict[str, str]) -> tuple[dict[str, str], str]:
    token = "vt-" + secrets.token_hex(16)
    return {**subprocess_env, "FB_VERIFY_TOKEN": token, "LOG_LEVEL": "INFO"}, token


def test_gunicorns_access_log_shows_no_verify_token(token_env, tmp_path):
    env, token = token_env
    command = [
        *(sys.executable, "-m", "gunicorn", "evoflow.wsgi:application"),
        *("--config", "gunicorn.conf.py", "--bind", "127.0.0.1:{port}", "--workers", "1"),
        *("--access-logfile", "-"),
    ]

    logged = _serve_and_ask(command, env, tmp_path, token)

    assert "GET /webhooks/messenger/?hub.mode=subscribe" in logged  # the access lines are there
    assert token not in logged
    assert "hub.verify_token=[redacted]" in logged
    assert "hub%2Everify_token=[redacted]" in logged


def test_djangos_request_log_shows_no_verify_token(token_env, tmp_path):
    env, token = token_env
    command = [
        *(sys.executable, "manage.py", "runserver", "--noreload", "127.0.0.1:{port}"),
    ]

    logged = _serve_and_ask(command, env, tmp_path, token)

    assert "GET /webhooks/messenger/?hub.mode=subscribe" in logged
    assert token not in logged
    assert "hub.verify_token=[redacted]" in logged
