"""The base of every outgoing HTTP client (the CRM, the Graph API, alert webhooks).

One pooled `requests.Session` per client, connect and read timeouts on every call, retries with
exponential backoff and full jitter on connection errors, timeouts, 5xx and 429 (a 429's
`Retry-After` is honoured), the current request id sent as `X-Request-ID`, one structured log
line and metrics per attempt, and no secret in any log: query parameters that carry tokens are
redacted and headers are never logged.

Service clients subclass `HttpClient` and override `retry_delay` where the service signals
throttling its own way (the Graph API puts error codes in the body), and `error_retry_delay`
where a call the service may have received must not be sent again (alert webhooks).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import requests
from prometheus_client import Counter, Histogram
from requests.adapters import HTTPAdapter

from evoflow.requestid import get_request_id

logger = logging.getLogger(__name__)

REQUESTS = Counter(
    "evoflow_http_client_requests_total",
    "Outgoing HTTP attempts by service, method and outcome (status code or error kind)",
    ["service", "method", "outcome"],
)
LATENCY = Histogram(
    "evoflow_http_client_request_seconds",
    "Outgoing HTTP attempt latency by service",
    ["service"],
)

SECRET_QUERY_PARAMETERS = frozenset(
    {"access_token", "appsecret_proof", "client_secret", "token", "api_key", "key", "password"}
)
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})


class HttpClientError(Exception):
    """An outgoing call failed for good (after its retries)."""

    def __init__(self, message: str, *, response: requests.Response | None = None) -> None:
        super().__init__(message)
        self.response = response


class UpstreamUnavailable(HttpClientError):
    """Connection errors, timeouts or 5xx/429 answers until the attempts ran out."""


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 4
    backoff_base: float = 0.25  # seconds before the second attempt, doubled each time after
    backoff_max: float = 8.0
    retry_after_max: float = 60.0  # a longer Retry-After is not waited for inside one call

    def backoff(self, attempt: int) -> float:
        """Full jitter: a random wait up to base * 2^(attempt-1), capped."""
        ceiling = min(self.backoff_max, self.backoff_base * (2 ** (attempt - 1)))
        return random.uniform(0, ceiling)


def redact_url(url: str) -> str:
    """The URL with token-like query parameters replaced by `***`."""
    parts = urlsplit(url)
    if not parts.query:
        return url
    query = [
        (name, "***" if name.lower() in SECRET_QUERY_PARAMETERS else value)
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urlunsplit(parts._replace(query=urlencode(query, safe="*")))


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


class HttpClient:
    """A pooled, retrying, logged HTTP client for one external service."""

    service = "http"

    def __init__(
        self,
        base_url: str,
        *,
        timeout: tuple[float, float] = (3.05, 15.0),
        retry: RetryPolicy | None = None,
        headers: Mapping[str, str] | None = None,
        pool_size: int = 10,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/") + "/"
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.sleep = sleep
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.update({"User-Agent": "evoflow", **(headers or {})})

    def url_for(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            return path
        return urljoin(self.base_url, path.lstrip("/"))

    def retry_delay(self, response: requests.Response, attempt: int) -> float | None:
        """Seconds to wait before retrying `response`, or None when it is final."""
        if response.status_code not in RETRYABLE_STATUSES:
            return None
        if response.status_code == 429:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if retry_after is not None:
                return min(retry_after, self.retry.retry_after_max)
        return self.retry.backoff(attempt)

    def error_retry_delay(self, error: requests.RequestException, attempt: int) -> float | None:
        """Seconds to wait before retrying after `error` (no answer came), or None to give up.

        Every connection error and timeout is retried by default; a client whose calls must not
        be repeated once the service may have received them overrides this.
        """
        return self.retry.backoff(attempt)

    def before_attempt(self) -> None:
        """Called before every attempt, retries included (a rate limiter waits here)."""

    def after_attempt(self, response: requests.Response) -> None:
        """Called with every answer received, before deciding on a retry."""

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> requests.Response:
        """Send the request, retrying what is worth retrying; returns the final response.

        A 4xx other than 429 is returned as is (the caller knows what a 404 means for it);
        running out of attempts raises UpstreamUnavailable.
        """
        url = self.url_for(path)
        call_headers = {"X-Request-ID": get_request_id(), **(headers or {})}
        if idempotency_key:
            call_headers["Idempotency-Key"] = idempotency_key
        last_error: str = ""
        response: requests.Response | None = None
        for attempt in range(1, self.retry.max_attempts + 1):
            self.before_attempt()
            started = time.perf_counter()
            try:
                response = self.session.request(
                    method,
                    url,
                    params=params,
                    json=json,
                    headers=call_headers,
                    timeout=self.timeout,
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                outcome = "timeout" if isinstance(exc, requests.Timeout) else "connection_error"
                last_error = f"{outcome}: {type(exc).__name__}"
                self._record(method, url, outcome, started, attempt)
                delay: float | None = self.error_retry_delay(exc, attempt)
                response = None
                if delay is None:
                    raise UpstreamUnavailable(
                        f"{self.service} {method} {redact_url(url)} failed at attempt "
                        f"{attempt} ({last_error}, not retried)"
                    ) from exc
            else:
                self._record(method, response.url, str(response.status_code), started, attempt)
                self.after_attempt(response)
                delay = self.retry_delay(response, attempt)
                if delay is None:
                    return response
                last_error = f"HTTP {response.status_code}"
            if attempt < self.retry.max_attempts and delay is not None:
                self.sleep(delay)
        raise UpstreamUnavailable(
            f"{self.service} {method} {redact_url(url)} failed after "
            f"{self.retry.max_attempts} attempts ({last_error})",
            response=response,
        )

    def _record(self, method: str, url: str, outcome: str, started: float, attempt: int) -> None:
        elapsed = time.perf_counter() - started
        REQUESTS.labels(self.service, method, outcome).inc()
        LATENCY.labels(self.service).observe(elapsed)
        logger.info(
            "%s %s %s -> %s in %.0f ms (attempt %d)",
            self.service,
            method,
            redact_url(url),
            outcome,
            elapsed * 1000,
            attempt,
            extra={"service": self.service, "outcome": outcome, "attempt": attempt},
        )

    def close(self) -> None:
        self.session.close()
