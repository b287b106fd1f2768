"""Prometheus metrics of the conversations app (served with the rest at /metrics)."""

from __future__ import annotations

from prometheus_client import Counter

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
