"""X-Request-ID: taken from the client when safe, made otherwise, returned, and in every log."""

import io
import json
import logging
import re

import pytest

from evoflow.logging import JsonFormatter, RequestIdFilter

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.core.urls")]


def test_client_request_id_is_returned(api_client):
    response = api_client.get("/healthz", HTTP_X_REQUEST_ID="abc-123.retry:2")

    assert response["X-Request-ID"] == "abc-123.retry:2"


def test_missing_request_id_is_created(api_client):
    first = api_client.get("/healthz")["X-Request-ID"]
    second = api_client.get("/healthz")["X-Request-ID"]

    assert re.fullmatch(r"[0-9a-f]{32}", first)
    assert first != second


@pytest.mark.parametrize("unsafe", ["has space", "x" * 200, "line\nbreak", "<script>"])
def test_unsafe_request_id_is_replaced(api_client, unsafe):
    response = api_client.get("/healthz", HTTP_X_REQUEST_ID=unsafe)

    assert re.fullmatch(r"[0-9a-f]{32}", response["X-Request-ID"])


def test_log_lines_written_during_a_request_carry_its_id(api_client):
    # Given a JSON log handler like the one production uses
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    logging.getLogger().addHandler(handler)
    try:
        # When a request logs (the 500 handler logs the failure)
        response = api_client.get("/api/test/broken/", HTTP_X_REQUEST_ID="req-log-1")
    finally:
        logging.getLogger().removeHandler(handler)

    # Then every line it wrote is JSON with the request id
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert response.status_code == 500
    assert lines
    assert {line["request_id"] for line in lines} == {"req-log-1"}
    assert any("RuntimeError" in line.get("exception", "") for line in lines)


def test_error_responses_also_carry_the_request_id(api_client):
    response = api_client.get("/api/test/missing/", HTTP_X_REQUEST_ID="req-404")

    assert response.status_code == 404
    assert response["X-Request-ID"] == "req-404"
