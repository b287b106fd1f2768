"""Prometheus metrics of the conversations app (served with the rest at /metrics).

The counters below count in the process where things happen (a worker's sync, the web
process's webhooks); `sync_state_families` is read from the database at every scrape, so any
web process shows the sync state of every page whatever process ran its syncs
(evoflow/metrics.py explains the two kinds).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

WEBHOOK_SIGNATURE_REJECTED = Counter(
    "evoflow_webhook_signature_rejected_total",
    "Webhook POSTs refused with 403 for a missing or wrong X-Hub-Signature-256",
)
WEBHOOK_RECEIPTS = Counter(
    "evoflow_webhook_receipts_total",
    "Webhook receipts by outcome of a processing attempt",
    ["status"],
)
WEBHOOK_EVENTS = Counter(
    "evoflow_webhook_events_total",
    "Webhook events applied (committed), by kind",
    ["kind"],
)
WEBHOOK_PROCESSING_SECONDS = Histogram(
    "evoflow_webhook_processing_seconds",
    "Time from a webhook POST's arrival to its receipt being stored and applied",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SYNC_RUNS = Counter(
    "evoflow_sync_runs_total",
    "Graph sync runs finished, by mode and final status",
    ["mode", "status"],
)
SYNC_RUNNING = Gauge(
    "evoflow_sync_runs_running",
    "Graph sync runs executing in the live processes of this host (evoflow_sync_runs_live"
    " counts them in the database, for every host)",
    multiprocess_mode="livesum",
)
GRAPH_CALLS = Counter(
    "evoflow_graph_calls_total",
    "Graph API calls made by the sync, by edge and outcome",
    ["edge", "outcome"],
)
GRAPH_THROTTLED_WAITS = Counter(
    "evoflow_graph_throttled_waits_total",
    "Graph API calls that first waited for a throttled rate-limit bucket",
)
MESSAGES_INGESTED = Counter(
    "evoflow_messages_ingested_total",
    "Messages stored (new rows), by source",
    ["source"],
)


def sync_state_families() -> Iterator[Metric]:
    """The sync state of every page in use, from the database (registered as a scrape
    collector by ConversationsConfig.ready()). Labels: one series per page (the Facebook page
    id), as many as the pages an operator connected."""
    from conversations import selectors

    live = GaugeMetricFamily(
        "evoflow_sync_runs_live",
        "Graph sync runs queued or running now, by status (from the database)",
        labels=["status"],
    )
    for status, count in selectors.sync_runs_live_counts().items():
        live.add_metric([status], count)
    yield live
    last_success = GaugeMetricFamily(
        "evoflow_sync_page_last_success_timestamp_seconds",
        "When each page's last successful Graph sync finished (Unix time; absent: never)",
        labels=["page_id"],
    )
    streak = GaugeMetricFamily(
        "evoflow_sync_page_unsuccessful_runs",
        "Sync runs of each page ended partial or failed since its last success",
        labels=["page_id"],
    )
    for page in selectors.sync_page_health():
        if page.last_success_at is not None:
            last_success.add_metric([page.page_id], page.last_success_at.timestamp())
        streak.add_metric([page.page_id], page.unsuccessful_since_success)
    yield last_success
    yield streak
