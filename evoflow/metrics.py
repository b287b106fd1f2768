"""Prometheus metrics shared by the whole project, served at /metrics.

With several gunicorn workers, set PROMETHEUS_MULTIPROC_DIR so every worker's samples are
collected (prometheus-client's multiprocess mode); a single process needs nothing.

Apps may also register scrape-time collectors (`scrape_collector_register`): figures computed
from the database when /metrics is read, so they are the same whichever process serves it.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from prometheus_client.registry import Collector

from evoflow.registry import Registry

HTTP_REQUESTS = Counter(
    "evoflow_http_requests_total",
    "HTTP requests by method, route and status",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "evoflow_http_request_seconds", "HTTP request latency by method and route", ["method", "route"]
)
INTEGRITY_CHECK_FAILING = Gauge(
    "evoflow_integrity_failing",
    "Failing rows of each integrity check at its last run",
    ["check_id"],
    multiprocess_mode="mostrecent",
)
# The status of each integrity check at its last run, as a number an alert rule can compare.
INTEGRITY_STATUS_VALUES = {"ok": 0, "warning": 1, "error": 2, "failed": 3}
INTEGRITY_CHECK_STATUS = Gauge(
    "evoflow_integrity_check_status",
    "Status of each integrity check at its last run: 0 ok, 1 warning, 2 error, 3 failed",
    ["check_id"],
    multiprocess_mode="mostrecent",
)
INTEGRITY_ALERTS = Counter(
    "evoflow_integrity_alerts_total",
    "Integrity alerts posted to ALERT_WEBHOOK_URL, by outcome (sent, failed)",
    ["outcome"],
)
TASKS_ENQUEUED = Counter("evoflow_tasks_enqueued_total", "Background tasks enqueued", ["task"])


_scrape_collectors: Registry[tuple[str, Collector]] = Registry(
    "scrape-time collector", key=lambda item: item[0]
)


def scrape_collector_register(name: str, collector: Collector) -> None:
    """Add a collector that /metrics runs on every scrape (an app's `ready()` calls this)."""
    _scrape_collectors.add((name, collector))


def _scrape_time() -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    for _name, collector in _scrape_collectors.items():
        registry.register(collector)
    return generate_latest(registry)


def render_latest() -> tuple[bytes, str]:
    """The exposition text for this process (or every worker, in multiprocess mode), followed
    by the scrape-time collectors' figures."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry) + _scrape_time(), CONTENT_TYPE_LATEST
    return generate_latest(DEFAULT_REGISTRY) + _scrape_time(), CONTENT_TYPE_LATEST
