"""Prometheus metrics shared by the whole project, served at /metrics.

Two kinds, so that one scrape of any web process shows what every process did and what the
system is in:

- counters and histograms of events, counted in the process where they happen (requests in the
  web process; syncs, Graph calls and alerts in workers). With PROMETHEUS_MULTIPROC_DIR set to a
  directory every process of the host shares (`make run` sets one up), each process writes its
  samples there and /metrics adds them up (prometheus-client's multiprocess mode);
- state, read from the database at scrape time (`scrape_collector_register`): the same answer
  from any web process on any host, whoever changed it: each integrity check's status at its
  last run (below), and what the apps register (the conversations app: live sync runs, each
  page's last successful sync and failing streak). A scrape whose database reads fail still
  answers, with `evoflow_metrics_database_up 0` and no state metrics.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator

from django.db import DatabaseError, connection, transaction
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from prometheus_client.core import GaugeMetricFamily, Metric

from evoflow.db import set_local_statement_timeout
from evoflow.registry import Registry

logger = logging.getLogger(__name__)

HTTP_REQUESTS = Counter(
    "evoflow_http_requests_total",
    "HTTP requests by method, route and status",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "evoflow_http_request_seconds", "HTTP request latency by method and route", ["method", "route"]
)
# The status of each integrity check at its last run, as a number an alert rule can compare
# (`evoflow_integrity_check_status`, read from the stored results at scrape time).
INTEGRITY_STATUS_VALUES = {"ok": 0, "warning": 1, "error": 2, "failed": 3}
INTEGRITY_ALERTS = Counter(
    "evoflow_integrity_alerts_total",
    "Integrity alerts posted to ALERT_WEBHOOK_URL, by outcome (sent, failed)",
    ["outcome"],
)
TASKS_ENQUEUED = Counter("evoflow_tasks_enqueued_total", "Background tasks enqueued", ["task"])


# -- state read from the database at scrape time -------------------------------------------------

# A scrape's database reads, all of them, get this long: /metrics must answer even when the
# database is slow.
SCRAPE_STATEMENT_TIMEOUT_MS = 2_000

ScrapeCollect = Callable[[], Iterable[Metric]]
_scrape_collectors: Registry[tuple[str, ScrapeCollect]] = Registry(
    "scrape collector", key=lambda item: item[0]
)


def scrape_collector_register(name: str, collect: ScrapeCollect) -> None:
    """Metric families computed from the database on every scrape (an app's `ready()` calls
    this). `collect` runs inside the scrape's transaction, under its statement timeout."""
    _scrape_collectors.add((name, collect))


_INTEGRITY_LATEST = """
SELECT c.check_id, latest.status, latest.failing_count
FROM unnest(%s::text[]) AS c(check_id)
CROSS JOIN LATERAL (
    SELECT r.status, r.failing_count FROM evoflow_integritycheckresult AS r
    JOIN evoflow_integrityrun AS run ON run.id = r.run_id
    WHERE r.check_id = c.check_id AND NOT run.dry_run
    ORDER BY r.created_at DESC, r.id DESC LIMIT 1) AS latest
ORDER BY c.check_id
"""


def _integrity_families() -> Iterator[Metric]:
    """Each registered check's stored result at its last run (a dry run's left out), whichever
    process ran it: the command, a worker's schedule, the admin."""
    from evoflow.integrity.registry import all_checks

    status = GaugeMetricFamily(
        "evoflow_integrity_check_status",
        "Status of each integrity check at its last run: 0 ok, 1 warning, 2 error, 3 failed",
        labels=["check_id"],
    )
    failing = GaugeMetricFamily(
        "evoflow_integrity_failing",
        "Failing rows of each integrity check at its last run",
        labels=["check_id"],
    )
    with connection.cursor() as cursor:
        cursor.execute(_INTEGRITY_LATEST, [[check.id for check in all_checks()]])
        rows = cursor.fetchall()
    for check_id, check_status, failing_count in rows:
        status.add_metric([check_id], INTEGRITY_STATUS_VALUES.get(check_status, 3))
        if check_status != "failed":
            failing.add_metric([check_id], failing_count)
    yield status
    yield failing


scrape_collector_register("evoflow.integrity", _integrity_families)


class _DatabaseStateCollector:
    """Every registered scrape collector, in one short read-only transaction."""

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "evoflow_metrics_database_up",
            "1 when this scrape read the state metrics from the database, 0 when it could not",
        )
        families: list[Metric] = []
        try:
            with transaction.atomic():
                set_local_statement_timeout(SCRAPE_STATEMENT_TIMEOUT_MS)
                for _, collect in sorted(_scrape_collectors.items(), key=lambda item: item[0]):
                    families.extend(collect())
        except DatabaseError:
            logger.warning("metrics: the database state could not be read", exc_info=True)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families


_STATE_REGISTRY = CollectorRegistry(auto_describe=False)
_STATE_REGISTRY.register(_DatabaseStateCollector())


def render_latest() -> tuple[bytes, str]:
    """The exposition text: this process's samples (or, in multiprocess mode, every process's
    of the host), then the state read from the database."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = DEFAULT_REGISTRY
    return generate_latest(registry) + generate_latest(_STATE_REGISTRY), CONTENT_TYPE_LATEST
