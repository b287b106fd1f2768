"""One error format for the whole API: `{"code": "<stable code>", "detail": "<for humans>"}`.

Validation errors add `"errors"` with the field messages. Codes are constants, so clients can
branch on them; the detail may be reworded at any time. A service's refusal is a
`evoflow.errors.DomainError`: the handler below answers it with its own code, status and extra
fields, so views never translate errors themselves.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import InterfaceError, OperationalError, connections
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler
from rest_framework.views import set_rollback

from evoflow.errors import DomainError

logger = logging.getLogger(__name__)

BAD_REQUEST = "bad_request"
VALIDATION_ERROR = "validation_error"
NOT_AUTHENTICATED = "not_authenticated"
AUTHENTICATION_FAILED = "authentication_failed"
PERMISSION_DENIED = "permission_denied"
NOT_FOUND = "not_found"
METHOD_NOT_ALLOWED = "method_not_allowed"
NOT_ACCEPTABLE = "not_acceptable"
UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
CONFLICT = "conflict"
THROTTLED = "throttled"
SERVER_ERROR = "server_error"
DATABASE_UNAVAILABLE = "database_unavailable"

# What a client may do while the database does not answer: try again shortly.
DATABASE_RETRY_AFTER_SECONDS = 5

# Outside DRF views, paths under these prefixes get JSON errors too; the admin keeps HTML.
JSON_PATH_PREFIXES = ("/api/", "/webhooks/", "/healthz", "/metrics")

CODE_BY_STATUS = {
    400: BAD_REQUEST,
    401: NOT_AUTHENTICATED,
    403: PERMISSION_DENIED,
    404: NOT_FOUND,
    405: METHOD_NOT_ALLOWED,
    406: NOT_ACCEPTABLE,
    409: CONFLICT,
    415: UNSUPPORTED_MEDIA_TYPE,
    429: THROTTLED,
    500: SERVER_ERROR,
}


def error_body(code: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {"code": code, "detail": detail, **extra}


def _flatten_detail(detail: Any) -> str:
    if isinstance(detail, list) and detail:
        return _flatten_detail(detail[0])
    if isinstance(detail, dict) and detail:
        key, value = next(iter(detail.items()))
        text = _flatten_detail(value)
        return text if key == "non_field_errors" else f"{key}: {text}"
    return str(detail)


def database_unavailable(request_label: str, exc: Exception) -> dict[str, Any]:
    """The 503 body for a database that does not answer, logged once and without a traceback:
    while the database is down every request fails the same way, and a traceback per request
    would bury everything else in the log."""
    logger.warning(
        "database unavailable during %s: %s: %s",
        request_label,
        type(exc).__name__,
        str(exc).strip().splitlines()[0] if str(exc).strip() else "",
    )
    # A broken connection is dropped, so the next request connects afresh instead of reusing it.
    for connection in connections.all(initialized_only=True):
        connection.close_if_unusable_or_obsolete()
    return error_body(DATABASE_UNAVAILABLE, "The database does not answer; try again shortly.")


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    """DRF's handler, re-shaped; anything unexpected becomes a logged, detail-free 500."""
    if isinstance(exc, OperationalError | InterfaceError):
        request = context.get("request")
        label = f"{request.method} {request.path}" if request is not None else "a request"
        set_rollback()
        return Response(
            database_unavailable(label, exc),
            status=503,
            headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
        )
    if isinstance(exc, DomainError):
        # As DRF does for its own exceptions: an atomic request's writes are rolled back.
        set_rollback()
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
        return Response(
            error_body(exc.code, exc.detail, **exc.extra), status=exc.status, headers=headers
        )
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, DjangoValidationError):
        # A model or form field's validation reached a view (a bad lookup value, a full_clean
        # in a service): bad input, not a server error.
        exc = exceptions.ValidationError(
            exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        )

    response = drf_exception_handler(exc, context)
    if response is None:
        logger.exception("unhandled error in %s", context.get("view").__class__.__name__)
        return Response(error_body(SERVER_ERROR, "Internal server error."), status=500)

    if isinstance(exc, exceptions.ValidationError):
        body = error_body(VALIDATION_ERROR, _flatten_detail(exc.detail), errors=exc.detail)
    elif isinstance(exc, exceptions.AuthenticationFailed):
        body = error_body(AUTHENTICATION_FAILED, str(exc.detail))
    elif isinstance(exc, exceptions.APIException):
        code = CODE_BY_STATUS.get(response.status_code, str(exc.default_code))
        body = error_body(code, _flatten_detail(exc.detail))
    else:
        body = error_body(CODE_BY_STATUS.get(response.status_code, "error"), "Request failed.")
    response.data = body
    return response


def json_error(request: HttpRequest, status_code: int, detail: str) -> JsonResponse:
    """Plain-Django error responses (outside DRF views) in the same shape."""
    return JsonResponse(
        error_body(CODE_BY_STATUS.get(status_code, "error"), detail), status=status_code
    )


def _wants_json(request: HttpRequest) -> bool:
    return request.path.startswith(JSON_PATH_PREFIXES) or "application/json" in request.headers.get(
        "Accept", ""
    )


def handler400(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _wants_json(request):
        return json_error(request, 400, "Bad request.")
    return defaults.bad_request(request, exception or Exception("bad request"))


def handler403(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _wants_json(request):
        return json_error(request, 403, "You do not have permission to perform this action.")
    return defaults.permission_denied(request, exception or Exception("forbidden"))


def handler404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _wants_json(request):
        return json_error(request, 404, "Not found.")
    return defaults.page_not_found(request, exception)


def handler500(request: HttpRequest) -> HttpResponse:
    if _wants_json(request):
        return json_error(request, 500, "Internal server error.")
    return defaults.server_error(request)
