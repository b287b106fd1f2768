"""Deliveries: historical backfill, guest-link backfill, and sending a message to many guests.

Figures (targets of docs/invariants.md in brackets):

* `deliveries.backfill`: `backfill_deliveries`' service over N deliveries of which 10% have no
  user although their guest is linked [>= 100,000 deliveries/s], beside
  `deliveries.backfill.bare_update` (one bare `UPDATE ... FROM`, no audit, no flags) and
  `deliveries.backfill.naive_python` (a per-row ORM loop on a sample, extrapolated to the same
  backlog);
* `deliveries.guest_link`: the time linking one guest with 100 deliveries adds over linking one
  with none [<= 2 ms added], median over several guests;
* `deliveries.message_send`: `POST /events/{id}/messages/`' service creating one delivery per
  active guest (half of them linked) in one `INSERT ... SELECT`, beside the same insert with the
  linking trigger switched off (`...message_send.no_trigger`);
* `deliveries.postgres.*`: the PostgreSQL reference (COPY, single-row inserts) for as many rows.
  The set-based paths (backfill, bare update, message send) are divided by COPY's rate, the
  per-row ORM loop by one connection's single-row inserts; all commit with the server's own
  durability. Each one-shot statement is measured once per repetition on a warmed-up
  connection (the backlog and the integrity checks before it read the same tables); the harness
  repeats the module (`--repeat`) for its median.

The rows are written into the application's tables under a bench host and removed afterwards
(the audit rows too, with the append-only trigger ignored for that one statement).
"""

from __future__ import annotations

import logging
import secrets
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pgtrigger
from django.db import connection, transaction

from bench import Context, Result, Target, steady_rate
from bench.reference import reference_results

# One statement has no stream to cut a warm-up out of: it runs on a connection that already
# read the same tables (their pages cached), and the repetitions give its median.
SET_BASED_WARMUP = "none inside the statement; it runs after the same tables were read"
MESSAGES = 100  # every guest of the backfill event gets one delivery per message
INSERT_TRIGGER = "deliveries.MessageDelivery:delivery_link_on_insert"
AUDIT_PROTECT = "deliveries.UserLinkAudit:link_audit_append_only"
# The guard refuses clearing the user of a linked guest's delivery: the benchmark does it on
# purpose, to rebuild the inconsistent backlog for the reference figures.
UPDATE_GUARD = "deliveries.MessageDelivery:delivery_update_guard"


def _execute(sql: str, params: dict | list | None = None) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


class Scratch:
    """Users, events and everything under them created by one benchmark run."""

    def __init__(self) -> None:
        self.prefix = f"bench-dlv-{secrets.token_hex(3)}-"
        self.host_id = self.users(1, label="host")[0]

    def users(self, count: int, *, label: str = "u") -> list[int]:
        rows = _execute(
            """
            INSERT INTO evoflow_user (password, is_superuser, username, first_name, last_name,
                                      email, is_staff, is_active, date_joined, phone)
            SELECT '!', false, %(prefix)s || %(label)s || n, '', '', '', false, true, now(), ''
            FROM generate_series(1, %(count)s) AS n
            RETURNING id
            """,
            {"prefix": self.prefix, "label": label, "count": count},
        )
        return sorted(row[0] for row in rows)

    def event(self) -> int:
        return _execute(
            "INSERT INTO deliveries_event (name, starts_at, host_id, created_at)"
            " VALUES (%s, now(), %s, now()) RETURNING id",
            [self.prefix + "event", self.host_id],
        )[0][0]

    def guests(self, event_id: int, count: int, *, user_ids: list[int] | None) -> list[int]:
        """`count` guests with distinct numbers; linked to `user_ids` in turn, or unlinked."""
        rows = _execute(
            """
            INSERT INTO deliveries_eventguest
                (event_id, name, phone, phone_e164, user_id, created_at, updated_at)
            SELECT %(event)s, 'guest ' || n, '+1415' || lpad(n::text, 7, '0'),
                   '+1415' || lpad(n::text, 7, '0'),
                   CASE WHEN %(users)s::bigint[] IS NULL THEN NULL
                        ELSE (%(users)s::bigint[])[1 + (n - 1) %% cardinality(%(users)s::bigint[])]
                   END,
                   now(), now()
            FROM generate_series(1, %(count)s) AS n
            RETURNING id
            """,
            {"event": event_id, "count": count, "users": user_ids},
        )
        return sorted(row[0] for row in rows)

    def messages(self, event_id: int, count: int) -> list[int]:
        rows = _execute(
            "INSERT INTO deliveries_message (event_id, body, sender_id, created_at)"
            " SELECT %s, 'bench message ' || n, %s, now() FROM generate_series(1, %s) AS n"
            " RETURNING id",
            [event_id, self.host_id, count],
        )
        return sorted(row[0] for row in rows)

    def cleanup(self) -> None:
        with transaction.atomic(), pgtrigger.ignore(AUDIT_PROTECT):
            _execute(
                """
                DELETE FROM deliveries_userlinkaudit WHERE delivery_id IN (
                    SELECT delivery.id FROM deliveries_messagedelivery AS delivery
                    JOIN deliveries_message AS message ON message.id = delivery.message_id
                    JOIN deliveries_event AS event ON event.id = message.event_id
                    WHERE event.host_id = %s)
                """,
                [self.host_id],
            )
            # Django's foreign keys do not cascade in the database: children first.
            for statement in (
                "DELETE FROM deliveries_messagedelivery WHERE message_id IN ("
                " SELECT message.id FROM deliveries_message AS message"
                " JOIN deliveries_event AS event ON event.id = message.event_id"
                " WHERE event.host_id = %s)",
                "DELETE FROM deliveries_message WHERE event_id IN ("
                " SELECT id FROM deliveries_event WHERE host_id = %s)",
                "DELETE FROM deliveries_eventguest WHERE event_id IN ("
                " SELECT id FROM deliveries_event WHERE host_id = %s)",
                "DELETE FROM deliveries_event WHERE host_id = %s",
            ):
                _execute(statement, [self.host_id])
            _execute("DELETE FROM evoflow_user WHERE username LIKE %s", [self.prefix + "%"])


@contextmanager
def timed() -> Iterator[list[float]]:
    box: list[float] = []
    started = time.perf_counter()
    yield box
    box.append(time.perf_counter() - started)


# -- historical backfill ------------------------------------------------------------------------


def _backlog(scratch: Scratch, total: int) -> tuple[int, int]:
    """`total` deliveries (MESSAGES per guest), every 10th without a user although its guest is
    linked, written around the insert trigger as the old system left them. Returns
    (event id, number of inconsistent deliveries)."""
    guest_count = max(1, total // MESSAGES)
    users = scratch.users(max(1, guest_count // 2))
    event = scratch.event()
    scratch.guests(event, guest_count, user_ids=users)
    scratch.messages(event, MESSAGES)
    with transaction.atomic(), pgtrigger.ignore(INSERT_TRIGGER):
        _execute(
            """
            INSERT INTO deliveries_messagedelivery
                (message_id, guest_id, user_id, phone, phone_e164, status, created_at, updated_at)
            SELECT message.id, guest.id,
                   CASE WHEN (guest.id + message.id) %% 10 = 0 THEN NULL ELSE guest.user_id END,
                   guest.phone, guest.phone_e164, 'queued', now(), now()
            FROM deliveries_message AS message
            JOIN deliveries_eventguest AS guest ON guest.event_id = message.event_id
            WHERE message.event_id = %s
            ORDER BY message.id, guest.id
            """,
            [event],
        )
    _execute("ANALYZE deliveries_messagedelivery")
    return event, _inconsistent(event)


def _inconsistent(event: int) -> int:
    return _execute(
        """
        SELECT count(*) FROM deliveries_messagedelivery AS delivery
        JOIN deliveries_eventguest AS guest ON guest.id = delivery.guest_id
        WHERE guest.event_id = %s AND delivery.user_id IS NULL AND guest.user_id IS NOT NULL
        """,
        [event],
    )[0][0]


def _unlink_every_tenth(event: int) -> None:
    with transaction.atomic(), pgtrigger.ignore(UPDATE_GUARD):
        _unlink_every_tenth_unguarded(event)
    _execute("VACUUM ANALYZE deliveries_messagedelivery")


def _unlink_every_tenth_unguarded(event: int) -> None:
    _execute(
        """
        UPDATE deliveries_messagedelivery AS delivery SET user_id = NULL
        FROM deliveries_eventguest AS guest
        WHERE guest.id = delivery.guest_id AND guest.event_id = %s
          AND (delivery.guest_id + delivery.message_id) %% 10 = 0
        """,
        [event],
    )


def _naive_loop(event: int, sample: int) -> float:
    """Seconds per inconsistent delivery for the per-row ORM loop people write first."""
    from deliveries.models import MessageDelivery, UserLinkAudit

    candidates = list(
        MessageDelivery.objects.filter(
            guest__event_id=event, user__isnull=True, guest__user__isnull=False
        ).values_list("pk", flat=True)[:sample]
    )
    completions: list[tuple[float, float]] = []
    started = time.perf_counter()
    for pk in candidates:
        with transaction.atomic():
            delivery = MessageDelivery.objects.select_related("guest").get(pk=pk)
            delivery.user_id = delivery.guest.user_id
            delivery.save(update_fields=["user"])
            UserLinkAudit.objects.create(
                delivery=delivery,
                guest_id=delivery.guest_id,
                user_id=delivery.user_id,
                outcome="linked",
                method="historical",
            )
        completions.append((time.perf_counter(), 1))
    if len(completions) < 2:
        return (time.perf_counter() - started) / max(1, len(candidates))
    # The first tenth warms the connection and the ORM's caches up.
    steady = steady_rate(completions, started=started, warmup_ops=max(1, len(completions) // 10))
    return 1 / steady.rate_per_s


def _backfill_results(ctx: Context, scratch: Scratch) -> list[Result]:
    from deliveries import services

    copy = ctx.server_kind("copy")  # these paths commit as the server does
    total = ctx.size(quick=20_000, full=1_000_000, minimum=MESSAGES)
    event, inconsistent = _backlog(scratch, total)
    deliveries = total // MESSAGES * MESSAGES

    integrity = _integrity_result(deliveries, inconsistent)

    with timed() as service_time:
        report = services.deliveries_backfill(batch_size=50_000)
    if _inconsistent(event) != 0:
        raise RuntimeError("the backfill left inconsistent deliveries behind")
    service_seconds = service_time[0]

    _unlink_every_tenth(event)
    with timed() as bare_time, transaction.atomic():
        _execute(
            """
            UPDATE deliveries_messagedelivery AS delivery SET user_id = guest.user_id
            FROM deliveries_eventguest AS guest
            WHERE guest.id = delivery.guest_id AND delivery.user_id IS NULL
              AND guest.user_id IS NOT NULL AND guest.removed_at IS NULL
            """
        )
    bare_seconds = bare_time[0]

    _unlink_every_tenth(event)
    sample = ctx.size(quick=300, full=2_000, minimum=10)
    per_row = _naive_loop(event, sample)
    naive_seconds = per_row * inconsistent

    return [
        integrity,
        Result(
            benchmark="deliveries.backfill",
            figures={
                "deliveries": deliveries,
                "inconsistent": inconsistent,
                "linked": report.linked,
                "batches": report.batches,
                "seconds": round(service_seconds, 4),
                "deliveries_per_s": round(deliveries / service_seconds, 1),
                "linked_per_s": round(report.linked / service_seconds, 1),
            },
            targets=(Target("deliveries_per_s", at_least=100_000),),
            notes="backfill_deliveries service, 50,000-id batches, audited, flags read",
            reference={"deliveries_per_s": copy, "linked_per_s": copy},
            warmup=SET_BASED_WARMUP,
        ),
        Result(
            benchmark="deliveries.backfill.bare_update",
            figures={
                "deliveries": deliveries,
                "seconds": round(bare_seconds, 4),
                "deliveries_per_s": round(deliveries / bare_seconds, 1),
            },
            notes="one bare UPDATE ... FROM on the same backlog: no audit, no flags, no batches",
            reference={"deliveries_per_s": copy},
            warmup=SET_BASED_WARMUP,
        ),
        Result(
            benchmark="deliveries.backfill.naive_python",
            figures={
                "sample": sample,
                "ms_per_inconsistent_delivery": round(per_row * 1000, 3),
                "extrapolated_seconds": round(naive_seconds, 2),
                "deliveries_per_s": round(deliveries / naive_seconds, 1),
            },
            notes="per-row ORM get + save + audit create, one transaction each, extrapolated",
            reference={"deliveries_per_s": ctx.server_kind("insert_1_conn")},
            warmup="the first 10% of the sample",
        ),
    ]


def _integrity_result(deliveries: int, inconsistent: int) -> Result:
    """The deliveries app's integrity checks on the backlog, as `manage.py integrity` runs them."""
    from deliveries import integrity
    from evoflow.integrity.runner import evaluate_check

    checks = (
        integrity.UNLINKED_DELIVERIES,
        integrity.USER_MISMATCH,
        integrity.PHONE_NOT_NORMALISED,
        integrity.LINKED_WITHOUT_AUDIT,
    )
    figures: dict[str, float] = {"deliveries": deliveries}
    started = time.perf_counter()
    for check in checks:
        evaluation = evaluate_check(check)
        if evaluation.outcome is None:
            raise RuntimeError(f"{check.id} failed: {evaluation.error}")
        figures[check.id.removeprefix("deliveries.") + "_ms"] = round(evaluation.duration_ms, 1)
        missed = evaluation.outcome.failing_count < inconsistent
        if check is integrity.UNLINKED_DELIVERIES and missed:
            raise RuntimeError("the inconsistency check missed part of the backlog")
    figures["seconds"] = round(time.perf_counter() - started, 4)
    return Result(
        benchmark="deliveries.integrity",
        figures=figures,
        notes="the four deliveries checks on the backlog (10% inconsistent), one query each",
    )


# -- guest link ---------------------------------------------------------------------------------


def _guest_link_result(ctx: Context, scratch: Scratch) -> Result:
    from deliveries import services
    from deliveries.models import EventGuest
    from evoflow.models import User

    rounds = ctx.size(quick=15, full=60, minimum=3)
    event = scratch.event()
    messages = scratch.messages(event, 100)
    with_deliveries = scratch.guests(event, rounds, user_ids=None)
    without = scratch.guests(event, rounds, user_ids=None)
    _execute(
        """
        INSERT INTO deliveries_messagedelivery (message_id, guest_id, phone, phone_e164)
        SELECT message_id, guest_id, '', NULL
        FROM unnest(%s::bigint[]) AS message_id, unnest(%s::bigint[]) AS guest_id
        """,
        [messages, with_deliveries],
    )
    user = User.objects.get(pk=scratch.users(1, label="linker")[0])
    # Settle what the backfill benchmarks left behind (dead rows, fresh statistics), so that
    # autovacuum does not run on one of the two cores in the middle of the measurement.
    for table in ("messagedelivery", "userlinkaudit", "eventguest"):
        _execute(f"VACUUM ANALYZE deliveries_{table}")
    guests = {guest.pk: guest for guest in EventGuest.objects.filter(event_id=event)}

    def link(guest_id: int) -> float:
        started = time.perf_counter()
        services.guest_link_user(guest=guests[guest_id], user=user)
        return time.perf_counter() - started

    # Interleaved, so drift on a shared machine hits both series alike.
    loaded, empty = [], []
    for loaded_id, empty_id in zip(with_deliveries, without, strict=True):
        loaded.append(link(loaded_id))
        empty.append(link(empty_id))
    backfilled = _execute(
        "SELECT count(*) FROM deliveries_messagedelivery WHERE guest_id = ANY(%s) AND user_id = %s",
        [with_deliveries, user.pk],
    )[0][0]
    if backfilled != 100 * rounds:
        raise RuntimeError(f"expected {100 * rounds} backfilled deliveries, found {backfilled}")
    loaded_ms = statistics.median(loaded) * 1000
    empty_ms = statistics.median(empty) * 1000
    return Result(
        benchmark="deliveries.guest_link",
        figures={
            "guests": rounds,
            "with_100_deliveries_ms": round(loaded_ms, 3),
            "without_deliveries_ms": round(empty_ms, 3),
            "added_ms": round(max(0.0, loaded_ms - empty_ms), 3),
        },
        targets=(Target("added_ms", at_most=2.0),),
        notes="guest_link_user service, medians; added = the backfill's 100 updates + audit rows",
    )


# -- message send --------------------------------------------------------------------------------


def _message_send_results(ctx: Context, scratch: Scratch) -> list[Result]:
    from deliveries import services
    from deliveries.models import Event
    from evoflow.models import User

    copy = ctx.server_kind("copy")  # message_send commits as the server does
    guest_count = ctx.size(quick=5_000, full=100_000, minimum=10)
    event_id = scratch.event()
    users = scratch.users(max(1, guest_count // 10), label="send")
    # Half the guests linked (ten guests per user), half not.
    scratch.guests(event_id, guest_count // 2, user_ids=users)
    scratch.guests(event_id, guest_count - guest_count // 2, user_ids=None)
    _execute("ANALYZE deliveries_eventguest")
    event = Event.objects.get(pk=event_id)
    host = User.objects.get(pk=scratch.host_id)

    with timed() as send_time:
        result = services.message_send(event=event, sender=host, body="bench")
    if (result.delivery_count, result.linked_count) != (guest_count, guest_count // 2):
        raise RuntimeError(f"unexpected counts {result.delivery_count}, {result.linked_count}")

    message_id = scratch.messages(event_id, 1)[0]
    with timed() as bare_time, transaction.atomic(), pgtrigger.ignore(INSERT_TRIGGER):
        _execute(
            """
            INSERT INTO deliveries_messagedelivery
                (message_id, guest_id, phone, phone_e164, status, created_at, updated_at)
            SELECT %s, guest.id, guest.phone, guest.phone_e164, 'queued', now(), now()
            FROM deliveries_eventguest AS guest
            WHERE guest.event_id = %s AND guest.removed_at IS NULL
            """,
            [message_id, event_id],
        )
    return [
        Result(
            benchmark="deliveries.message_send",
            figures={
                "deliveries": guest_count,
                "linked": result.linked_count,
                "seconds": round(send_time[0], 4),
                "deliveries_per_s": round(guest_count / send_time[0], 1),
            },
            notes="message_send: one INSERT ... SELECT, linked and audited by the trigger",
            reference={"deliveries_per_s": copy},
            warmup=SET_BASED_WARMUP,
        ),
        Result(
            benchmark="deliveries.message_send.no_trigger",
            figures={
                "deliveries": guest_count,
                "seconds": round(bare_time[0], 4),
                "deliveries_per_s": round(guest_count / bare_time[0], 1),
            },
            notes="the same INSERT ... SELECT with the linking trigger ignored: no link, no audit",
            reference={"deliveries_per_s": copy},
            warmup=SET_BASED_WARMUP,
        ),
    ]


def run(ctx: Context) -> list[Result]:
    # One INFO line per guest linked would drown the figures.
    logging.getLogger("deliveries.services").setLevel(logging.WARNING)
    scratch = Scratch()
    try:
        results = _backfill_results(ctx, scratch)
        results.append(_guest_link_result(ctx, scratch))
        results.extend(_message_send_results(ctx, scratch))
    finally:
        scratch.cleanup()
    results.extend(
        reference_results(
            ctx,
            prefix="deliveries.postgres",
            copy_rows_count=ctx.size(quick=20_000, full=1_000_000, minimum=20),
            insert_rows_count=ctx.size(quick=2_000, full=20_000, minimum=16),
            kinds=(ctx.server_kind("copy"), ctx.server_kind("insert_1_conn")),
        )
    )
    return results
