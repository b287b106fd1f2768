"""Request ids and request metrics for every HTTP request; the API's 503 when the database is
down in views outside DRF."""

from __future__ import annotations

import time
from collections.abc import Callable

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse

from evoflow import metrics
from evoflow.api.errors import (
    DATABASE_RETRY_AFTER_SECONDS,
    JSON_PATH_PREFIXES,
    database_unavailable,
)
from evoflow.requestid import _current, accept_or_create

REQUEST_ID_HEADER = "X-Request-ID"


class RequestIdMiddleware:
    """Takes the client's X-Request-ID (or makes one), binds it for logs, and returns it."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = accept_or_create(request.headers.get(REQUEST_ID_HEADER))
        request.request_id = request_id  # type: ignore[attr-defined]
        token = _current.set(request_id)
        try:
            response = self.get_response(request)
        finally:
            _current.reset(token)
        response[REQUEST_ID_HEADER] = request_id
        return response


class MetricsMiddleware:
    """Counts requests and their latency by route (the URL pattern, never the raw path)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        # Every label value comes from a closed set, whatever the client sends: the method
        # (anything else is "other"), the URL pattern that matched (or "unmatched"), the status.
        method = request_method_label(request.method)
        route = request_route_label(request)
        metrics.HTTP_REQUESTS.labels(method, route, str(response.status_code)).inc()
        metrics.HTTP_LATENCY.labels(method, route).observe(time.perf_counter() - started)
        return response


# The methods a label names; any other method a client invents counts as "other".
METRIC_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"})


def request_method_label(method: str | None) -> str:
    return method if method in METRIC_METHODS else "other"


def request_route_label(request: HttpRequest) -> str:
    match = getattr(request, "resolver_match", None)
    return match.route if match and match.route else "unmatched"


class DatabaseUnavailableMiddleware:
    """A view outside DRF under the API's paths (DRF's own views have the API's exception
    handler) whose database does not answer gets the API's 503 `database_unavailable`, logged
    once without a traceback, as `/healthz` does."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, OperationalError | InterfaceError):
            return None
        if not request.path.startswith(JSON_PATH_PREFIXES):
            return None
        response = JsonResponse(
            database_unavailable(f"{request.method} {request.path}", exception), status=503
        )
        response["Retry-After"] = str(DATABASE_RETRY_AFTER_SECONDS)
        return response
