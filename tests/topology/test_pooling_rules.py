"""Transaction pooling: the settings that make evoflow run behind PgBouncer in transaction mode,
and the rules its code keeps so that no session state outlives a transaction (docs/operations.md,
"Connection pooling"). The topology test (test_topology.py) runs the same code through a real
PgBouncer."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from tests.helpers import PROJECT_ROOT, run_python

# Where the application's own SQL and database code lives; tests may do what they like.
CODE_DIRS = ["evoflow", "journeys", "conversations", "deliveries", "bench", "devtools"]

SETTINGS_SCRIPT = (
    "import json, django; django.setup(); from django.conf import settings; "
    "from evoflow.db import psycopg_connect_kwargs; db = settings.DATABASES['default']; "
    "print(json.dumps({'cursors': db.get('DISABLE_SERVER_SIDE_CURSORS', False), "
    "'options': db['OPTIONS'], 'raw': psycopg_connect_kwargs()}))"
)


def settings_with(overrides: dict[str, str]) -> dict:
    env = {**os.environ, "DEBUG": "1", "DJANGO_SETTINGS_MODULE": "evoflow.settings", **overrides}
    result = run_python("-c", SETTINGS_SCRIPT, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def source_files(*suffixes: str) -> list[Path]:
    return [
        path
        for directory in CODE_DIRS
        for path in sorted((PROJECT_ROOT / directory).rglob("*"))
        if path.suffix in suffixes and "migrations" not in path.parts
    ]


def test_transaction_pooling_disables_server_side_cursors_and_prepared_statements():
    seen = settings_with({"DATABASE_POOLER": "transaction"})

    assert seen["cursors"] is True
    assert seen["options"]["prepare_threshold"] is None
    # PgBouncer 1.18 refuses the `options` startup parameter: the timeout comes from the role.
    assert "options" not in seen["options"]
    assert seen["raw"] == {"prepare_threshold": None}


def test_without_a_pooler_the_statement_timeout_travels_with_the_connection():
    seen = settings_with({"DATABASE_POOLER": "", "DB_STATEMENT_TIMEOUT_MS": "1234"})

    assert seen["cursors"] is False
    assert seen["options"]["options"] == "-c statement_timeout=1234"
    assert seen["raw"] == {}


def test_an_unknown_pooler_is_refused_at_start():
    env = {**os.environ, "DEBUG": "1", "DJANGO_SETTINGS_MODULE": "evoflow.settings"}
    env["DATABASE_POOLER"] = "session-ish"

    result = run_python("-c", SETTINGS_SCRIPT, env=env)

    assert result.returncode != 0
    assert "DATABASE_POOLER must be 'none' or 'transaction'" in result.stderr


SESSION_LOCK = re.compile(r"pg_(try_)?advisory_(un)?lock(_shared)?\s*\(", re.IGNORECASE)
# A statement that starts with SET (not SET LOCAL / SET CONSTRAINTS) in a string the code runs;
# `UPDATE ... SET` and a function's `SET x = y` attribute do not start a string.
SESSION_SET = re.compile(r"""execute\(\s*f?["']\s*SET\s+(?!LOCAL\b|CONSTRAINTS\b)""", re.IGNORECASE)
SESSION_SET_CONFIG = re.compile(r"set_config\([^)]*,\s*false\s*\)", re.IGNORECASE)
LISTEN = re.compile(r"""execute\(\s*f?["']\s*(LISTEN|UNLISTEN)\s""", re.IGNORECASE)


@pytest.mark.parametrize(
    ("rule", "pattern"),
    [
        ("session-level advisory lock", SESSION_LOCK),
        ("session-level SET", SESSION_SET),
        ("session-level set_config", SESSION_SET_CONFIG),
        ("LISTEN", LISTEN),
    ],
)
def test_no_session_state_outlives_a_transaction(rule, pattern):
    offenders = [
        f"{path.relative_to(PROJECT_ROOT)}:{text[: match.start()].count(chr(10)) + 1}"
        for path in source_files(".py", ".sql")
        for text in [path.read_text()]
        for match in pattern.finditer(text)
    ]

    assert offenders == [], f"{rule} found (breaks under transaction pooling): {offenders}"


def test_the_rules_catch_what_they_are_meant_to():
    assert SESSION_LOCK.search("SELECT pg_advisory_lock(1)")
    assert not SESSION_LOCK.search("SELECT pg_advisory_xact_lock(1)")
    assert SESSION_SET.search('cursor.execute("SET synchronous_commit = off")')
    assert not SESSION_SET.search('cursor.execute("SET LOCAL synchronous_commit = off")')
    assert SESSION_SET_CONFIG.search("set_config('x', 'y', false)")
    assert LISTEN.search('execute("LISTEN jobs")')
    assert not LISTEN.search('"cannot listen there"')


def test_every_raw_psycopg_connection_takes_the_connection_rules():
    offenders = []
    for path in source_files(".py"):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            rules = ("psycopg_connect_kwargs()", "prepare_threshold=None")
            if "psycopg.connect(" in line and not any(rule in line for rule in rules):
                offenders.append(f"{path.relative_to(PROJECT_ROOT)}:{number}")

    assert offenders == [], offenders
