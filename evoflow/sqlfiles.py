"""The SQL the apps keep in files: reading it, and comparing it with a live database.

Each app keeps the current definition of its SQL functions and of its longer trigger bodies in
`<app>/sql/*.sql` (see docs/sql.md):

* a trigger body file is read by the model that declares the trigger through django-pgtrigger
  (`trigger_body`); pgtrigger freezes the body into the migration it generates, so editing the
  file shows up in `makemigrations` like any model change;
* a function file is applied by migrations, each through a frozen copy next to it
  (`migration_sql`): a later edit of the app's file never changes what an old migration does.

`functions_drift` and `triggers_missing` compare the files with a database; the drift test runs
them against the migrated test database.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from django.apps import apps

# `-- trigger: <table>.<name>` in a file's header names a trigger the file's SQL is for.
_TRIGGER_LINE = re.compile(r"^--\s*trigger:\s*(?P<table>\w+)\.(?P<name>\w+)\s*$", re.MULTILINE)
_FUNCTION_NAME = re.compile(
    r"\bCREATE\s+(?:OR\s+REPLACE\s+)?FUNCTION\s+(?P<name>\w+)\s*\(", re.IGNORECASE
)
# Where the file's functions are created, inside the caller's transaction, to be compared.
_SCRATCH_SCHEMA = "evoflow_sql_drift"


def sql_text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def migration_sql(migration_file: str, name: str) -> str:
    """The frozen SQL file `sql/<name>` next to a migration (pass the migration's `__file__`).

    Migrations apply these copies, never the app's live `sql/` files, so that history stays
    what it was when each migration was written.
    """
    return sql_text(Path(migration_file).resolve().parent / "sql" / name)


def trigger_body(module_file: str, name: str) -> str:
    """A trigger function body kept in `sql/<name>` next to a module (pass its `__file__`).

    The file's header (its first lines starting with `--`) says what the body is for and is left
    out: what pgtrigger receives, and hashes into its migrations, is the body alone.
    """
    lines = sql_text(Path(module_file).resolve().parent / "sql" / name).splitlines(keepends=True)
    start = 0
    while start < len(lines) and lines[start].startswith("--"):
        start += 1
    return "".join(lines[start:])


def app_sql_files() -> list[Path]:
    """Every `<app>/sql/*.sql` file of the project's installed apps, sorted."""
    files: list[Path] = []
    for config in apps.get_app_configs():
        directory = Path(config.path) / "sql"
        if directory.is_dir() and "site-packages" not in directory.parts:
            files.extend(sorted(directory.glob("*.sql")))
    return files


def function_names(sql: str) -> list[str]:
    """The functions a file creates, in order of appearance, each once."""
    return list(dict.fromkeys(match["name"] for match in _FUNCTION_NAME.finditer(sql)))


def trigger_names(sql: str) -> list[tuple[str, str]]:
    """(table, trigger name) for every `-- trigger: table.name` line of a file."""
    return [(match["table"], match["name"]) for match in _TRIGGER_LINE.finditer(sql)]


def _normalised(definition: str) -> str:
    # Runs of whitespace are layout; any other change (a token, a literal, a comment's words)
    # is a change of the definition.
    return " ".join(definition.split())


def _definitions(cursor: Any, *, schema: str, name: str) -> dict[str, str]:
    cursor.execute(
        "SELECT pg_get_function_identity_arguments(p.oid), pg_get_functiondef(p.oid)"
        " FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace"
        " WHERE n.nspname = %s AND p.proname = %s",
        [schema, name],
    )
    return {str(arguments): str(definition) for arguments, definition in cursor.fetchall()}


def functions_drift(connection: Any, sql: str, *, schema: str = "public") -> list[str]:
    """How the live functions differ from the ones `sql` creates; empty when they agree.

    The file's statements are run in a scratch schema inside the caller's transaction (the
    caller must hold one and roll it back), so both sides are printed by the same
    `pg_get_functiondef` and only a real difference remains: a changed body or signature, a
    missing function, or a live overload the file does not define.
    """
    names = function_names(sql)
    if not names:
        return []  # a trigger body file: pgtrigger compares those (see the drift test)
    if not connection.in_atomic_block:
        raise RuntimeError("functions_drift needs an open transaction it can roll back")
    problems: list[str] = []
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('search_path')")
        (search_path,) = cursor.fetchone()
        cursor.execute(f"CREATE SCHEMA {_SCRATCH_SCHEMA}")
        # The file's unqualified names are created in the scratch schema, and read the app's
        # tables from `schema` as migrations do.
        scratch_path = f"{_SCRATCH_SCHEMA},{schema}"
        cursor.execute("SELECT set_config('search_path', %s, true)", [scratch_path])
        cursor.execute(sql)
        cursor.execute("SELECT set_config('search_path', %s, true)", [search_path])
        for name in names:
            wanted = _definitions(cursor, schema=_SCRATCH_SCHEMA, name=name)
            live = _definitions(cursor, schema=schema, name=name)
            for arguments, definition in wanted.items():
                expected = definition.replace(f"{_SCRATCH_SCHEMA}.", f"{schema}.", 1)
                if arguments not in live:
                    problems.append(f"{name}({arguments}): missing from the database")
                elif _normalised(live[arguments]) != _normalised(expected):
                    problems.append(f"{name}({arguments}): the database's body differs")
            problems.extend(
                f"{name}({arguments}): in the database but not in the file"
                for arguments in live.keys() - wanted.keys()
            )
        cursor.execute(f"DROP SCHEMA {_SCRATCH_SCHEMA} CASCADE")
    return problems


def triggers_missing(connection: Any, sql: str) -> list[str]:
    """The triggers a file names that are absent or disabled in the database."""
    problems: list[str] = []
    with connection.cursor() as cursor:
        for table, name in trigger_names(sql):
            # pgtrigger installs `name` as pgtrigger_<name>_<hash of the model>.
            cursor.execute(
                "SELECT t.tgenabled FROM pg_trigger AS t JOIN pg_class AS c ON c.oid = t.tgrelid"
                " WHERE c.relname = %s AND NOT t.tgisinternal"
                " AND (t.tgname = %s OR t.tgname LIKE %s)",
                [table, name, f"pgtrigger\\_{name}\\_%"],
            )
            states = [str(row[0]) for row in cursor.fetchall()]
            if not states:
                problems.append(f"{table}.{name}: no such trigger")
            elif any(state not in ("O", "A") for state in states):
                problems.append(f"{table}.{name}: disabled")
    return problems
