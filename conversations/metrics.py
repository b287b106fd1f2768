"""Prometheus metrics of the conversations app (served with the rest at /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
    "Graph sync runs executing in this process",
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
