"""Where the embedded local PostgreSQL cluster listens, and its `DATABASE_URL`.

The settings fall back to this URL when `DATABASE_URL` is not set, and `devtools.localdb` (which
creates, starts and stops that cluster) builds the same URL from here, so both always agree.
Kept apart from `devtools` so that production settings never import development tooling.
This module is imported by the settings, so it must not import Django.
"""

from __future__ import annotations

DEFAULT_PORT = 54329
DATABASE_NAME = "evoflow"
SUPERUSER = "postgres"


def database_url(port: int = DEFAULT_PORT, database: str = DATABASE_NAME) -> str:
    return f"postgres://{SUPERUSER}@127.0.0.1:{port}/{database}"
