"""What the benchmarks that start processes (gunicorn, workers, simulators) share."""

from __future__ import annotations

import socket
from urllib.parse import quote


def database_url() -> str:
    """DATABASE_URL of the database this process uses, for a child process to use the same."""
    from django.conf import settings

    database = settings.DATABASES["default"]
    credentials = quote(database["USER"], safe="")
    if database.get("PASSWORD"):
        credentials += ":" + quote(database["PASSWORD"], safe="")
    return f"postgres://{credentials}@{database['HOST']}:{database['PORT']}/{database['NAME']}"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
