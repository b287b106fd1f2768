"""Small PostgreSQL helpers shared by every app.

Everything here is transaction-scoped on purpose: with PgBouncer in transaction mode a session
setting or a session-level advisory lock would leak to whoever gets the server connection next.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pgtrigger
from django.conf import settings
from django.db import connection, connections
from django.db.backends.postgresql.psycopg_any import mogrify
from django.db.models import Count, Model, QuerySet
from psycopg.conninfo import make_conninfo

# Keys in Django's database OPTIONS that configure Django or psycopg objects, not libpq.
_DJANGO_ONLY_OPTIONS = {
    "assume_role",
    "context",
    "cursor_factory",
    "isolation_level",
    "pool",
    "prepare_threshold",
    "server_side_binding",
}


def refuse_truncate(name: str) -> pgtrigger.Trigger:
    """A statement-level trigger refusing TRUNCATE of its table. TRUNCATE fires no row trigger,
    so a table whose rows a `pgtrigger.Protect` keeps from DELETE needs this one too. The test
    suite's flush lifts every trigger named `*_no_truncate` (tests/conftest.py)."""
    if not name.endswith("_no_truncate"):
        raise ValueError(f"{name!r}: a TRUNCATE guard's name ends with _no_truncate")
    return pgtrigger.Trigger(
        name=name,
        level=pgtrigger.Statement,
        when=pgtrigger.Before,
        operation=pgtrigger.Truncate,
        func="RAISE EXCEPTION 'pgtrigger: Cannot truncate % table', TG_TABLE_NAME;",
    )


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


def psycopg_conninfo(alias: str = "default", *, application_name: str = "evoflow") -> str:
    """A libpq connection string for a Django database, for code that talks to psycopg itself
    (benchmarks, tests that need a second connection, bulk COPY).

    It carries the same libpq options as Django's own connections (the statement timeout among
    them), so such code runs under the limits the application runs under.
    """
    database = settings.DATABASES[alias]
    params: dict[str, str | int | None] = {
        key: value if isinstance(value, int) else str(value)
        for key, value in (database.get("OPTIONS") or {}).items()
        if key not in _DJANGO_ONLY_OPTIONS
    }
    params.update(
        dbname=database.get("NAME") or None,
        user=database.get("USER") or None,
        password=database.get("PASSWORD") or None,
        host=database.get("HOST") or None,
        port=str(database["PORT"]) if database.get("PORT") else None,
    )
    params.setdefault("application_name", application_name)
    return make_conninfo("", **{key: value for key, value in params.items() if value is not None})


def psycopg_connect_kwargs(alias: str = "default") -> dict[str, Any]:
    """Keyword arguments for `psycopg.connect` beside `psycopg_conninfo(alias)`: the connection
    rules that are psycopg's, not libpq's.

    Behind PgBouncer in transaction mode (`DATABASE_POOLER=transaction`) that is
    `prepare_threshold=None`: a prepared statement lives in one server connection, and the next
    transaction of the same client may get another one. Every raw psycopg connection opens with
    these, so it follows the rules Django's own connections follow.
    """
    options = settings.DATABASES[alias].get("OPTIONS") or {}
    if "prepare_threshold" in options:
        return {"prepare_threshold": options["prepare_threshold"]}
    return {}


def table_row_estimate(model: type[Model], *, using: str = "default") -> int | None:
    """The planner's row count of `model`'s table (pg_class.reltuples, kept by ANALYZE and
    autovacuum), or None when the table has never been analysed. Free, and never a full count."""
    with connections[using].cursor() as cursor:
        cursor.execute(
            "SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass(%s)",
            [model._meta.db_table],
        )
        row = cursor.fetchone()
    if row is None or row[0] is None or row[0] < 0:
        return None
    return int(row[0])


def counts_by_value(queryset: QuerySet, field: str, values: Iterable[str]) -> dict[str, int]:
    """How many rows of `queryset` hold each of `values` in `field`: one GROUP BY over those
    values only (so a partial or leading index on `field` can serve it), every value listed,
    zeros included."""
    wanted = [str(value) for value in values]
    counts = dict.fromkeys(wanted, 0)
    rows = (
        queryset.filter(**{f"{field}__in": wanted})
        .values_list(field)
        .order_by()
        .annotate(total=Count("pk"))
    )
    for value, total in rows:
        counts[value] = total
    return counts


def queryset_sql(queryset: QuerySet) -> str:
    """The queryset's SQL with its parameters bound by the driver, to embed in a larger query.

    For SQL written around an ORM definition (the integrity checks count what a selector
    selects), so the rule has one written form. Percent signs are doubled: the result is meant
    for `cursor.execute(sql, params)` with the caller's own (named) parameters. Compiling binds
    the parameters through psycopg (`mogrify`), never by string formatting.
    """
    sql, params = queryset.query.sql_with_params()
    return mogrify(sql, params, connections[queryset.db]).replace("%", "%%")
