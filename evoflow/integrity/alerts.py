"""Integrity alerts: when a check enters warning or error, and the JSON post that says so.

A check "enters" a status when this run finds it at warning or error and the check's previous
stored result had another status (no earlier result counts as `ok`). The runner decides that
under a per-check advisory lock, in the transaction that stores the result, so two concurrent
runs cannot both see the same transition; the post itself waits for the commit.

The post goes to `ALERT_WEBHOOK_URL` with a short timeout and one retry, only when the first
try surely did not reach the receiver (no connection, or a 5xx/429 answer): a read timeout may
come after the receiver took the alert. Every try carries the same `alert_id` (the stored
result's id) in the body and as `Idempotency-Key`, so a receiver can drop a repeat. A receiver
that is down, slow or answering an error is logged (its host only: a webhook URL often carries
its token) and counted, never raised: an alert must not change the run it reports on.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import requests
from django.conf import settings
from django.urls import reverse
from urllib3.exceptions import NewConnectionError

from evoflow import metrics
from evoflow.http import HttpClient, HttpClientError, RetryPolicy
from evoflow.integrity.registry import IntegrityCheck
from evoflow.models import IntegrityCheckResult, IntegrityRun

logger = logging.getLogger(__name__)

ALERTING_STATUSES = ("warning", "error")


def webhook_host(url: str) -> str:
    """The host (and port) of a URL, without credentials, path or query: safe to log."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{host}:{parts.port}" if parts.port else host


class AlertWebhookClient(HttpClient):
    service = "alert_webhook"

    def _record(self, method: str, url: str, outcome: str, started: float, attempt: int) -> None:
        # The per-attempt log line shows the host only: the token of a webhook URL is as often
        # in its path as in its query, where the shared redaction does not look.
        super()._record(method, webhook_host(url), outcome, started, attempt)

    def error_retry_delay(self, error: requests.RequestException, attempt: int) -> float | None:
        # A read timeout or a dropped connection can come after the receiver took the alert:
        # only a connection that was never made is tried again, so no alert is posted twice.
        if not request_never_sent(error):
            return None
        return super().error_retry_delay(error, attempt)


def request_never_sent(error: requests.RequestException) -> bool:
    """Whether `error` happened before any byte of the request left: no connection was made."""
    if isinstance(error, requests.ConnectTimeout):
        return True
    # Refused or unresolvable: requests wraps urllib3's error, whose reason says which step failed.
    reason = getattr(error.args[0], "reason", None) if error.args else None
    return isinstance(error, requests.ConnectionError) and isinstance(reason, NewConnectionError)


@lru_cache(maxsize=4)
def _client_for(origin: str, timeout: float) -> AlertWebhookClient:
    return AlertWebhookClient(
        origin,
        timeout=(min(3.05, timeout), timeout),
        retry=RetryPolicy(max_attempts=2, backoff_base=0.5, backoff_max=1.0, retry_after_max=2.0),
        pool_size=2,
    )


def alert_webhook_client(*, url: str) -> AlertWebhookClient:
    """The process's client for the alert receiver (one pooled session per host and timeout)."""
    parts = urlsplit(url)
    return _client_for(f"{parts.scheme}://{parts.netloc}", settings.ALERT_WEBHOOK_TIMEOUT_SECONDS)


def check_previous_status(*, check_id: str) -> str:
    """The status of the check's latest stored result that measured something, `ok` if none.

    A `failed` result (the query timed out or broke) says nothing about the data, so it is
    skipped: a check at warning whose query fails once and then finds the same warning again
    has not entered anything.
    """
    status = (
        IntegrityCheckResult.objects.filter(check_id=check_id)
        .exclude(status=IntegrityCheckResult.Status.FAILED)
        .order_by("-created_at", "-pk")
        .values_list("status", flat=True)
        .first()
    )
    return status or IntegrityCheckResult.Status.OK


def check_is_entering(*, status: str, previous_status: str) -> bool:
    """Whether `status` is a warning or error the check was not in at its previous result."""
    return status in ALERTING_STATUSES and status != previous_status


def alert_document(
    *,
    run: IntegrityRun,
    check: IntegrityCheck,
    result: IntegrityCheckResult,
    previous_status: str,
) -> dict[str, Any]:
    """The JSON body of an alert: the result and where the run is in the admin.

    `alert_id` is the stored result's id: the same on every try of one alert, so a receiver can
    drop a repeat.
    """
    return {
        "type": "integrity_check",
        "alert_id": result.pk,
        "check_id": check.id,
        "status": result.status,
        "previous_status": previous_status,
        "failing_count": result.failing_count,
        "population": result.population,
        "ratio": result.ratio,
        "sample_ids": list(result.sample_ids),
        "thresholds": check.thresholds,
        "description": check.description,
        "run_id": run.pk,
        "checked_at": result.created_at.isoformat(),
        "admin_url": reverse("admin:evoflow_integrityrun_change", args=[run.pk]),
    }


def alert_idempotency_key(*, result: IntegrityCheckResult) -> str:
    """The `Idempotency-Key` of the alert about `result`: `integrity-alert-<alert_id>`."""
    return f"integrity-alert-{result.pk}"


def integrity_alert_send(
    *,
    run: IntegrityRun,
    check: IntegrityCheck,
    result: IntegrityCheckResult,
    previous_status: str,
) -> bool:
    """Post the alert of a check entering warning or error; True when the receiver took it.

    Without `ALERT_WEBHOOK_URL` nothing is posted. Any failure is logged and counted, not raised.
    """
    url = settings.ALERT_WEBHOOK_URL
    if not url:
        return False
    host = webhook_host(url)
    extra = {"check_id": check.id, "status": result.status, "webhook_host": host}
    try:
        document = alert_document(
            run=run, check=check, result=result, previous_status=previous_status
        )
        response = alert_webhook_client(url=url).request(
            "POST", url, json=document, idempotency_key=alert_idempotency_key(result=result)
        )
    except HttpClientError as exc:
        if exc.response is not None:
            reason = f"HTTP {exc.response.status_code}"
        elif isinstance(exc.__cause__, requests.RequestException) and not request_never_sent(
            exc.__cause__
        ):
            reason = "no answer in time or connection lost (not retried: it may have arrived)"
        else:
            reason = "no answer (connection refused or timed out)"
    except Exception as exc:  # a malformed URL, a TLS error: still never the run's problem
        reason = type(exc).__name__
    else:
        if 200 <= response.status_code < 300:
            metrics.INTEGRITY_ALERTS.labels("sent").inc()
            logger.info(
                "integrity alert for %s (%s) sent to %s", check.id, result.status, host, extra=extra
            )
            return True
        reason = f"HTTP {response.status_code}"
    metrics.INTEGRITY_ALERTS.labels("failed").inc()
    logger.error(
        "integrity alert for %s (%s) could not be posted to %s: %s",
        check.id,
        result.status,
        host,
        reason,
        extra={**extra, "reason": reason},
    )
    return False
