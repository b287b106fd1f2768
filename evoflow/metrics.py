"""Prometheus metrics shared by the whole project, served at /metrics.

With several gunicorn workers, set PROMETHEUS_MULTIPROC_DIR so every worker's samples are
collected (prometheus-client's multiprocess mode); a single process needs nothing.
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


def render_latest() -> tuple[bytes, str]:
    """The exposition text for this process (or every worker, in multiprocess mode)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(DEFAULT_REGISTRY), CONTENT_TYPE_LATEST
