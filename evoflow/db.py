"""Small PostgreSQL helpers shared by every app.

Everything here is transaction-scoped on purpose: with PgBouncer in transaction mode a session
setting or a session-level advisory lock would leak to whoever gets the server connection next.
"""

from __future__ import annotations

from django.db import connection


def advisory_xact_lock(key: str) -> None:
    """Take a transaction-level advisory lock on `key` (released at commit or rollback).

    Must run inside `transaction.atomic()`; two callers with the same key run one after the
    other, on any host.
    """
    if not connection.in_atomic_block:
        raise RuntimeError("advisory_xact_lock needs an open transaction (transaction.atomic)")
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [key])


def set_local_statement_timeout(milliseconds: int) -> None:
    """Bound every following statement of the current transaction to `milliseconds`."""
    if not connection.in_atomic_block:
        raise RuntimeError("set_local_statement_timeout needs an open transaction")
    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config('statement_timeout', %s, true)", [str(milliseconds)])
