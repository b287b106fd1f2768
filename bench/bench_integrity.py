"""`manage.py integrity` at two table sizes with the same violations: does its cost follow them?

Figures (targets of docs/invariants.md in brackets):

* `integrity.small` and `integrity.large`: one run of every registered check through the real
  runner (`integrity_run`, what the command and the schedule call) as `integrity` runs between
  full sweeps, over a data set of N deliveries, N messages and N journey sessions (small:
  1,000,000, large: 10,000,000; `--quick`: 100,000 and 1,000,000), each holding the same 1,000
  violations [`seconds` <= 5 at the large size]; with the five slowest checks' seconds;
* `integrity.full_sweep.small` and `.large`: the same with `integrity --full` (every row of
  every check: what the daily schedule runs);
* `integrity.large_over_small` and `integrity.full_sweep.large_over_small`: the large run's
  seconds over the small one's (about 1 when the cost follows the violations, up to 10 when it
  follows the tables), and the slowest check's own ratio;
* `integrity.data`: how long writing each data set took, and its rows per second.

The data sets are consistent by construction: written set-based with `generate_series`, every
trigger off (`session_replication_role = replica`), with what the triggers would have
maintained computed in the same statements (each conversation's `message_count` and last
message, each linked delivery's user and its `linked` audit row, each message's event), plain
indexes dropped while loading and rebuilt after, then `VACUUM ANALYZE`. Before any violation is
written, a full sweep of every check must find nothing: the benchmark stops otherwise. Then the
same 1,000 violations of nine checks are written into both data sets, most of them around the
triggers (only a bypass can make them), and every run must report exactly those, check by
check, or the benchmark stops.

The small data set lives in a database of its own (migrated by Django's test-database
machinery), the large one in a copy of it (`CREATE DATABASE ... TEMPLATE`) grown to ten times
the size, so the large set costs only the rows it adds. Both are kept across the harness's
repetitions (each repetition measures again) and dropped when the process exits. The
configured database is never written to. The server's durability settings are printed.
"""

from __future__ import annotations

import atexit
import contextlib
import secrets
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from django.db import connection, transaction
from django.test.utils import override_settings

from bench import Context, Result, Target

# The shape of each data set: an event has GUESTS_PER_EVENT guests and as many messages, each
# sent to every guest; one guest in five has no user; a conversation has MESSAGES_PER_CONVERSATION
# messages; a contact has one session in each of JOURNEYS journeys.
GUESTS_PER_EVENT = 100
DELIVERIES_PER_EVENT = GUESTS_PER_EVENT * GUESTS_PER_EVENT
MESSAGES_PER_CONVERSATION = 10
JOURNEYS = 10
SLOWEST_REPORTED = 5
TARGET_SECONDS = 5.0
# The statement timeout of the checks, raised for the benchmark: a check slower than the
# production limit is measured (and named) rather than reported as failed.
BENCH_STATEMENT_TIMEOUT_MS = 600_000

# The tables whose plain indexes are dropped while loading and rebuilt afterwards.
LOADED_TABLES = (
    "deliveries_eventguest",
    "deliveries_message",
    "deliveries_messagedelivery",
    "deliveries_userlinkaudit",
    "conversations_conversation",
    "conversations_message",
    "conversations_interactionevent",
    "journeys_contact",
    "journeys_journeysession",
)
COUNTED_TABLES = (
    "deliveries_messagedelivery",
    "deliveries_userlinkaudit",
    "conversations_message",
    "conversations_interactionevent",
    "journeys_journeysession",
)

# The violations written into both data sets: check id -> how many failing rows it must report.
# 1,000 in all. Those marked "bypass" need the triggers off (a restore, a replica, a trigger
# disabled by hand); the others are plain SQL any client can run.
EXPECTED_VIOLATIONS: dict[str, int] = {
    "deliveries.unlinked_deliveries": 200,  # bypass: the guard refuses clearing the user
    "deliveries.user_mismatch": 100,  # bypass: the guard refuses another user
    "deliveries.linked_without_audit": 100,  # bypass: the audit is append-only
    "deliveries.phone_not_normalised": 50,
    "conversations.message_count_mismatch": 150,
    "conversations.messages_without_event": 150,
    "conversations.last_message_behind": 100,  # bypass: last_message_at only moves forward
    "journeys.sessions_missing_contact": 100,  # bypass: the contact's sessions cascade
    "journeys.sessions_overdue": 50,
}
VIOLATIONS = sum(EXPECTED_VIOLATIONS.values())


def _execute(sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


# -- the two databases --------------------------------------------------------------------------


@dataclass
class DataSet:
    name: str
    database: str
    size: int
    load_seconds: float = 0.0
    rows: dict[str, int] = field(default_factory=dict)


@dataclass
class State:
    """What survives between the harness's repetitions of this module (one process)."""

    small: DataSet | None = None
    large: DataSet | None = None
    server_settings: dict[str, Any] = field(default_factory=dict)


_STATE = State()


@contextlib.contextmanager
def _on_database(name: str) -> Iterator[None]:
    """Point this process's default connection at database `name` for the block."""
    settings_dict = connection.settings_dict
    original = settings_dict["NAME"]
    connection.close()
    settings_dict["NAME"] = name
    try:
        yield
    finally:
        connection.close()
        settings_dict["NAME"] = original


def _server_conninfo(database: str) -> dict[str, Any]:
    settings_dict = connection.settings_dict
    return {
        "host": settings_dict.get("HOST") or None,
        "port": settings_dict.get("PORT") or None,
        "user": settings_dict.get("USER") or None,
        "password": settings_dict.get("PASSWORD") or None,
        "dbname": database,
    }


def _server_execute(sql: str, *, database: str = "postgres") -> None:
    """One statement outside any transaction, on a connection of its own without the
    application's statement timeout: CREATE and DROP DATABASE on the maintenance database,
    VACUUM of ten million rows (longer than any application statement may take)."""
    import psycopg

    conninfo = _server_conninfo(database)
    options = {key: value for key, value in conninfo.items() if value is not None}
    with psycopg.connect(**options, autocommit=True, prepare_threshold=None) as server:
        server.execute(sql)


def _drop_databases() -> None:
    for data_set in (_STATE.large, _STATE.small):
        if data_set is not None:
            with contextlib.suppress(Exception):
                _server_execute(f'DROP DATABASE IF EXISTS "{data_set.database}" WITH (FORCE)')
    _STATE.small = _STATE.large = None


def _create_small_database() -> str:
    """A migrated, empty database beside the configured one (Django's test machinery does the
    migrating under a name of ours); the connection is left pointing where it was."""
    settings_dict = connection.settings_dict
    original = settings_dict["NAME"]
    test_settings = settings_dict.setdefault("TEST", {})
    original_test_name = test_settings.get("NAME")
    name = f"{original}_bench_integrity_{secrets.token_hex(3)}"[:63]
    test_settings["NAME"] = name
    try:
        connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    finally:
        test_settings["NAME"] = original_test_name
        connection.close()
        settings_dict["NAME"] = original
    return name


def _copy_database(source: str) -> str:
    name = f"{source[:52]}_large"
    # FILE_COPY copies the files instead of writing the whole database into the WAL.
    for attempt in range(5):
        try:
            _server_execute(f'CREATE DATABASE "{name}" TEMPLATE "{source}" STRATEGY FILE_COPY')
            return name
        except Exception:
            # An autovacuum worker still in the source database makes the copy wait its turn.
            if attempt == 4:
                raise
            time.sleep(2)
    raise AssertionError("unreachable")


# -- writing the data -----------------------------------------------------------------------------


def _plain_indexes() -> list[tuple[str, str]]:
    """(name, definition) of the indexes of LOADED_TABLES that back no constraint."""
    return [
        (row[0], row[1])
        for row in _execute(
            """
            SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
            FROM pg_index AS i
            WHERE i.indrelid = ANY(%(tables)s::regclass[]) AND NOT i.indisprimary
              AND NOT EXISTS (SELECT 1 FROM pg_constraint AS c WHERE c.conindid = i.indexrelid)
            ORDER BY 1
            """,
            {"tables": list(LOADED_TABLES)},
        )
    ]


def _load(*, first: int, last: int) -> None:
    """Write units `first + 1 .. last` of every table (deliveries, messages and sessions), as
    the triggers would have left them, in one transaction with the plain indexes rebuilt."""
    params = {
        "first_event": first // DELIVERIES_PER_EVENT,
        "last_event": max(1, last // DELIVERIES_PER_EVENT),
        "per_event": GUESTS_PER_EVENT,
        "first_conversation": first // MESSAGES_PER_CONVERSATION,
        "last_conversation": last // MESSAGES_PER_CONVERSATION,
        "per_conversation": MESSAGES_PER_CONVERSATION,
        "first_contact": first // JOURNEYS,
        "last_contact": last // JOURNEYS,
        "journeys": JOURNEYS,
    }
    with transaction.atomic():
        _execute("SET LOCAL session_replication_role = replica")
        _execute("SET LOCAL statement_timeout = 0")
        _execute("SET LOCAL maintenance_work_mem = '512MB'")
        indexes = _plain_indexes()
        for name, _definition in indexes:
            _execute(f"DROP INDEX {name}")
        if first == 0:
            _load_fixed()
        # Deliveries: guest g of event e has user g + 1 unless g is a multiple of 5; every
        # message of an event goes to each of its guests; a linked delivery has its audit row.
        _execute(
            """
            INSERT INTO evoflow_user (id, password, is_superuser, username, first_name,
                                      last_name, email, is_staff, is_active, date_joined, phone)
            SELECT g + 1, '!', false, 'bench-integrity-' || g, '', '', '', false, true, now(), ''
            FROM generate_series(%(first_event)s * %(per_event)s + 1,
                                 %(last_event)s * %(per_event)s) AS g
            WHERE g %% 5 <> 0
            """,
            params,
        )
        _execute(
            """
            INSERT INTO deliveries_event (id, name, starts_at, host_id, created_at)
            SELECT e, 'bench event ' || e, now(), 1, now() - interval '30 days'
            FROM generate_series(%(first_event)s + 1, %(last_event)s) AS e
            """,
            params,
        )
        _execute(
            """
            INSERT INTO deliveries_eventguest
                (id, event_id, name, phone, phone_e164, user_id, created_at, updated_at)
            SELECT g, (g - 1) / %(per_event)s + 1, 'guest ' || g,
                   '+1415' || lpad(g::text, 7, '0'), '+1415' || lpad(g::text, 7, '0'),
                   CASE WHEN g %% 5 <> 0 THEN g + 1 END,
                   now() - interval '30 days', now() - interval '30 days'
            FROM generate_series(%(first_event)s * %(per_event)s + 1,
                                 %(last_event)s * %(per_event)s) AS g
            """,
            params,
        )
        _execute(
            """
            INSERT INTO deliveries_message (id, event_id, body, sender_id, created_at)
            SELECT m, (m - 1) / %(per_event)s + 1, 'bench message ' || m, 1,
                   now() - interval '20 days'
            FROM generate_series(%(first_event)s * %(per_event)s + 1,
                                 %(last_event)s * %(per_event)s) AS m
            """,
            params,
        )
        _execute(
            """
            INSERT INTO deliveries_messagedelivery
                (id, message_id, guest_id, user_id, phone, phone_e164, status, created_at,
                 updated_at)
            SELECT (m - 1) * %(per_event)s + k, m, g,
                   CASE WHEN g %% 5 <> 0 THEN g + 1 END,
                   '+1415' || lpad(g::text, 7, '0'), '+1415' || lpad(g::text, 7, '0'), 'sent',
                   now() - interval '20 days', now() - interval '20 days'
            FROM generate_series(%(first_event)s * %(per_event)s + 1,
                                 %(last_event)s * %(per_event)s) AS m,
                 generate_series(1, %(per_event)s) AS k,
                 LATERAL (SELECT ((m - 1) / %(per_event)s) * %(per_event)s + k AS g) AS guest
            """,
            params,
        )
        _execute(
            """
            INSERT INTO deliveries_userlinkaudit
                (delivery_id, guest_id, user_id, outcome, method, details, created_at)
            SELECT id, guest_id, user_id, 'linked', 'guest', '{"reason": "guest_user"}'::jsonb,
                   created_at
            FROM deliveries_messagedelivery
            WHERE id > %(first_event)s * %(per_event)s * %(per_event)s
              AND user_id IS NOT NULL
            ORDER BY id
            """,
            params,
        )
        # Conversations: message i of conversation c has id (c - 1) * 10 + i, sent one second
        # after the previous; the conversation carries the count and its tenth message.
        _execute(
            """
            INSERT INTO conversations_conversation
                (id, page_id, psid, thread_id, participant_name, last_message_text,
                 last_message_at, last_message_mid, message_count, version, created_at,
                 updated_at)
            SELECT c, 1, 'psid-' || c, 't_' || c, 'person ' || c,
                   'text ' || c * %(per_conversation)s,
                   timestamptz '2026-01-01' + make_interval(secs => c * %(per_conversation)s),
                   'm.' || c * %(per_conversation)s, %(per_conversation)s, 1,
                   now() - interval '20 days', now() - interval '20 days'
            FROM generate_series(%(first_conversation)s + 1, %(last_conversation)s) AS c
            """,
            params,
        )
        _execute(
            """
            INSERT INTO conversations_message
                (id, page_id, conversation_id, mid, direction, is_echo, app_id, text,
                 attachments, reply_to_mid, sent_at, source, edit_count, created_at)
            SELECT m, 1, (m - 1) / %(per_conversation)s + 1, 'm.' || m,
                   CASE WHEN m %% 2 = 0 THEN 'outbound' ELSE 'inbound' END, m %% 2 = 0, '',
                   'text ' || m, '[]'::jsonb, '',
                   timestamptz '2026-01-01' + make_interval(secs => m), 'sync', 0,
                   now() - interval '20 days'
            FROM generate_series(%(first_conversation)s * %(per_conversation)s + 1,
                                 %(last_conversation)s * %(per_conversation)s) AS m
            """,
            params,
        )
        _execute(
            """
            INSERT INTO conversations_interactionevent
                (page_id, conversation_id, message_id, kind, occurred_at, metadata, dedupe_key,
                 source, created_at)
            SELECT 1, (m - 1) / %(per_conversation)s + 1, m,
                   CASE WHEN m %% 2 = 0 THEN 'message_sent' ELSE 'message_received' END,
                   timestamptz '2026-01-01' + make_interval(secs => m), '{}'::jsonb,
                   'message:m.' || m, 'sync', now() - interval '20 days'
            FROM generate_series(%(first_conversation)s * %(per_conversation)s + 1,
                                 %(last_conversation)s * %(per_conversation)s) AS m
            """,
            params,
        )
        # Journeys: contact n has one session in each journey; one session in a hundred is
        # waiting (resuming tomorrow), one active (leased until tomorrow), the rest completed.
        _execute(
            """
            INSERT INTO journeys_contact (id, name, crm_synced_at, created_at, updated_at)
            SELECT md5('bench-contact-' || n)::uuid, 'contact ' || n, now(),
                   now() - interval '20 days', now() - interval '20 days'
            FROM generate_series(%(first_contact)s + 1, %(last_contact)s) AS n
            """,
            params,
        )
        _execute(
            """
            INSERT INTO journeys_journeysession
                (id, journey_id, contact_id, status, current_node_id, step_count, variables,
                 context, wait_event, wait_filters, wait_until, lease_until, ended_reason,
                 created_at, updated_at, finished_at)
            SELECT s, (s - 1) %% %(journeys)s + 1,
                   md5('bench-contact-' || ((s - 1) / %(journeys)s + 1))::uuid, status, 'start',
                   1, '{}'::jsonb, '{}'::jsonb, '', '{}'::jsonb,
                   CASE WHEN status = 'waiting' THEN now() + interval '1 day' END,
                   CASE WHEN status = 'active' THEN now() + interval '1 day' END, '',
                   now() - interval '20 days', now() - interval '20 days',
                   CASE WHEN status = 'completed' THEN now() - interval '19 days' END
            FROM generate_series(%(first_contact)s * %(journeys)s + 1,
                                 %(last_contact)s * %(journeys)s) AS s,
                 LATERAL (SELECT CASE WHEN s %% 100 = 0 THEN 'waiting'
                                      WHEN s %% 100 = 1 THEN 'active'
                                      ELSE 'completed' END AS status) AS session
            """,
            params,
        )
        for _name, definition in indexes:
            _execute(definition)
    # The ids were given explicitly: the sequences move past them for later inserts.
    for table in (*LOADED_TABLES, "evoflow_user", "deliveries_event"):
        if table != "journeys_contact":
            _execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), max(id)) FROM {table}"  # noqa: S608
            )
    # As autovacuum leaves the tables: statistics for the planner and the estimates, and a
    # visibility map for index-only scans.
    _server_execute("VACUUM ANALYZE", database=connection.settings_dict["NAME"])


def _load_fixed() -> None:
    """The rows every data set has once: the host, the page, the journeys."""
    _execute(
        """
        INSERT INTO evoflow_user (id, password, is_superuser, username, first_name, last_name,
                                  email, is_staff, is_active, date_joined, phone)
        VALUES (1, '!', false, 'bench-integrity-host', '', '', '', false, true, now(), '')
        """
    )
    _execute(
        """
        INSERT INTO conversations_facebookpage
            (id, page_id, name, access_token_encrypted, is_reauthorization_required)
        VALUES (1, '9100000000', 'bench page', '', false)
        """
    )
    _execute(
        """
        INSERT INTO journeys_journey (id, name, flow)
        SELECT n, 'bench journey ' || n, '{}'::jsonb FROM generate_series(1, %(journeys)s) AS n
        """,
        {"journeys": JOURNEYS},
    )


def _spread(count: int, total: int, *, multiple: int = 1, offset: int = 1) -> list[int]:
    """`count` numbers spread evenly over 1..total, each step a multiple of `multiple`."""
    step = max(1, total // count // multiple) * multiple
    return [index * step + offset for index in range(count)]


def _inject_violations(*, size: int) -> None:
    """Write the same EXPECTED_VIOLATIONS into a data set, spread over the whole id range.

    Most are written the way a bypass writes them (`session_replication_role = replica`: a
    restore, a replica, a script around the triggers), as new rows or updates of old ones; the
    checks that read only what changed between full sweeps must find the new rows by their own
    marks, the others read their partial indexes. Old rows broken in place without any mark
    are found by the full sweep only (measured too, and docs/operations.md says why).
    """
    events = max(1, size // DELIVERIES_PER_EVENT)
    conversations = size // MESSAGES_PER_CONVERSATION
    # A delivery id is (m - 1) * 100 + k for guest position k of its event: a step that is a
    # multiple of 100 picks guest 1's deliveries, a linked guest (user id = guest id + 1).
    old_linked = _spread(200, size, multiple=GUESTS_PER_EVENT)
    picked_conversations = _spread(400, conversations)
    params: dict[str, Any] = {
        "old_linked": old_linked,
        # 200 new messages of 200 events, each delivered to the event's first guest.
        "events": [(index % events) + 1 for index in _spread(200, max(events, 200), offset=0)],
        "per_event": GUESTS_PER_EVENT,
        "guests": _spread(50, events * GUESTS_PER_EVENT),
        "count_conversations": picked_conversations[0:150],
        "eventless_conversations": picked_conversations[150:300],
        "behind_conversations": picked_conversations[300:400],
        "contacts": [f"00000000-0000-4000-8000-{n:012d}" for n in range(100)],
        "waiting_sessions": _spread(50, size, multiple=100, offset=0)[1:] + [size // 100 * 100],
    }
    with transaction.atomic():
        _execute("SET LOCAL session_replication_role = replica")
        # deliveries.unlinked_deliveries: old linked deliveries cleared (the guard refuses it).
        _execute(
            "UPDATE deliveries_messagedelivery SET user_id = NULL WHERE id = ANY(%(old_linked)s)",
            params,
        )
        # deliveries.user_mismatch (the first 100, to another user, audited) and
        # deliveries.linked_without_audit (the next 100): new deliveries of new messages.
        _execute(
            """
            WITH message AS (
                INSERT INTO deliveries_message (event_id, body, sender_id)
                SELECT event_id, 'injected ' || n, 1
                FROM unnest(%(events)s::int[]) WITH ORDINALITY AS picked(event_id, n)
                RETURNING id, event_id, body
            ),
            delivery AS (
                INSERT INTO deliveries_messagedelivery
                    (message_id, guest_id, user_id, phone, phone_e164, status)
                SELECT message.id, guest.id,
                       CASE WHEN split_part(message.body, ' ', 2)::int <= 100 THEN 1
                            ELSE guest.user_id END,
                       guest.phone, guest.phone_e164, 'sent'
                FROM message
                JOIN deliveries_eventguest AS guest
                  ON guest.id = (message.event_id - 1) * %(per_event)s + 1
                RETURNING id, guest_id, user_id, message_id
            )
            INSERT INTO deliveries_userlinkaudit
                (delivery_id, guest_id, user_id, outcome, method, details)
            SELECT delivery.id, delivery.guest_id, delivery.user_id, 'linked', 'guest', '{}'
            FROM delivery WHERE delivery.user_id = 1
            """,
            params,
        )
        _execute(
            "UPDATE deliveries_eventguest SET phone_e164 = NULL WHERE id = ANY(%(guests)s)",
            params,
        )
        # conversations.message_count_mismatch: a message stored around the counter (older
        # than the conversation's others, with its event: nothing else is wrong).
        # conversations.last_message_behind: a newer message around the trigger, the count
        # set by hand, with its event.
        _execute(
            """
            WITH message AS (
                INSERT INTO conversations_message
                    (page_id, conversation_id, mid, direction, text, sent_at, source)
                SELECT 1, c, 'injected.' || c, 'inbound', 'injected',
                       CASE WHEN c = ANY(%(behind_conversations)s) THEN now()
                            ELSE timestamptz '2025-01-01' END,
                       'sync'
                FROM unnest(%(count_conversations)s::bigint[]
                            || %(behind_conversations)s::bigint[]) AS c
                RETURNING id, conversation_id, mid, sent_at
            ),
            counted AS (
                UPDATE conversations_conversation SET message_count = message_count + 1
                WHERE id = ANY(%(behind_conversations)s)
            )
            INSERT INTO conversations_interactionevent
                (page_id, conversation_id, message_id, kind, occurred_at, dedupe_key, source)
            SELECT 1, conversation_id, id, 'message_received', sent_at, 'message:' || mid,
                   'sync'
            FROM message
            """,
            params,
        )
        # journeys.sessions_missing_contact: sessions written around the foreign key.
        _execute(
            """
            INSERT INTO journeys_journeysession
                (journey_id, contact_id, status, current_node_id, step_count, finished_at)
            SELECT 1, contact::uuid, 'completed', 'start', 1, now()
            FROM unnest(%(contacts)s::text[]) AS contact
            """,
            params,
        )
    # conversations.messages_without_event: messages stored behind the service, triggers on
    # (the counter follows them), older than the conversation's others, without their event.
    _execute(
        """
        INSERT INTO conversations_message
            (page_id, conversation_id, mid, direction, text, sent_at, source)
        SELECT 1, c, 'injected.' || c, 'inbound', 'injected', timestamptz '2025-01-01', 'sync'
        FROM unnest(%(eventless_conversations)s::bigint[]) AS c
        """,
        params,
    )
    # journeys.sessions_overdue: waiting sessions (ids ending in 00) past their resume time.
    _execute(
        "UPDATE journeys_journeysession SET wait_until = now() - interval '1 hour'"
        " WHERE id = ANY(%(waiting_sessions)s) AND status = 'waiting'",
        params,
    )


# -- measuring ----------------------------------------------------------------------------------


@dataclass
class RunMeasure:
    seconds: float
    per_check_seconds: dict[str, float]
    failing: dict[str, int]
    statuses: dict[str, str]


def _integrity_once(*, full: bool = True) -> RunMeasure:
    """One run of every check: `integrity --full` (a full sweep), or without `full` what
    `integrity` does between full sweeps."""
    from evoflow.integrity.runner import integrity_run

    with override_settings(INTEGRITY_STATEMENT_TIMEOUT_MS=BENCH_STATEMENT_TIMEOUT_MS):
        started = time.perf_counter()
        run = integrity_run(trigger="command", full=full)
        seconds = time.perf_counter() - started
    results = list(run.results.all())
    return RunMeasure(
        seconds=seconds,
        per_check_seconds={r.check_id: r.duration_ms / 1000 for r in results},
        failing={r.check_id: r.failing_count for r in results},
        statuses={r.check_id: r.status for r in results},
    )


def _verify(measure: RunMeasure, expected: dict[str, int], *, what: str) -> None:
    """Stop the benchmark unless the run found exactly `expected` (every other check clean)."""
    wrong = {
        check_id: f"{measure.failing.get(check_id, 0)} failing, status {status}"
        for check_id, status in measure.statuses.items()
        if measure.failing.get(check_id, 0) != expected.get(check_id, 0) or status == "failed"
    }
    missing = sorted(set(expected) - set(measure.statuses))
    if wrong or missing:
        raise RuntimeError(
            f"integrity on {what} did not report what was written: {wrong}; "
            f"checks not run: {missing}; expected {expected}"
        )


def _durability() -> dict[str, str]:
    names = ("fsync", "synchronous_commit", "full_page_writes", "wal_level", "shared_buffers")
    return {name: _execute(f"SHOW {name}")[0][0] for name in names}


def _row_counts() -> dict[str, int]:
    return {
        table: _execute(f"SELECT count(*) FROM {table}")[0][0]  # noqa: S608
        for table in COUNTED_TABLES
    }


def _build(ctx: Context, small_size: int, large_size: int) -> None:
    """Write both data sets (once per process), each checked clean, then the violations.
    The state is kept only once all of it succeeded: a failure drops both databases, and a
    later repetition starts again rather than measuring half a data set."""
    small = DataSet("small", _create_small_database(), small_size)
    large: DataSet | None = None
    try:
        with _on_database(small.database):
            started = time.perf_counter()
            _load(first=0, last=small_size)
            small.load_seconds = time.perf_counter() - started
            small.rows = _row_counts()
            _verify(_integrity_once(), {}, what=f"the clean small data set ({small_size:,})")
            server_settings = _durability()
        started = time.perf_counter()
        large = DataSet("large", _copy_database(small.database), large_size)
        with _on_database(large.database):
            _load(first=small_size, last=large_size)
            large.load_seconds = time.perf_counter() - started
            large.rows = _row_counts()
            _verify(_integrity_once(), {}, what=f"the clean large data set ({large_size:,})")
            _inject_violations(size=large_size)
        with _on_database(small.database):
            _inject_violations(size=small_size)
    except BaseException:
        for data_set in (large, small):
            if data_set is not None:
                with contextlib.suppress(Exception):
                    _server_execute(f'DROP DATABASE IF EXISTS "{data_set.database}" WITH (FORCE)')
        raise
    _STATE.small, _STATE.large, _STATE.server_settings = small, large, server_settings
    atexit.register(_drop_databases)
    print(
        f"bench: integrity data sets written: {small_size:,} in {small.load_seconds:.0f} s,"
        f" grown to {large_size:,} in {large.load_seconds:.0f} s",
        file=sys.stderr,
    )


def _result(
    name: str, data_set: DataSet, measure: RunMeasure, *, target: bool, notes: str
) -> Result:
    slowest = sorted(measure.per_check_seconds.items(), key=lambda item: -item[1])
    figures: dict[str, float] = {
        "rows_per_table": data_set.size,
        "violations": sum(measure.failing.values()),
        "seconds": round(measure.seconds, 3),
    }
    for check_id, seconds in slowest[:SLOWEST_REPORTED]:
        figures[f"check_seconds.{check_id}"] = round(seconds, 3)
    return Result(
        name,
        figures,
        targets=(Target("seconds", at_most=TARGET_SECONDS),) if target else (),
        notes=notes,
    )


def _ratio(name: str, small: RunMeasure, large: RunMeasure) -> Result:
    slowest_check, slowest_seconds = max(large.per_check_seconds.items(), key=lambda i: i[1])
    return Result(
        name,
        {
            "ratio": round(large.seconds / small.seconds, 2),
            "slowest_check_ratio": round(
                slowest_seconds / max(small.per_check_seconds[slowest_check], 1e-6), 2
            ),
        },
        notes=(
            "large seconds over small: about 1 when the cost follows the violations, 10 when it"
            f" follows the tables; slowest check at the large size: {slowest_check}"
        ),
    )


def run(ctx: Context) -> list[Result]:
    small_size = ctx.size(quick=100_000, full=1_000_000, minimum=DELIVERIES_PER_EVENT * 4)
    large_size = small_size * 10
    if _STATE.small is None:
        _build(ctx, small_size, large_size)
    assert _STATE.small is not None
    assert _STATE.large is not None
    # Per size: what `integrity` does between full sweeps (the previous run, a full sweep,
    # is minutes old), then `integrity --full`. Both must find exactly the violations.
    between: dict[str, RunMeasure] = {}
    sweep: dict[str, RunMeasure] = {}
    for data_set in (_STATE.small, _STATE.large):
        with _on_database(data_set.database):
            between[data_set.name] = _integrity_once(full=False)
            _verify(between[data_set.name], EXPECTED_VIOLATIONS, what=f"{data_set.name} (run)")
            sweep[data_set.name] = _integrity_once(full=True)
            _verify(sweep[data_set.name], EXPECTED_VIOLATIONS, what=f"{data_set.name} (--full)")
    settings_text = ", ".join(f"{key} {value}" for key, value in _STATE.server_settings.items())
    print(f"bench: integrity ran with {settings_text}", file=sys.stderr)
    results: list[Result] = []
    for data_set in (_STATE.small, _STATE.large):
        described = (
            f"{data_set.size:,} deliveries, messages and sessions, {VIOLATIONS:,} violations;"
            f" {settings_text}"
        )
        results.append(
            _result(
                f"integrity.{data_set.name}",
                data_set,
                between[data_set.name],
                target=data_set is _STATE.large,
                notes=f"`integrity` between full sweeps (every check, the runner); {described}",
            )
        )
    for data_set in (_STATE.small, _STATE.large):
        results.append(
            _result(
                f"integrity.full_sweep.{data_set.name}",
                data_set,
                sweep[data_set.name],
                target=False,
                notes=f"`integrity --full`: every row of every check; {data_set.size:,} rows",
            )
        )
    results.append(_ratio("integrity.large_over_small", between["small"], between["large"]))
    results.append(_ratio("integrity.full_sweep.large_over_small", sweep["small"], sweep["large"]))
    data_figures: dict[str, float] = {}
    for data_set in (_STATE.small, _STATE.large):
        written = sum(data_set.rows.values()) - (
            sum(_STATE.small.rows.values()) if data_set is _STATE.large else 0
        )
        data_figures[f"{data_set.name}_load_seconds"] = round(data_set.load_seconds, 1)
        data_figures[f"{data_set.name}_rows_per_s"] = round(
            written / max(data_set.load_seconds, 1e-6)
        )
    results.append(
        Result(
            "integrity.data",
            data_figures,
            notes=(
                "set-based INSERT ... SELECT with triggers off and plain indexes rebuilt after,"
                " then VACUUM ANALYZE; rows per second of the five big tables; written once,"
                " kept across repetitions (the large set is the small one copied and grown)"
            ),
        )
    )
    return results
