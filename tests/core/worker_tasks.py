"""Task functions that the tests enqueue and a real worker runs."""

from pathlib import Path

from evoflow.requestid import get_request_id


def write_marker(path: str, text: str) -> str:
    Path(path).write_text(text)
    return text


def report_request_id() -> str:
    """What the worker sees as the current request id while it runs this task."""
    return get_request_id()
