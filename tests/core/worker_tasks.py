"""Task functions that the tests enqueue and a real worker runs."""

from pathlib import Path


def write_marker(path: str, text: str) -> str:
    Path(path).write_text(text)
    return text
