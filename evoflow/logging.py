"""Structured logging: one JSON object a line, each carrying the current request id.

The JSON comes from python-json-logger; this module only adds what it cannot know: the request
id (or sync run's request id) bound where a line was logged. A line's fields: `time` (ISO 8601,
UTC), `level`, `logger`, `message`, `request_id`, every field passed with `extra=` (e.g.
`sync_run_id`), and `exception` (the formatted traceback) when there is one.

`RedactSecretsFilter` keeps secrets that arrive in URLs out of every line: Meta sends the
webhook's verify token in the verification request's query string, which request and access
logs print (gunicorn's access log, Django's development server), so its value is replaced by
`[redacted]` on every handler of the project and in gunicorn's own logs (gunicorn.conf.py).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter as BaseJsonFormatter

from evoflow.requestid import get_request_id

# Every line's fields, and their names there that log consumers rely on.
_FIELDS = ["levelname", "name", "message", "request_id"]
_RENAMED = {"levelname": "level", "name": "logger", "exc_info": "exception"}
# Django passes the request object itself with its request logs: never dumped into a line.
_NOT_LOGGED = [*RESERVED_ATTRS, "request"]


class RequestIdFilter(logging.Filter):
    """Stamps each record with the request id bound where it was logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", None):
            # Django logs a request's failure (django.request) after the middleware has
            # returned, so the request passed along with the record is asked first.
            request = getattr(record, "request", None)
            record.request_id = getattr(request, "request_id", None) or get_request_id()
        return True


class JsonFormatter(BaseJsonFormatter):
    """python-json-logger's formatter with evoflow's field names and the request id."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("rename_fields", _RENAMED)
        kwargs.setdefault("reserved_attrs", _NOT_LOGGED)
        kwargs.setdefault("timestamp", "time")
        super().__init__(_FIELDS, **kwargs)

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        super().add_fields(log_data, record, message_dict)
        # A handler without RequestIdFilter still gets the id bound in this context.
        log_data["request_id"] = getattr(record, "request_id", None) or get_request_id()


REDACTED = "[redacted]"
# Query parameters whose value is a secret, written plainly or percent-encoded ("hub%2Everify_token"
# when a client encodes the dot).
_SECRET_QUERY_VALUE = re.compile(r"(hub(?:\.|%2[eE])verify_token=)[^&\s\"']*")
# A configured secret shorter than this is not searched for as such (it would match too much).
_MIN_LITERAL_LENGTH = 8


def redact_secrets(text: str) -> str:
    """`text` with the verify token's value replaced, whether it appears as a query parameter
    or, once Django's settings are loaded, as the configured token itself."""
    text = _SECRET_QUERY_VALUE.sub(rf"\g<1>{REDACTED}", text)
    token = _configured_verify_token()
    if token and token in text:
        text = text.replace(token, REDACTED)
    return text


def _configured_verify_token() -> str:
    from django.conf import settings

    if not settings.configured:
        return ""  # gunicorn's master process, before Django
    token = str(getattr(settings, "FB_VERIFY_TOKEN", "") or "")
    return token if len(token) >= _MIN_LITERAL_LENGTH else ""


class RedactSecretsFilter(logging.Filter):
    """Rewrites a record whose message holds a secret: the message is formatted once, redacted,
    and kept without its arguments, so no formatter can print the secret again."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is the handler's to report, not ours
            return True
        redacted = redact_secrets(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True
