"""`core.required_triggers`: every trigger and SQL function the invariants rest on is in place.

A fresh, migrated database is healthy; each required trigger disabled in turn, dropped, or
given another body, and each function of the versioned files dropped or changed, makes
`manage.py integrity` exit 2 naming it. The changes are made inside the test's transaction and
rolled back with it.
"""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection

from evoflow.integrity.required_sql import (
    expectations,
    required_sql,
    required_sql_register,
    required_triggers_sql,
)

pytestmark = pytest.mark.django_db

CHECK = "core.required_triggers"
TRIGGERS = [expectation for expectation in expectations() if expectation.trigger_pgid]
FUNCTIONS = [
    expectation
    for expectation in expectations()
    if expectation.function_name and not expectation.trigger_pgid
]


def integrity(*args: str) -> tuple[int, str]:
    out = StringIO()
    try:
        call_command("integrity", *args, stdout=out, stderr=StringIO())
    except SystemExit as exit_:
        return int(exit_.code or 0), out.getvalue()
    return 0, out.getvalue()


def samples(*args: str) -> tuple[int, list[str]]:
    code, output = integrity("--check", CHECK, "--json", *args)
    (result,) = [check for check in json.loads(output)["checks"] if check["id"] == CHECK]
    return code, result["sample_ids"]


def execute(sql: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(sql)


def test_every_app_names_the_triggers_its_invariants_rest_on() -> None:
    named = {uri for item in required_sql() for uri in item.triggers}

    assert {
        "deliveries.MessageDelivery:delivery_link_on_insert",
        "deliveries.MessageDelivery:delivery_update_guard",
        "deliveries.EventGuest:guest_link_backfill",
        "deliveries.UserLinkAudit:link_audit_append_only",
        "deliveries.UserLinkAudit:link_audit_no_truncate",
        "conversations.Message:message_no_truncate",
        "conversations.PurgeRecord:purgerecord_no_truncate",
        "journeys.JourneySession:journeys_session_status_fsm",
        "conversations.Message:message_count_and_last_on_insert",
        "conversations.Message:message_count_on_delete",
        "conversations.Conversation:conversation_last_message_forward_only",
    } <= named
    assert {function.function_name for function in FUNCTIONS} == {
        "deliveries_link_resolve",
        "deliveries_link_apply",
    }
    # Every pgtrigger trigger is watched, named or not.
    assert len(TRIGGERS) >= len(named)


def test_a_fresh_database_is_healthy() -> None:
    code, found = samples()
    whole_run, output = integrity("--fail-level", "error")

    assert (code, found) == (0, [])
    assert whole_run == 0, output
    assert f"OK     {CHECK}: 0 of {len(TRIGGERS) + len(FUNCTIONS)}" in output


@pytest.mark.parametrize("required", TRIGGERS, ids=lambda expectation: expectation.name)
def test_each_trigger_disabled_in_turn_fails_the_run_naming_it(required) -> None:
    execute(f'ALTER TABLE "{required.table}" DISABLE TRIGGER "{required.trigger_pgid}"')

    code, output = integrity()

    assert code == 2
    assert f"ERROR  {CHECK}: 1 of" in output
    assert f"{required.name}: disabled" in output


def test_a_trigger_enabled_for_replicas_only_counts_as_disabled() -> None:
    required = TRIGGERS[0]
    execute(f'ALTER TABLE "{required.table}" ENABLE REPLICA TRIGGER "{required.trigger_pgid}"')

    assert samples() == (2, [f"{required.name}: disabled"])


def test_a_dropped_trigger_and_a_replaced_trigger_body_are_named() -> None:
    guard = next(t for t in TRIGGERS if t.name.endswith(":delivery_update_guard"))
    fsm = next(t for t in TRIGGERS if t.name.endswith(":journeys_session_status_fsm"))
    execute(f'DROP TRIGGER "{guard.trigger_pgid}" ON "{guard.table}"')
    execute(
        f"CREATE OR REPLACE FUNCTION {fsm.function_name}() RETURNS TRIGGER AS $$"
        " BEGIN RETURN NEW; END; $$ LANGUAGE plpgsql"
    )

    assert samples() == (
        2,
        sorted([f"{guard.name}: missing", f"{fsm.name}: its function body differs from the code"]),
    )


def test_only_whitespace_in_a_trigger_body_is_layout() -> None:
    fsm = next(t for t in TRIGGERS if t.name.endswith(":journeys_session_status_fsm"))
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_get_functiondef(%s::regproc)",
            [fsm.function_name],
        )
        (definition,) = cursor.fetchone()
        cursor.execute(definition.replace("\n", "\n\n    "))

    assert samples() == (0, [])


@pytest.mark.parametrize("required", FUNCTIONS, ids=lambda expectation: expectation.function_name)
def test_each_function_changed_or_dropped_fails_the_run_naming_it(required) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid) FROM pg_proc AS p"
            " WHERE p.proname = %s AND p.pronamespace = current_schema()::regnamespace",
            [required.function_name],
        )
        ((signature, definition),) = cursor.fetchall()
        changed = definition.replace("'no_match'", "'skipped'", 1)
        assert changed != definition
        cursor.execute(changed)

    assert samples() == (2, [f"{required.name}: its body differs from the file"])

    execute(f"DROP FUNCTION {signature}")

    code, output = integrity()
    assert code == 2
    assert f"{required.name}: missing" in output


def test_a_trigger_an_app_names_but_no_model_declares_is_reported() -> None:
    item = required_sql_register(
        app_label="tests_required_sql", triggers=("deliveries.Event:no_such_trigger",)
    )
    try:
        code, found = samples()
    finally:
        from evoflow.integrity import required_sql as module

        module._registry.remove(item.app_label)

    assert (code, found) == (2, ["deliveries.Event:no_such_trigger: not declared in the code"])


def test_the_query_holds_no_placeholder_but_the_sample_limit() -> None:
    # Names and digests are inlined as literals; only %(sample_limit)s is a parameter.
    sql = required_triggers_sql()

    assert sql.count("%") == sql.count("%(sample_limit)s")
