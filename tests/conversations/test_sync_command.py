"""`manage.py sync_page` against the Graph simulator, its exit codes, and the metrics."""

from __future__ import annotations

import re
from collections.abc import Iterator
from io import StringIO

import pytest
from django.core.management import call_command
from django.test import Client

from conversations.models import Conversation, FacebookPage, Message, SyncRun
from conversations.services.pages import page_upsert
from conversations.services.sync import sync_request
from conversations.simulator.graph import GraphSimulator
from conversations.simulator.payloads import message_event, webhook_document

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def simulator(settings) -> Iterator[GraphSimulator]:
    sim = GraphSimulator(conversations=30, messages=400, seed=11)
    with sim.running() as base:
        settings.GRAPH_API_BASE_URL = base + "/v21.0"
        settings.GRAPH_PAGE_CALLS_PER_SECOND = 1000
        settings.GRAPH_APP_CALLS_PER_SECOND = 1000
        yield sim


def sync_page(*args: str) -> tuple[int, str, str]:
    out, err = StringIO(), StringIO()
    try:
        call_command("sync_page", *args, stdout=out, stderr=err)
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    return code, out.getvalue(), err.getvalue()


def _metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text output (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_full_sync_runs_in_the_foreground_with_progress_and_exits_0(simulator):
    page = page_upsert(page_id=simulator.page_id, name="Sim", access_token="sim-page-token")
    before = Client().get("/metrics").content.decode()

    code, out, err = sync_page(simulator.page_id, "--full")

    assert code == 0, out + err
    run = SyncRun.objects.get()
    assert (run.mode, run.status, run.trigger) == ("full", "succeeded", "command")
    assert Message.objects.filter(page=page).count() == simulator.message_total
    assert Conversation.objects.filter(page=page).count() == simulator.conversation_total
    assert f"sync run {run.pk} of page {simulator.page_id} (full)" in out
    assert f"sync run {run.pk} succeeded" in out
    assert f"messages inserted: {simulator.message_total}" in out
    assert f"api calls: {run.api_calls}" in out
    # The progress line is redrawn on stderr with the counters
    assert "\r" in err
    assert re.search(r"conversations \d+ \| messages inserted \d+ \| API calls \d+", err)
    assert f"messages inserted {simulator.message_total}" in err

    # The metrics show the run, its Graph calls and the messages it stored
    after = Client().get("/metrics").content.decode()
    sync_runs = "evoflow_sync_runs_total"
    assert _metric(after, sync_runs, mode="full", status="succeeded") == (
        _metric(before, sync_runs, mode="full", status="succeeded") + 1
    )
    ingested = "evoflow_messages_ingested_total"
    stored = _metric(after, ingested, source="sync") - _metric(before, ingested, source="sync")
    assert stored == simulator.message_total
    calls = "evoflow_graph_calls_total"
    assert _metric(after, calls, edge="conversations", outcome="ok") > _metric(
        before, calls, edge="conversations", outcome="ok"
    )

    # A second (incremental) run finds nothing new
    code, out, _ = sync_page(simulator.page_id, "--no-progress")
    assert code == 0
    assert "messages inserted: 0" in out
    assert SyncRun.objects.latest("id").mode == "incremental"


def test_a_run_that_runs_out_of_time_exits_1_partial(simulator, settings):
    page_upsert(page_id=simulator.page_id, name="Sim", access_token="sim-page-token")
    settings.SYNC_TIME_BUDGET_SECONDS = 0

    code, out, _ = sync_page(simulator.page_id, "--full", "--no-progress")

    assert code == 1
    run = SyncRun.objects.get()
    assert run.status == "partial"
    assert f"sync run {run.pk} partial" in out
    assert f"error: {run.error_code}" in out


def test_a_rejected_token_exits_2_failed_and_flags_the_page(simulator):
    page = page_upsert(page_id=simulator.page_id, name="Sim", access_token="revoked-token")

    code, out, _ = sync_page(simulator.page_id, "--no-progress")

    assert code == 2
    run = SyncRun.objects.get()
    assert run.status == "failed"
    assert f"sync run {run.pk} failed" in out
    assert "revoked-token" not in out
    page.refresh_from_db()
    assert page.is_reauthorization_required is True

    # Once flagged, the command refuses the page
    code, _, err = sync_page(simulator.page_id)
    assert code == 3
    assert "re-authorisation" in err
    assert SyncRun.objects.count() == 1


def test_refusals_exit_3(db):
    code, _, err = sync_page("123123123")
    assert (code, err.strip()) == (3, "refused: no page with id 123123123")

    page = page_upsert(page_id="321321321", name="Busy", access_token="t")
    live, _ = sync_request(page=page, mode="full", enqueue=False)
    code, _, err = sync_page("321321321", "--full")
    assert code == 3
    assert err.strip() == f"refused: a sync of page 321321321 is already queued: run {live.pk}"
    assert SyncRun.objects.count() == 1
    assert FacebookPage.objects.get(pk=page.pk).is_reauthorization_required is False


def test_webhook_processing_time_is_observed_per_post(db, post_webhook):
    page_upsert(page_id="111222333", name="Hooked", access_token="t")
    name = "evoflow_webhook_processing_seconds_count"
    before = _metric(Client().get("/metrics").content.decode(), name)

    for number in range(2):
        document = webhook_document(
            "111222333",
            [
                message_event(
                    page_id="111222333",
                    psid="7001",
                    mid=f"m_timed{number}",
                    timestamp_ms=1_741_000_000_000 + number,
                )
            ],
        )
        assert post_webhook(document).status_code == 200

    after = _metric(Client().get("/metrics").content.decode(), name)
    assert after - before == 2


def test_ctrl_c_cancels_the_run_and_frees_the_page(transactional_db, monkeypatch):
    from conversations.management.commands import sync_page
    from conversations.services.pages import page_upsert

    page = page_upsert(page_id="313131313", name="Interrupted", access_token="t")

    def interrupted(**_):
        raise KeyboardInterrupt

    monkeypatch.setattr(sync_page, "sync_run_execute", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        call_command("sync_page", page.page_id)

    assert exit_info.value.code == 130
    run = SyncRun.objects.get(page=page)
    assert (run.status, run.error_code) == ("cancelled", "cancelled")
