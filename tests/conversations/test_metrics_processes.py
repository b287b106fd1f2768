"""F18 across real processes: a `manage.py qcluster` runs a Graph sync and an integrity run; one
scrape of a separate web process (gunicorn, as deployed) shows the worker's counters (through
the shared multiprocess directory) and the state read from the database (the page's last
successful sync, no live run, the check's status at its last run)."""

from __future__ import annotations

import http.client
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conversations.models import SyncRun
from conversations.services.sync import sync_request
from conversations.simulator.graph import GraphSimulator
from evoflow.integrity.lifecycle import integrity_run_request
from evoflow.models import IntegrityRun
from tests.conversations.sync_helpers import sim_page, simulator_serving
from tests.helpers import PROJECT_ROOT, free_port, process_group_stop, qcluster, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

CHECK = "conversations.sync_failing"


def _get(port: int, path: str) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    except OSError:
        return 0, ""
    finally:
        connection.close()


@contextmanager
def _web(env: dict[str, str]) -> Iterator[int]:
    """gunicorn with the project's configuration, two worker processes, on a free port."""
    port = free_port()
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "gunicorn", "evoflow.wsgi:application"),
            *("--config", "gunicorn.conf.py", "--bind", f"127.0.0.1:{port}", "--workers", "2"),
        ],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        if not wait_for(lambda: _get(port, "/healthz")[0] == 200, timeout=60, interval=0.2):
            process.kill()
            raise AssertionError(f"gunicorn did not start: {process.communicate()[1]!r}")
        yield port
    finally:
        process_group_stop(process, signal.SIGTERM, timeout=20)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_one_scrape_of_the_web_process_shows_a_workers_sync_and_integrity_run(
    settings, subprocess_env, tmp_path
):
    # Given a simulated page, a worker and a web process sharing one metrics directory
    sim = GraphSimulator(conversations=40, messages=400, seed=71)
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    with simulator_serving(sim, settings) as base:
        env = {
            **subprocess_env,
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
            "GRAPH_API_BASE_URL": base + "/v21.0",
            "GRAPH_PAGE_CALLS_PER_SECOND": "1000",
            "GRAPH_APP_CALLS_PER_SECOND": "1000",
        }
        page = sim_page(sim)
        with qcluster(env), _web(env) as port:
            status, before = _get(port, "/metrics")
            assert status == 200

            # When the worker runs a full sync, then an integrity run of the sync check
            run, created = sync_request(page=page, mode="full")  # the task, in the database
            assert created
            assert wait_for(
                lambda: SyncRun.objects.get(pk=run.pk).status == "succeeded",
                timeout=120,
                interval=0.2,
            ), SyncRun.objects.get(pk=run.pk).error
            integrity, _ = integrity_run_request(check_ids=[CHECK], trigger="admin")
            assert wait_for(
                lambda: IntegrityRun.objects.get(pk=integrity.pk).finished_at is not None,
                timeout=60,
                interval=0.2,
            )
            # ...and the web process is scraped (either of its workers may answer)
            scrapes = [_get(port, "/metrics") for _ in range(4)]

    run.refresh_from_db()
    page_label = (("page_id", page.page_id),)
    for status, text in scrapes:
        assert status == 200
        samples = _samples(text)
        # Then the worker's counters are there, added up from its processes' files
        sync_key = ("evoflow_sync_runs_total", (("mode", "full"), ("status", "succeeded")))
        assert samples[sync_key] == 1
        assert samples[("evoflow_messages_ingested_total", (("source", "sync"),))] == 400
        graph_calls = sum(
            value
            for (name, labels), value in samples.items()
            if name == "evoflow_graph_calls_total" and dict(labels).get("outcome") == "ok"
        )
        assert graph_calls == run.api_calls > 0
        # ...and the state from the database: the page's last success, no failing streak, no
        # live run, and the check's status at its last run
        assert samples[("evoflow_metrics_database_up", ())] == 1
        assert samples[
            ("evoflow_sync_page_last_success_timestamp_seconds", page_label)
        ] == pytest.approx(run.finished_at.timestamp())
        assert samples[("evoflow_sync_page_unsuccessful_runs", page_label)] == 0
        assert samples[("evoflow_sync_runs_live", (("status", "running"),))] == 0
        assert samples[("evoflow_integrity_check_status", (("check_id", CHECK),))] == 0
        assert samples[("evoflow_integrity_failing", (("check_id", CHECK),))] == 0
    # Before the worker did anything, none of it was there
    assert ("evoflow_sync_page_last_success_timestamp_seconds", page_label) not in _samples(before)
    assert ("evoflow_integrity_check_status", (("check_id", CHECK),)) not in _samples(before)
