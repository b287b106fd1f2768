"""The sync API: requesting a run (202 / 409), reading runs, and the progress stream (SSE)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from django.contrib.auth.models import Permission
from django.db import connection
from django_q.models import OrmQ
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from conversations import streams
from conversations.models import FacebookPage, SyncRun, SyncStatus
from conversations.services.pages import page_upsert
from conversations.services.sync import sync_request, sync_run_cancel
from evoflow.permissions import is_operator_permission
from tests.conversations.conftest import PAGE_ID
from tests.core.factories import UserFactory

SECRET_TOKEN = "EAAB-page-secret-token"


def _syncer():
    user = UserFactory()
    user.user_permissions.add(Permission.objects.get(codename="add_syncrun"))
    return user


@pytest.fixture
def syncer(db):
    return _syncer()


@pytest.fixture
def syncer_client(api_client, syncer):
    api_client.force_authenticate(user=syncer)
    return api_client


@pytest.fixture
def token_page(db) -> FacebookPage:
    return page_upsert(page_id=PAGE_ID, name="MyShop", access_token=SECRET_TOKEN)


def _sync_url(page_id: str = PAGE_ID) -> str:
    return f"/api/v1/pages/{page_id}/sync/"


# -- POST /api/v1/pages/{page_id}/sync/ ------------------------------------------------------------


def test_a_sync_request_answers_202_with_the_new_queued_run_and_enqueues_it(
    syncer_client, token_page
):
    response = syncer_client.post(_sync_url(), {"mode": "full"}, format="json")

    assert response.status_code == 202
    body = response.json()
    run = SyncRun.objects.get()
    assert body == {
        "sync_run_id": run.pk,
        "page_id": PAGE_ID,
        "mode": "full",
        "status": "queued",
        "request_id": run.request_id,
        "url": f"http://testserver/api/v1/sync-runs/{run.pk}/",
        "stream_url": f"http://testserver/api/v1/sync-runs/{run.pk}/stream/",
    }
    assert (run.mode, run.status, run.trigger) == ("full", "queued", "api")
    # The run carries the HTTP request's id
    assert run.request_id == response["X-Request-ID"]
    assert OrmQ.objects.count() == 1


def test_the_mode_defaults_to_incremental_and_an_empty_body_is_fine(syncer_client, token_page):
    response = syncer_client.post(_sync_url())
    assert response.status_code == 202
    assert response.json()["mode"] == "incremental"


def test_a_second_request_while_a_run_is_live_is_a_409_naming_the_live_run(
    syncer_client, token_page
):
    first = syncer_client.post(_sync_url(), {"mode": "incremental"}, format="json").json()

    again = syncer_client.post(_sync_url(), {"mode": "full"}, format="json")

    assert again.status_code == 409
    assert again.json() == {
        "code": "sync_running",
        "detail": f"A sync of page {PAGE_ID} is already queued (run {first['sync_run_id']}).",
        "sync_run_id": first["sync_run_id"],
    }
    assert SyncRun.objects.count() == 1
    # Once the live run ends, the page can be synced again
    assert sync_run_cancel(run_id=first["sync_run_id"]) is True
    assert syncer_client.post(_sync_url()).status_code == 202


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ('{"mode": "everything"}', "application/json"),
        ('{"mode": null}', "application/json"),
        ("[1, 2]", "application/json"),
        ('{"mode": "full"', "application/json"),
        ('"full"', "application/json"),
    ],
)
def test_bad_bodies_are_a_400_validation_error_and_start_nothing(
    syncer_client, token_page, body, content_type
):
    response = syncer_client.generic("POST", _sync_url(), body, content_type=content_type)

    assert response.status_code == 400
    assert response.json()["code"] == "validation_error"
    assert SyncRun.objects.count() == 0


@pytest.mark.parametrize("page_id", ["999999999", "not-a-page", "%20", "%00", "1%002", "1" * 70])
def test_an_unknown_page_is_a_404(syncer_client, token_page, page_id):
    response = syncer_client.post(_sync_url(page_id), {"mode": "full"}, format="json")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    assert SyncRun.objects.count() == 0


def test_a_page_needing_reauthorisation_is_a_409_reauthorization_required(syncer_client, db):
    flagged = page_upsert(page_id=PAGE_ID, name="Flagged", access_token=SECRET_TOKEN)
    FacebookPage.objects.filter(pk=flagged.pk).update(is_reauthorization_required=True)
    page_upsert(page_id="444555666", name="No token")

    for page_id in (PAGE_ID, "444555666"):
        response = syncer_client.post(_sync_url(page_id), format="json")
        assert response.status_code == 409
        assert response.json()["code"] == "reauthorization_required"
        assert SECRET_TOKEN not in response.content.decode()
    assert SyncRun.objects.count() == 0


def test_syncing_needs_the_add_syncrun_permission(authenticated_client, token_page):
    anonymous = APIClient().post(_sync_url())
    assert (anonymous.status_code, anonymous.json()["code"]) == (401, "not_authenticated")
    denied = authenticated_client.post(_sync_url())
    assert denied.status_code == 403
    assert denied.json()["code"] == "permission_denied"
    assert authenticated_client.get("/api/v1/sync-runs/").status_code == 403
    assert SyncRun.objects.count() == 0
    # The operators group is granted it
    assert is_operator_permission("conversations", "syncrun", "add_syncrun") is True


@pytest.mark.django_db(transaction=True)
def test_20_concurrent_posts_start_exactly_one_run_and_the_rest_name_it(live_server):
    # Given a token-authenticated operator and a page with a token
    page_upsert(page_id=PAGE_ID, name="MyShop", access_token=SECRET_TOKEN)
    token = Token.objects.create(user=_syncer()).key
    barrier = threading.Barrier(20)
    results: list[tuple[int, dict[str, Any]]] = []
    lock = threading.Lock()

    def post() -> None:
        with requests.Session() as session:
            barrier.wait()
            response = session.post(
                f"{live_server.url}{_sync_url()}",
                json={"mode": "full"},
                headers={"Authorization": f"Token {token}"},
                timeout=60,
            )
        with lock:
            results.append((response.status_code, response.json()))

    # When 20 clients ask at once
    threads = [threading.Thread(target=post) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Then exactly one run was created, and every 409 names it
    statuses = sorted(status for status, _ in results)
    assert statuses == [202] + [409] * 19
    run = SyncRun.objects.get()
    accepted = [body for status, body in results if status == 202]
    assert accepted[0]["sync_run_id"] == run.pk
    conflicts = [body for status, body in results if status == 409]
    assert {body["code"] for body in conflicts} == {"sync_running"}
    assert {body["sync_run_id"] for body in conflicts} == {run.pk}
    assert OrmQ.objects.count() == 1


# -- GET /api/v1/sync-runs/ ------------------------------------------------------------------------


def _finished_run(page: FacebookPage, status: str = SyncStatus.PARTIAL, **fields: Any) -> SyncRun:
    run, _ = sync_request(page=page, mode="full", enqueue=False)
    SyncRun.objects.filter(pk=run.pk).update(status=SyncStatus.RUNNING)
    SyncRun.objects.filter(pk=run.pk).update(status=status, **fields)
    run.refresh_from_db()
    return run


def test_a_run_is_shown_with_its_counters_and_failed_batches_and_no_secret(
    syncer_client, token_page
):
    run = _finished_run(
        token_page,
        api_calls=12,
        messages_inserted=300,
        conversations_seen=40,
        cursor={"folder": "inbox", "after": "QVFI"},
        failed_batches=[
            {
                "kind": "conversations",
                "folder": "inbox",
                "after": "QVFI",
                "error_code": "server_error",
                "detail": "HTTP 500",
                "attempts": 3,
                "url": f"https://graph.example/?access_token={SECRET_TOKEN}",
            }
        ],
        error_code="failed_batches",
        error="1 batch(es) failed; the next run retries them first",
    )

    response = syncer_client.get(f"/api/v1/sync-runs/{run.pk}/")

    assert response.status_code == 200
    body = response.json()
    assert body["id"] == run.pk
    assert body["page_id"] == PAGE_ID
    assert (body["mode"], body["status"], body["trigger"]) == ("full", "partial", "api")
    assert body["request_id"] == run.request_id
    assert body["has_cursor"] is True
    assert body["is_live"] is False
    assert body["counters"] == {
        "api_calls": 12,
        "throttled_waits": 0,
        "conversations_seen": 40,
        "conversations_inserted": 0,
        "conversations_updated": 0,
        "conversations_soft_deleted": 0,
        "conversations_skipped": 0,
        "messages_inserted": 300,
        "events_inserted": 0,
        "batches_succeeded": 0,
    }
    assert body["failed_batch_count"] == 1
    assert body["failed_batches"] == [
        {
            "kind": "conversations",
            "folder": "inbox",
            "after": "QVFI",
            "error_code": "server_error",
            "detail": "HTTP 500",
            "attempts": 3,
        }
    ]
    assert body["error_code"] == "failed_batches"
    assert set(body) >= {"created_at", "started_at", "finished_at", "heartbeat_at", "resumed_from"}
    assert SECRET_TOKEN not in response.content.decode()
    assert token_page.access_token_encrypted not in response.content.decode()
    assert "lease_token" not in body
    assert "cursor" not in body
    missing = syncer_client.get("/api/v1/sync-runs/999999/")
    assert (missing.status_code, missing.json()["code"]) == (404, "not_found")


def test_runs_are_listed_newest_first_with_filters(syncer_client, token_page):
    other = page_upsert(page_id="444555666", name="Other", access_token="other-token")
    older = _finished_run(token_page, SyncStatus.SUCCEEDED)
    newer = _finished_run(token_page, SyncStatus.FAILED)
    elsewhere = _finished_run(other, SyncStatus.SUCCEEDED)

    everything = syncer_client.get("/api/v1/sync-runs/").json()
    assert [run["id"] for run in everything["results"]] == [elsewhere.pk, newer.pk, older.pk]
    mine = syncer_client.get("/api/v1/sync-runs/", {"page_id": PAGE_ID, "page_size": 1}).json()
    assert [run["id"] for run in mine["results"]] == [newer.pk]
    assert [run["id"] for run in syncer_client.get(mine["next"]).json()["results"]] == [older.pk]
    succeeded = syncer_client.get("/api/v1/sync-runs/", {"status": "succeeded"}).json()
    assert [run["id"] for run in succeeded["results"]] == [elsewhere.pk, older.pk]
    bad = syncer_client.get("/api/v1/sync-runs/", {"status": "exploded"})
    assert (bad.status_code, bad.json()["code"]) == (400, "validation_error")


def test_the_schema_describes_the_sync_endpoints(client, db):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    paths = schema["paths"]
    assert "202" in paths["/api/v1/pages/{page_id}/sync/"]["post"]["responses"]
    assert "/api/v1/sync-runs/{run_id}/" in paths
    stream = paths["/api/v1/sync-runs/{run_id}/stream/"]["get"]["responses"]["200"]
    assert "text/event-stream" in stream["content"]


# -- GET /api/v1/sync-runs/{id}/stream/ ------------------------------------------------------------


def _events(response: requests.Response) -> Iterator[dict[str, Any]]:
    """Parse a server-sent event stream as it arrives: each event, or a comment."""
    fields: dict[str, Any] = {}
    for line in response.iter_lines(chunk_size=1, decode_unicode=True):
        if line == "":
            if fields:
                yield fields
            fields = {}
        elif line.startswith(":"):
            yield {"comment": line[1:].strip()}
        else:
            name, _, value = line.partition(":")
            fields[name] = value.lstrip(" ")


@pytest.mark.django_db(transaction=True)
def test_the_stream_sends_progress_as_the_run_advances_and_a_final_event(live_server, monkeypatch):
    monkeypatch.setattr(streams, "STREAM_POLL_SECONDS", 0.05)
    page = page_upsert(page_id=PAGE_ID, name="MyShop", access_token=SECRET_TOKEN)
    token = Token.objects.create(user=_syncer()).key
    run, _ = sync_request(page=page, mode="full", enqueue=False)

    received: list[dict[str, Any]] = []
    with requests.get(
        f"{live_server.url}/api/v1/sync-runs/{run.pk}/stream/",
        headers={"Authorization": f"Token {token}", "Accept": "text/event-stream"},
        stream=True,
        timeout=30,
    ) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers["Cache-Control"] == "no-cache"
        assert response.headers["X-Accel-Buffering"] == "no"
        for event in _events(response):
            if "event" not in event:
                continue
            event["data"] = json.loads(event["data"])
            received.append(event)
            status = event["data"]["status"]
            # The run advances (as its worker would write it) once the stream has shown the
            # previous state: the events arrive while the run is live, not at its end.
            if event["event"] == "progress" and status == "queued":
                SyncRun.objects.filter(pk=run.pk).update(status="running")
            elif (
                event["event"] == "progress" and event["data"]["counters"]["messages_inserted"] == 0
            ):
                SyncRun.objects.filter(pk=run.pk).update(api_calls=7, messages_inserted=250)
            elif event["event"] == "progress":
                SyncRun.objects.filter(pk=run.pk).update(status="succeeded", api_calls=9)

    assert [(e["event"], e["data"]["status"]) for e in received] == [
        ("progress", "queued"),
        ("progress", "running"),
        ("progress", "running"),
        ("end", "succeeded"),
    ]
    assert received[2]["data"]["counters"]["messages_inserted"] == 250
    assert received[-1]["data"]["counters"]["api_calls"] == 9
    # One shape of a run: every event's data is the run as the REST API shows it
    run_now = requests.get(
        f"{live_server.url}/api/v1/sync-runs/{run.pk}/",
        headers={"Authorization": f"Token {token}"},
        timeout=30,
    )
    assert received[-1]["data"] == run_now.json()
    for sequence, event in enumerate(received, start=1):
        assert event["data"]["request_id"] == run.request_id
        assert event["data"]["id"] == run.pk
        assert event["id"] == f"{run.request_id}:{sequence}"
    assert SECRET_TOKEN not in json.dumps(received)


@pytest.mark.django_db(transaction=True)
def test_the_stream_of_a_finished_run_is_its_final_event_and_errors_are_json(live_server):
    page = page_upsert(page_id=PAGE_ID, name="MyShop", access_token=SECRET_TOKEN)
    token = Token.objects.create(user=_syncer()).key
    run = _finished_run(page, SyncStatus.FAILED, error_code="invalid_token")
    headers = {"Authorization": f"Token {token}", "Accept": "text/event-stream"}

    response = requests.get(
        f"{live_server.url}/api/v1/sync-runs/{run.pk}/stream/", headers=headers, timeout=30
    )
    events = [event for event in _events(response) if "event" in event]
    assert [event["event"] for event in events] == ["end"]
    assert json.loads(events[0]["data"])["status"] == "failed"

    missing = requests.get(
        f"{live_server.url}/api/v1/sync-runs/999999/stream/", headers=headers, timeout=30
    )
    assert missing.status_code == 404
    assert missing.json()["code"] == "not_found"
    denied = requests.get(
        f"{live_server.url}/api/v1/sync-runs/{run.pk}/stream/",
        headers={"Accept": "text/event-stream"},
        timeout=30,
    )
    assert denied.status_code == 401
    assert denied.json()["code"] == "not_authenticated"


def test_the_stream_keeps_alive_and_stops_at_its_maximum_duration(token_page):
    run, _ = sync_request(page=token_page, mode="incremental", enqueue=False)

    chunks = list(
        streams.sync_run_events(run.pk, poll_seconds=0.02, keepalive_seconds=0.05, max_seconds=0.3)
    )

    text = b"".join(chunks).decode()
    assert text.startswith("retry: 2000\n\n")
    assert text.count("event: progress") == 1
    assert ": keep-alive\n\n" in text
    assert text.rstrip().splitlines()[-2] == "event: timeout"
    assert connection.is_usable()


def test_a_tampered_run_list_cursor_is_a_400_not_a_500(syncer_client, token_page):
    import base64

    for position in ["abc", "1\x00", "9" * 30]:
        cursor = base64.b64encode(f"p={position}".encode()).decode()
        response = syncer_client.get("/api/v1/sync-runs/", {"cursor": cursor})
        assert response.status_code == 400
        assert response.json()["code"] == "invalid_cursor"


@pytest.mark.django_db(transaction=True)
def test_the_stream_holds_no_database_connection_between_polls(token_page):
    """An open (or abandoned) stream must not pin a PostgreSQL backend while it sleeps."""
    run, _ = sync_request(page=token_page, mode="full", enqueue=False)
    events = streams.sync_run_events(run.pk, poll_seconds=0.01, keepalive_seconds=10, max_seconds=5)
    assert next(events).startswith(b"retry:")
    assert next(events).startswith(b"id:")  # the first progress event
    assert connection.connection is None
    events.close()
