"""The state part of /metrics is read from the database at scrape time; a database that does not
answer in time leaves the scrape answering, with `evoflow_metrics_database_up 0`."""

from __future__ import annotations

import pytest
from django.db import connection
from prometheus_client.core import GaugeMetricFamily

from evoflow import metrics

pytestmark = pytest.mark.django_db


def _slow_collector():
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_sleep(5)")
    yield GaugeMetricFamily("test_never_reached", "not reached")


@pytest.fixture
def slow_database(monkeypatch):
    monkeypatch.setattr(metrics, "SCRAPE_STATEMENT_TIMEOUT_MS", 200)
    metrics.scrape_collector_register("test.slow", _slow_collector)
    yield
    metrics._scrape_collectors.remove("test.slow")


def test_the_state_is_served_with_the_database_up(client):
    response = client.get("/metrics")

    text = response.content.decode()
    assert response.status_code == 200
    assert "evoflow_metrics_database_up 1.0" in text
    assert 'evoflow_sync_runs_live{status="running"} 0.0' in text


def test_a_database_past_the_scrape_timeout_leaves_the_scrape_answering(client, slow_database):
    response = client.get("/metrics")

    text = response.content.decode()
    assert response.status_code == 200
    assert "evoflow_metrics_database_up 0.0" in text
    assert "test_never_reached" not in text
    assert "evoflow_sync_runs_live{" not in text  # no state half-read
    assert "evoflow_http_requests_total" in text  # the process's own counters still there
