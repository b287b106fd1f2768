"""The SQL files are the database: functions as written, triggers present and enabled.

The test database is built by the migrations, which apply frozen copies of the files; a file
edited without a migration (or a migration that forgot a function) fails here. docs/sql.md.
"""

from __future__ import annotations

from pathlib import Path

import pgtrigger
import pytest
from django.db import connection, transaction

from evoflow.sqlfiles import (
    app_sql_files,
    function_names,
    functions_drift,
    trigger_names,
    triggers_missing,
)

pytestmark = pytest.mark.django_db

SQL_FILES = app_sql_files()
FUNCTION_FILES = [path for path in SQL_FILES if function_names(path.read_text())]
LINK_RULE = next(path for path in SQL_FILES if path.name == "link_rule.sql")


def _label(path: Path) -> str:
    return f"{path.parent.parent.name}/{path.name}"


def test_the_files_are_found() -> None:
    labels = {_label(path) for path in SQL_FILES}
    assert {
        "deliveries/link_rule.sql",
        "deliveries/delivery_link_on_insert.sql",
        "deliveries/guest_link_backfill.sql",
        "conversations/message_count_and_last_on_insert.sql",
        "conversations/message_count_on_delete.sql",
    } <= labels
    assert function_names(LINK_RULE.read_text()) == [
        "deliveries_link_resolve",
        "deliveries_link_apply",
    ]


@pytest.mark.parametrize("path", FUNCTION_FILES, ids=_label)
def test_every_function_of_the_file_is_the_database_s(path: Path) -> None:
    with transaction.atomic():
        problems = functions_drift(connection, path.read_text())
        transaction.set_rollback(True)
    assert problems == []


@pytest.mark.parametrize("path", SQL_FILES, ids=_label)
def test_every_trigger_the_file_names_exists_and_is_enabled(path: Path) -> None:
    assert triggers_missing(connection, path.read_text()) == []


def test_every_trigger_body_file_names_its_trigger() -> None:
    for path in SQL_FILES:
        if not function_names(path.read_text()):
            assert len(trigger_names(path.read_text())) == 1, _label(path)


def test_every_pgtrigger_trigger_is_installed_as_declared_and_enabled() -> None:
    # pgtrigger compares the installed function with the declaration (the body files included).
    statuses = {
        f"{model._meta.db_table}.{trigger.name}": trigger.get_installation_status(model)
        for model, trigger in pgtrigger.registered()
    }
    assert statuses
    assert {
        name: status for name, status in statuses.items() if status != ("INSTALLED", True)
    } == {}


# -- the comparison does fail --------------------------------------------------------------------


def test_a_changed_function_body_is_reported() -> None:
    sql = LINK_RULE.read_text()
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_get_functiondef('deliveries_link_resolve(bigint[])'::regprocedure)"
            )
            (definition,) = cursor.fetchone()
            # One literal of the rule changed: a removed guest now reads as "skipped".
            changed = definition.replace("'no_match'", "'skipped'", 1)
            assert changed != definition
            cursor.execute(changed)
        problems = functions_drift(connection, sql)
        transaction.set_rollback(True)
    assert problems == [
        "deliveries_link_resolve(p_delivery_ids bigint[]): the database's body differs"
    ]


def test_a_function_missing_or_left_over_is_reported() -> None:
    sql = LINK_RULE.read_text()
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(
                "DROP FUNCTION deliveries_link_apply(bigint[], text, boolean, bigint);"
                " CREATE FUNCTION deliveries_link_apply(bigint[], text, boolean)"
                " RETURNS void LANGUAGE sql AS 'SELECT'"
            )
        problems = functions_drift(connection, sql)
        transaction.set_rollback(True)
    assert sorted(problems) == [
        "deliveries_link_apply(bigint[], text, boolean): in the database but not in the file",
        "deliveries_link_apply(p_delivery_ids bigint[], p_method text, p_audit_all boolean,"
        " p_previous_user_id bigint): missing from the database",
    ]


def test_only_whitespace_is_layout() -> None:
    sql = LINK_RULE.read_text().replace("\n    ", "\n        ")
    with transaction.atomic():
        problems = functions_drift(connection, sql)
        transaction.set_rollback(True)
    assert problems == []


def test_a_disabled_or_missing_trigger_is_reported() -> None:
    sql = LINK_RULE.read_text() + "-- trigger: deliveries_eventguest.no_such_trigger\n"
    with transaction.atomic():
        pgtrigger.uninstall("deliveries.MessageDelivery:delivery_link_on_insert")
        with connection.cursor() as cursor:
            cursor.execute("ALTER TABLE deliveries_eventguest DISABLE TRIGGER USER")
        problems = triggers_missing(connection, sql)
        transaction.set_rollback(True)
    assert problems == [
        "deliveries_messagedelivery.delivery_link_on_insert: no such trigger",
        "deliveries_eventguest.guest_link_backfill: disabled",
        "deliveries_eventguest.no_such_trigger: no such trigger",
    ]
