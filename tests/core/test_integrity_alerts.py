"""Integrity alerting: a post per check entering warning or error, the status gauge, and a
receiver that is down, failing or hanging never breaking a run."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection
from django.urls import reverse
from prometheus_client import REGISTRY

from evoflow.integrity import IntegrityCheck, registered
from evoflow.integrity.runner import integrity_run
from evoflow.integrity.tasks import integrity_run_scheduled
from evoflow.models import IntegrityCheckResult, IntegrityRun
from tests.helpers import free_port

ALERT_LOGGER = "evoflow.integrity.alerts"


@dataclass
class Receiver:
    """A local alert webhook: records every JSON body it gets and answers `status`.

    `answers` are the statuses of the first posts, before `status`; `hang` answers nothing,
    `answer_late` takes the post and answers only when the test ends.
    """

    url: str
    bodies: list[dict] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    idempotency_keys: list[str | None] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    status: int = 204
    hang: bool = False
    answer_late: bool = False
    released: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def check_ids(self) -> list[str]:
        return [body["check_id"] for body in self.bodies]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    port = free_port()
    state = Receiver(url=f"http://127.0.0.1:{port}/hooks/integrity?token=s3cret-token")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if state.hang:
                state.released.wait(timeout=30)
                return
            with state.lock:
                state.bodies.append(json.loads(body))
                state.paths.append(self.path)
                state.idempotency_keys.append(self.headers.get("Idempotency-Key"))
                status = state.answers.pop(0) if state.answers else state.status
            if state.answer_late:
                state.released.wait(timeout=30)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.released.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def alerting(settings, receiver: Receiver) -> Receiver:
    settings.ALERT_WEBHOOK_URL = receiver.url
    settings.ALERT_WEBHOOK_TIMEOUT_SECONDS = 0.5
    return receiver


@dataclass
class Probe:
    """A check whose failing count is whatever the test sets (warning from 1, error from 5)."""

    id: str
    failing: int = 0
    barrier: threading.Barrier | None = None

    def sql(self) -> str:
        if self.barrier is not None:
            # Both concurrent runs have evaluated the check before either stores its result.
            self.barrier.wait(timeout=10)
        return (
            f"SELECT {int(self.failing)}::bigint, 10::bigint, ARRAY(SELECT 'row-' || g"
            f" FROM generate_series(1, {int(self.failing)}) AS g LIMIT %(sample_limit)s)"
        )

    @property
    def check(self) -> IntegrityCheck:
        return IntegrityCheck(
            id=self.id,
            description=f"probe {self.id}",
            sql=self.sql,
            warning_count=1,
            error_count=5,
        )


def run_probes(*probes: Probe, capture) -> IntegrityRun:
    """One integrity run of the probes, running the after-commit callbacks (the alerts)."""
    with capture(execute=True):
        return integrity_run(check_ids=[probe.id for probe in probes])


@pytest.mark.django_db
def test_only_entering_warning_or_error_posts(alerting, django_capture_on_commit_callbacks):
    probe = Probe("test.alert_probe")
    sequence = [
        (1, "warning"),
        (2, "warning"),
        (5, "error"),
        (7, "error"),
        (0, "ok"),
        (1, "warning"),
    ]

    with registered(probe.check):
        runs = []
        for failing, _ in sequence:
            probe.failing = failing
            runs.append(run_probes(probe, capture=django_capture_on_commit_callbacks))

    stored = list(
        IntegrityCheckResult.objects.filter(check_id=probe.id)
        .order_by("created_at", "pk")
        .values_list("status", flat=True)
    )
    assert stored == [status for _, status in sequence]
    assert [(body["status"], body["previous_status"]) for body in alerting.bodies] == [
        ("warning", "ok"),
        ("error", "warning"),
        ("warning", "ok"),
    ]
    first = alerting.bodies[0]
    first_result = IntegrityCheckResult.objects.get(run=runs[0], check_id=probe.id)
    assert first == {
        "type": "integrity_check",
        "alert_id": first_result.pk,
        "check_id": probe.id,
        "status": "warning",
        "previous_status": "ok",
        "failing_count": 1,
        "population": 10,
        "ratio": 0.1,
        "sample_ids": ["row-1"],
        "thresholds": {
            "warning_count": 1,
            "error_count": 5,
            "warning_ratio": None,
            "error_ratio": None,
        },
        "description": "probe test.alert_probe",
        "run_id": runs[0].pk,
        "checked_at": first_result.created_at.isoformat(),
        "admin_url": reverse("admin:evoflow_integrityrun_change", args=[runs[0].pk]),
    }
    assert alerting.bodies[1]["run_id"] == runs[2].pk
    assert alerting.bodies[2]["run_id"] == runs[5].pk
    assert alerting.paths == ["/hooks/integrity?token=s3cret-token"] * 3


@pytest.mark.django_db
def test_error_to_warning_posts_and_a_failed_query_in_between_does_not(
    settings, alerting, django_capture_on_commit_callbacks
):
    probe = Probe("test.alert_probe")
    broken = IntegrityCheck(id=probe.id, description="broken", sql="SELECT 1 / 0, 0, '{}'")

    with registered(probe.check):
        probe.failing = 5
        run_probes(probe, capture=django_capture_on_commit_callbacks)  # ok -> error: posts
        probe.failing = 2
        run_probes(probe, capture=django_capture_on_commit_callbacks)  # error -> warning: posts
    with registered(broken):
        run_probes(probe, capture=django_capture_on_commit_callbacks)  # failed: no post
    with registered(probe.check):
        run_probes(probe, capture=django_capture_on_commit_callbacks)  # still warning: none

    assert [(body["status"], body["previous_status"]) for body in alerting.bodies] == [
        ("error", "ok"),
        ("warning", "error"),
    ]
    assert list(
        IntegrityCheckResult.objects.filter(check_id=probe.id)
        .order_by("created_at", "pk")
        .values_list("status", flat=True)
    ) == ["error", "warning", "failed", "warning"]


@pytest.mark.django_db
def test_two_checks_entering_in_one_run_post_once_each(
    alerting, django_capture_on_commit_callbacks
):
    first, second, quiet = Probe("test.alert_a", 1), Probe("test.alert_b", 6), Probe("test.c")

    with registered(first.check, second.check, quiet.check):
        run = run_probes(first, second, quiet, capture=django_capture_on_commit_callbacks)

    assert sorted(alerting.check_ids()) == ["test.alert_a", "test.alert_b"]
    assert {body["check_id"]: body["status"] for body in alerting.bodies} == {
        "test.alert_a": "warning",
        "test.alert_b": "error",
    }
    assert {body["run_id"] for body in alerting.bodies} == {run.pk}


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_runs_post_one_alert(alerting):
    probe = Probe("test.alert_probe", failing=1, barrier=threading.Barrier(2))
    runs: list[IntegrityRun] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            runs.append(integrity_run(check_ids=[probe.id], trigger="command"))
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    with registered(probe.check):
        threads = [threading.Thread(target=run) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)

    assert errors == []
    assert len(runs) == 2
    assert [(body["status"], body["previous_status"]) for body in alerting.bodies] == [
        ("warning", "ok")
    ]
    assert IntegrityCheckResult.objects.filter(check_id=probe.id, status="warning").count() == 2


@pytest.mark.django_db
@pytest.mark.parametrize("failure", ["down", "http_500", "hanging"])
def test_a_failing_receiver_is_logged_and_never_breaks_the_run(
    failure, settings, receiver, caplog, django_capture_on_commit_callbacks
):
    settings.ALERT_WEBHOOK_TIMEOUT_SECONDS = 0.3
    if failure == "down":
        settings.ALERT_WEBHOOK_URL = f"http://127.0.0.1:{free_port()}/hooks/x?token=s3cret-token"
    else:
        settings.ALERT_WEBHOOK_URL = receiver.url
        receiver.status = 500
        receiver.hang = failure == "hanging"
    probe = Probe("test.alert_probe", failing=1)
    failed_before = REGISTRY.get_sample_value(
        "evoflow_integrity_alerts_total", {"outcome": "failed"}
    )

    with registered(probe.check), caplog.at_level(logging.INFO):
        run = run_probes(probe, capture=django_capture_on_commit_callbacks)

    run.refresh_from_db()
    assert (run.status, run.exit_code) == ("warning", 1)
    assert run.results.get().status == "warning"
    errors = [
        record
        for record in caplog.records
        if record.name == ALERT_LOGGER and record.levelno == logging.ERROR
    ]
    assert len(errors) == 1
    assert errors[0].check_id == probe.id
    assert errors[0].webhook_host == settings.ALERT_WEBHOOK_URL.split("/")[2]  # host:port
    assert "s3cret-token" not in caplog.text
    assert "/hook" not in caplog.text
    assert (
        REGISTRY.get_sample_value("evoflow_integrity_alerts_total", {"outcome": "failed"})
        == (failed_before or 0) + 1
    )


def attempts(outcome: str) -> float:
    """Alert posts tried so far with this outcome (a status code, `timeout`, ...)."""
    labels = {"service": "alert_webhook", "method": "POST", "outcome": outcome}
    return REGISTRY.get_sample_value("evoflow_http_client_requests_total", labels) or 0


@pytest.mark.django_db
def test_a_receiver_that_took_the_alert_but_answers_late_gets_it_once(
    alerting, caplog, django_capture_on_commit_callbacks
):
    alerting.answer_late = True
    probe = Probe("test.alert_probe", failing=1)
    timeouts_before = attempts("timeout")

    with registered(probe.check), caplog.at_level(logging.INFO):
        run_probes(probe, capture=django_capture_on_commit_callbacks)

    # The read timed out after the receiver had the alert: trying again would post it twice.
    assert alerting.check_ids() == [probe.id]
    assert attempts("timeout") == timeouts_before + 1
    errors = [record for record in caplog.records if record.name == ALERT_LOGGER]
    assert [record.reason for record in errors] == [
        "no answer in time or connection lost (not retried: it may have arrived)"
    ]


@pytest.mark.django_db
def test_a_retried_alert_carries_the_same_alert_id_and_idempotency_key(
    alerting, django_capture_on_commit_callbacks
):
    alerting.answers = [503]
    probe = Probe("test.alert_probe", failing=1)

    with registered(probe.check):
        run = run_probes(probe, capture=django_capture_on_commit_callbacks)

    result = run.results.get()
    assert [body["alert_id"] for body in alerting.bodies] == [result.pk, result.pk]
    assert alerting.idempotency_keys == [f"integrity-alert-{result.pk}"] * 2


@pytest.mark.django_db
def test_a_receiver_that_refuses_the_connection_is_tried_twice(
    settings, django_capture_on_commit_callbacks
):
    settings.ALERT_WEBHOOK_URL = f"http://127.0.0.1:{free_port()}/hooks/x"
    settings.ALERT_WEBHOOK_TIMEOUT_SECONDS = 0.3
    probe = Probe("test.alert_probe", failing=1)
    refused_before = attempts("connection_error")

    with registered(probe.check):
        run_probes(probe, capture=django_capture_on_commit_callbacks)

    assert attempts("connection_error") == refused_before + 2


def gauge(name: str, check_id: str) -> float | None:
    """The gauge as a scrape shows it (read from the stored results at scrape time)."""
    from prometheus_client.parser import text_string_to_metric_families

    from evoflow.metrics import render_latest

    for family in text_string_to_metric_families(render_latest()[0].decode()):
        for sample in family.samples:
            if sample.name == name and sample.labels == {"check_id": check_id}:
                return sample.value
    return None


@pytest.mark.django_db
def test_without_a_webhook_url_nothing_is_posted(
    settings, receiver, django_capture_on_commit_callbacks
):
    settings.ALERT_WEBHOOK_URL = None
    probe = Probe("test.alert_probe", failing=1)

    with registered(probe.check):
        run = run_probes(probe, capture=django_capture_on_commit_callbacks)

    assert run.results.get().status == "warning"
    assert receiver.bodies == []


@pytest.mark.django_db
def test_the_command_posts_once(alerting, django_capture_on_commit_callbacks):
    probe = Probe("test.alert_probe", failing=1)

    with registered(probe.check), django_capture_on_commit_callbacks(execute=True):
        with pytest.raises(SystemExit) as exit_:
            call_command("integrity", "--check", probe.id, stdout=StringIO())
        with pytest.raises(SystemExit):
            call_command("integrity", "--check", probe.id, stdout=StringIO())

    assert exit_.value.code == 1
    assert [(body["check_id"], body["status"]) for body in alerting.bodies] == [
        (probe.id, "warning")
    ]


@pytest.mark.django_db
def test_the_scheduled_task_posts(alerting, django_capture_on_commit_callbacks):
    probe = Probe("test.alert_probe", failing=6)

    with registered(probe.check), django_capture_on_commit_callbacks(execute=True):
        run_id = integrity_run_scheduled()

    assert IntegrityRun.objects.get(pk=run_id).trigger == "schedule"
    posted = [body for body in alerting.bodies if body["check_id"] == probe.id]
    assert [(body["status"], body["run_id"]) for body in posted] == [("error", run_id)]


@pytest.mark.django_db
def test_a_run_sets_the_status_and_failing_gauges(client, django_capture_on_commit_callbacks):
    warning, failing_query = Probe("test.gauge_warning", 2), Probe("test.gauge_failed")
    broken = IntegrityCheck(id=failing_query.id, description="broken", sql="SELECT 1 / 0, 0, '{}'")

    with registered(warning.check, broken):
        run_probes(warning, failing_query, capture=django_capture_on_commit_callbacks)
        warning.failing = 0
        run_probes(warning, capture=django_capture_on_commit_callbacks)
        healthy_status = gauge("evoflow_integrity_check_status", warning.id)
        warning.failing = 7
        run_probes(warning, capture=django_capture_on_commit_callbacks)
        # (Read while the checks are registered: a scrape shows the registered checks.)
        statuses = [
            gauge("evoflow_integrity_check_status", warning.id),
            gauge("evoflow_integrity_failing", warning.id),
            gauge("evoflow_integrity_check_status", failing_query.id),
            gauge("evoflow_integrity_failing", failing_query.id),
        ]
        metrics_text = client.get("/metrics").content.decode()

    assert healthy_status == 0
    assert statuses == [2, 7, 3, None]
    assert f'evoflow_integrity_check_status{{check_id="{warning.id}"}} 2.0' in metrics_text
    assert f'evoflow_integrity_failing{{check_id="{warning.id}"}} 7.0' in metrics_text
