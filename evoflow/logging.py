"""Structured logging: one JSON object a line, each carrying the current request id.

The JSON comes from python-json-logger; this module only adds what it cannot know: the request
id (or sync run's request id) bound where a line was logged. A line's fields: `time` (ISO 8601,
UTC), `level`, `logger`, `message`, `request_id`, every field passed with `extra=` (e.g.
`sync_run_id`), and `exception` (the formatted traceback) when there is one.
"""

from __future__ import annotations

import logging
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
