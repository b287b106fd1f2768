"""The JSON log lines: python-json-logger's formatter, with the field names consumers rely on."""

import io
import json
import logging
from collections.abc import Callable
from datetime import datetime

from pythonjsonlogger.json import JsonFormatter as LibraryJsonFormatter

from evoflow.logging import JsonFormatter, RequestIdFilter
from evoflow.requestid import bound_request_id


def _lines(log: Callable[[logging.Logger], None]) -> list[dict]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tests.json_logging")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        log(logger)
    finally:
        logger.removeHandler(handler)
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_line_has_the_documented_fields_and_the_extra_ones():
    with bound_request_id("req-json-1"):
        [line] = _lines(
            lambda logger: logger.warning(
                "page %s synced", "42", extra={"sync_run_id": 7, "request": object()}
            )
        )

    assert set(line) == {"time", "level", "logger", "message", "request_id", "sync_run_id"}
    assert line["level"] == "WARNING"
    assert line["logger"] == "tests.json_logging"
    assert line["message"] == "page 42 synced"
    assert line["request_id"] == "req-json-1"
    assert line["sync_run_id"] == 7
    assert datetime.fromisoformat(line["time"]).utcoffset().total_seconds() == 0


def test_an_exception_is_one_field_and_the_formatter_is_the_library_one():
    def log(logger: logging.Logger) -> None:
        try:
            raise ValueError("bad value")
        except ValueError:
            logger.exception("failed")

    [line] = _lines(log)

    assert line["message"] == "failed"
    assert "ValueError: bad value" in line["exception"]
    assert issubclass(JsonFormatter, LibraryJsonFormatter)
