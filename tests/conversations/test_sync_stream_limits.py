"""Progress streams cannot starve a web process: a bounded number per process, 429 beyond it,
and under the documented gunicorn setup `/healthz` answers while streams are open."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pytest
from django.contrib.auth.models import Permission
from django.core.signals import request_finished
from django.db import close_old_connections
from django.http import HttpResponseBase
from rest_framework.authtoken.models import Token

from conversations import streams
from conversations.models import SyncRun, SyncStatus
from conversations.services.pages import page_upsert
from conversations.services.sync import sync_request
from tests.conversations.conftest import PAGE_ID
from tests.core.factories import UserFactory
from tests.helpers import PROJECT_ROOT, free_port, process_group_stop, wait_for


def _syncer_token() -> str:
    user = UserFactory()
    user.user_permissions.add(Permission.objects.get(codename="add_syncrun"))
    return Token.objects.create(user=user).key


def _close(response: HttpResponseBase) -> None:
    """Close a response as the WSGI server does, keeping the test's database connection (as
    Django's test client does around its own closing)."""
    request_finished.disconnect(close_old_connections)
    try:
        response.close()
    finally:
        request_finished.connect(close_old_connections)


def _running_run() -> SyncRun:
    page = page_upsert(page_id=PAGE_ID, name="MyShop", access_token="EAAB-secret")
    run, _ = sync_request(page=page, mode="full", enqueue=False)
    SyncRun.objects.filter(pk=run.pk).update(status=SyncStatus.RUNNING)
    return run


@pytest.fixture
def no_open_streams() -> Iterator[None]:
    assert streams.STREAM_SLOTS.open == 0
    yield
    assert streams.STREAM_SLOTS.open == 0


@pytest.mark.django_db
def test_a_stream_beyond_the_cap_is_refused_with_429_retry_after_and_error_json(
    api_client, settings, no_open_streams
):
    # Given a process whose only stream slot is taken
    settings.SSE_MAX_STREAMS_PER_PROCESS = 1
    run = _running_run()
    api_client.credentials(HTTP_AUTHORIZATION=f"Token {_syncer_token()}")
    assert streams.STREAM_SLOTS.try_acquire()
    try:
        # When another stream is asked for
        response = api_client.get(
            f"/api/v1/sync-runs/{run.pk}/stream/", HTTP_ACCEPT="text/event-stream"
        )
    finally:
        streams.STREAM_SLOTS.release()

    # Then it is refused at once, in the one error format, with a time to come back
    assert response.status_code == 429
    assert response["Retry-After"] == str(streams.STREAM_RETRY_AFTER_SECONDS)
    assert response.json()["code"] == "too_many_streams"
    assert response.json()["detail"]


@pytest.mark.django_db
def test_a_stream_gives_its_slot_back_when_closed_even_unread(
    api_client, settings, no_open_streams
):
    settings.SSE_MAX_STREAMS_PER_PROCESS = 1
    run = _running_run()
    api_client.credentials(HTTP_AUTHORIZATION=f"Token {_syncer_token()}")

    # A stream whose client went away before the first byte
    response = api_client.get(f"/api/v1/sync-runs/{run.pk}/stream/")
    assert response.status_code == 200
    assert streams.STREAM_SLOTS.open == 1
    _close(response)
    assert streams.STREAM_SLOTS.open == 0

    # A stream read to its end (the run ended) and closed by the server
    SyncRun.objects.filter(pk=run.pk).update(status=SyncStatus.SUCCEEDED)
    response = api_client.get(f"/api/v1/sync-runs/{run.pk}/stream/")
    assert b"event: end" in b"".join(response.streaming_content)
    _close(response)
    _close(response)  # twice is harmless: the slot is given back once
    assert streams.STREAM_SLOTS.open == 0


# -- under gunicorn, as documented --------------------------------------------------------------


@contextmanager
def _gunicorn(env: dict[str, str], *, workers: int, threads: int) -> Iterator[int]:
    """gunicorn with the project's gunicorn.conf.py (gthread), on a free loopback port."""
    port = free_port()
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "gunicorn", "evoflow.wsgi:application"),
            *("--config", "gunicorn.conf.py", "--bind", f"127.0.0.1:{port}"),
            *("--workers", str(workers), "--threads", str(threads)),
        ],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        if not wait_for(lambda: _healthz_status(port, timeout=1) == 200, timeout=60, interval=0.2):
            process.kill()
            raise AssertionError(f"gunicorn did not start: {process.communicate()[1]!r}")
        yield port
    finally:
        process_group_stop(process, signal.SIGTERM, timeout=20)


def _healthz_status(port: int, *, timeout: float) -> int | None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", "/healthz")
        return connection.getresponse().status
    except OSError:
        return None
    finally:
        connection.close()


def _open_stream(port: int, run_id: int, token: str) -> http.client.HTTPConnection:
    """A stream whose first event has arrived; the caller closes the connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request(
        "GET",
        f"/api/v1/sync-runs/{run_id}/stream/",
        headers={"Authorization": f"Token {token}", "Accept": "text/event-stream"},
    )
    response = connection.getresponse()
    assert response.status == 200, response.read()
    assert response.readline() == b"retry: 2000\n"
    return connection


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_open_streams_leave_gunicorn_answering_and_the_one_beyond_the_cap_gets_429(
    subprocess_env,
):
    # Given gunicorn as documented (gthread), with fewer workers than streams to come, and a
    # run that stays running
    run = _running_run()
    token = _syncer_token()
    env = {**subprocess_env, "SSE_MAX_STREAMS_PER_PROCESS": "2", "LOG_LEVEL": "WARNING"}
    with _gunicorn(env, workers=1, threads=3) as port, ExitStack() as open_streams:
        # When more streams than workers are open (and stay open)
        for _ in range(2):
            open_streams.callback(_open_stream(port, run.pk, token).close)

        # Then the process still answers other requests (a starved one would time out)
        assert _healthz_status(port, timeout=5) == 200

        # And the stream beyond the cap is refused at once, not queued
        refused = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        refused.request(
            "GET",
            f"/api/v1/sync-runs/{run.pk}/stream/",
            headers={"Authorization": f"Token {token}", "Accept": "text/event-stream"},
        )
        response = refused.getresponse()
        assert response.status == 429
        assert response.getheader("Retry-After") == str(streams.STREAM_RETRY_AFTER_SECONDS)
        assert json.loads(response.read())["code"] == "too_many_streams"
        refused.close()

        # And a stream whose client left gives its slot back (noticed when a keep-alive fails)
        open_streams.close()
        assert wait_for(lambda: _stream_admitted(port, run.pk, token), timeout=20, interval=1)


def _stream_admitted(port: int, run_id: int, token: str) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request(
            "GET",
            f"/api/v1/sync-runs/{run_id}/stream/",
            headers={"Authorization": f"Token {token}"},
        )
        return connection.getresponse().status == 200
    finally:
        connection.close()


@pytest.mark.slow
def test_gunicorn_refuses_to_start_when_streams_could_take_every_thread(subprocess_env):
    env = {**subprocess_env, "SSE_MAX_STREAMS_PER_PROCESS": "4"}
    completed = subprocess.run(
        [
            *(sys.executable, "-m", "gunicorn", "evoflow.wsgi:application"),
            *("--config", "gunicorn.conf.py", "--bind", f"127.0.0.1:{free_port()}"),
            *("--workers", "1", "--threads", "4"),
        ],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode != 0
    assert "SSE_MAX_STREAMS_PER_PROCESS (4) must be below the worker's threads (4)" in (
        completed.stderr
    )
