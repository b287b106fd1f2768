"""The triggers and SQL functions the invariants rest on, and the check that they are in place.

D1, D3, J3, C4 and the conversation counters hold because PostgreSQL runs a trigger or a
function on every write. One that is missing, disabled (`ALTER TABLE ... DISABLE TRIGGER`) or
replaced by another body stops guarding silently; the check `core.required_triggers` says so.

Each app names its own in its `AppConfig.ready()` (`required_sql_register`): the pgtrigger
triggers it relies on (by URI, `app_label.Model:name`) and its `sql/` files that define
functions. Naming them keeps a trigger deleted from a model's `Meta.triggers` from leaving the
check unnoticed (it is then reported as not declared). Every trigger pgtrigger knows of is
required too, so one added later is watched before anyone lists it.

What "the same body" means is what the drift test means (docs/sql.md), measured without DDL so
that the check is one read-only query like every other: the body PostgreSQL stores (`prosrc`)
must equal the body the code declares (pgtrigger's compiled function for a trigger, the
dollar-quoted body in the file for a function), runs of whitespace being layout.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pgtrigger
from django.apps import apps

from evoflow.registry import Registry


@dataclass(frozen=True)
class RequiredSql:
    """What one app relies on: its pgtrigger triggers (URIs) and its function files."""

    app_label: str
    triggers: tuple[str, ...] = ()
    function_files: tuple[str, ...] = ()


_registry: Registry[RequiredSql] = Registry("required SQL", key=lambda item: item.app_label)


def required_sql_register(
    *, app_label: str, triggers: Iterable[str] = (), function_files: Iterable[str] = ()
) -> RequiredSql:
    """Name the triggers (`app_label.Model:name`) and function files (in `<app>/sql/`) an app's
    invariants need; called from the app's `ready()`."""
    return _registry.add(
        RequiredSql(
            app_label=app_label, triggers=tuple(triggers), function_files=tuple(function_files)
        )
    )


def required_sql() -> tuple[RequiredSql, ...]:
    return _registry.items()


@dataclass(frozen=True)
class Expectation:
    """One object the database must hold, as the check's query compares it.

    `problem` is set when the code itself cannot say what to expect (a trigger named by its app
    but no longer declared, a file that is gone): the check reports it as it is.
    """

    name: str
    table: str = ""
    trigger_pgid: str = ""
    function_name: str = ""
    body_md5: str = ""
    problem: str = ""


# Whitespace as both sides normalise it: Python here, `regexp_replace` in the query.
_WHITESPACE = re.compile(r"[ \t\n\r\f\v]+")
_SQL_WHITESPACE = r"[ \t\n\r\f\v]+"
_TRIGGER_FUNCTION = re.compile(
    r"CREATE OR REPLACE FUNCTION (?P<pgid>\w+)\(\)\s*RETURNS TRIGGER AS \$\$(?P<body>.*?)\$\$"
    r" LANGUAGE plpgsql;",
    re.DOTALL,
)
_FILE_FUNCTION = re.compile(
    r"\bCREATE\s+(?:OR\s+REPLACE\s+)?FUNCTION\s+(?P<name>\w+)\s*\(.*?\bAS\s+(?P<tag>\$\w*\$)"
    r"(?P<body>.*?)(?P=tag)",
    re.DOTALL | re.IGNORECASE,
)


def body_md5(body: str) -> str:
    return hashlib.md5(_WHITESPACE.sub(" ", body).strip(" ").encode()).hexdigest()  # noqa: S324


def _trigger_expectation(uri: str, declared: dict[str, tuple]) -> Expectation:
    if uri not in declared:
        return Expectation(name=uri, problem="not declared in the code")
    model, trigger = declared[uri]
    compiled = str(trigger.compile(model).sql)
    match = _TRIGGER_FUNCTION.search(compiled)
    if match is None:  # pragma: no cover - pgtrigger's install template changed
        raise RuntimeError(f"cannot read the function pgtrigger installs for {uri}")
    return Expectation(
        name=uri,
        table=model._meta.db_table,
        trigger_pgid=trigger.get_pgid(model),
        function_name=match["pgid"],
        body_md5=body_md5(match["body"]),
    )


def _function_expectations(app_label: str, file_name: str) -> list[Expectation]:
    path = Path(apps.get_app_config(app_label).path) / "sql" / file_name
    label = f"{app_label}/sql/{file_name}"
    if not path.is_file():
        return [Expectation(name=label, problem="the file is missing")]
    return [
        Expectation(
            name=f"function {match['name']} ({label})",
            function_name=match["name"],
            body_md5=body_md5(match["body"]),
        )
        for match in _FILE_FUNCTION.finditer(path.read_text(encoding="utf-8"))
    ]


def expectations() -> list[Expectation]:
    """Every required trigger and function: those the apps name, then any other pgtrigger
    trigger, each once."""
    declared = {
        trigger.get_uri(model): (model, trigger) for model, trigger in pgtrigger.registered()
    }
    uris: dict[str, None] = {}
    functions: list[Expectation] = []
    for item in required_sql():
        uris.update(dict.fromkeys(item.triggers))
        for file_name in item.function_files:
            functions.extend(_function_expectations(item.app_label, file_name))
    uris.update(dict.fromkeys(sorted(declared)))
    return [_trigger_expectation(uri, declared) for uri in uris] + functions


def _literal(value: str) -> str:
    # The values are identifiers and hex digests from the code, never user input; quoted anyway.
    return "'" + value.replace("'", "''") + "'"


def required_triggers_sql() -> str:
    """The check's query: one row with the failing count, the population and the problems
    (`<name>: <what is wrong>`) as samples."""
    rows = ",\n        ".join(
        "("
        + ", ".join(
            _literal(value)
            for value in (
                expectation.name,
                expectation.table,
                expectation.trigger_pgid,
                expectation.function_name,
                expectation.body_md5,
                expectation.problem,
            )
        )
        + ")"
        for expectation in expectations()
    )
    normalised = f"btrim(regexp_replace(fn.prosrc, '{_SQL_WHITESPACE}', ' ', 'g'), ' ')"
    return f"""
WITH wanted (name, table_name, trigger_pgid, function_name, body_md5, problem) AS (
    VALUES
        {rows}
),
judged AS (
    SELECT wanted.name,
           CASE
               WHEN wanted.problem <> '' THEN wanted.problem
               WHEN wanted.trigger_pgid <> '' THEN (
                   SELECT CASE
                              WHEN trg.oid IS NULL THEN 'missing'
                              WHEN trg.tgenabled NOT IN ('O', 'A') THEN 'disabled'
                              WHEN md5({normalised}) <> wanted.body_md5
                                  THEN 'its function body differs from the code'
                          END
                   FROM (SELECT 1) AS one
                   LEFT JOIN pg_trigger AS trg
                     ON trg.tgname = wanted.trigger_pgid
                    AND trg.tgrelid = to_regclass(quote_ident(wanted.table_name))
                   LEFT JOIN pg_proc AS fn ON fn.oid = trg.tgfoid
               )
               WHEN NOT EXISTS (
                   SELECT 1 FROM pg_proc AS fn
                   WHERE fn.proname = wanted.function_name
                     AND fn.pronamespace = current_schema()::regnamespace
               ) THEN 'missing'
               WHEN NOT EXISTS (
                   SELECT 1 FROM pg_proc AS fn
                   WHERE fn.proname = wanted.function_name
                     AND fn.pronamespace = current_schema()::regnamespace
                     AND md5({normalised}) = wanted.body_md5
               ) THEN 'its body differs from the file'
           END AS problem
    FROM wanted
)
SELECT count(*) FILTER (WHERE problem IS NOT NULL),
       count(*),
       coalesce(
           (array_agg(name || ': ' || problem ORDER BY name)
                FILTER (WHERE problem IS NOT NULL))[1:%(sample_limit)s],
           '{{}}'
       )
FROM judged
"""
