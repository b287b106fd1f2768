"""Linking across real, separate connections and processes (committed data)."""

from __future__ import annotations

import json
import threading
import time

import psycopg
import pytest
from django.db import transaction

from deliveries import locks
from deliveries.models import MessageDelivery, UserLinkAudit
from evoflow.db import psycopg_conninfo
from tests.core.factories import UserFactory
from tests.deliveries.conftest import triggers_bypassed
from tests.deliveries.factories import EventGuestFactory, MessageDeliveryFactory, MessageFactory
from tests.helpers import run_python, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

INSERT_DELIVERY = (
    "INSERT INTO deliveries_messagedelivery (message_id, guest_id) VALUES (%s, %s) RETURNING id"
)
LINK_GUEST = "UPDATE deliveries_eventguest SET user_id = %s WHERE id = %s"


def waiting_on_a_lock(conninfo: str, application_name: str) -> bool:
    with psycopg.connect(conninfo, autocommit=True) as probe:
        row = probe.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE application_name = %s AND wait_event_type = 'Lock'",
            [application_name],
        ).fetchone()
    return bool(row and row[0])


def run_in_thread(conninfo: str, statement: str, params: list) -> tuple[threading.Thread, list]:
    results: list = []

    def work() -> None:
        with psycopg.connect(conninfo) as conn:
            row = conn.execute(statement, params).fetchone()
            conn.commit()
            results.append(row[0] if row else None)

    thread = threading.Thread(target=work)
    thread.start()
    return thread, results


def test_a_guest_linked_while_a_delivery_insert_is_open_still_backfills_it():
    guest = EventGuestFactory()
    message = MessageFactory(event=guest.event)
    user = UserFactory()
    linker = "deliveries-test-linker"

    with psycopg.connect(psycopg_conninfo()) as inserter:
        # Given a delivery inserted (not linked: the guest has no user yet), not committed
        (delivery_id,) = inserter.execute(INSERT_DELIVERY, [message.pk, guest.pk]).fetchone()
        # When another connection links the guest meanwhile
        thread, _ = run_in_thread(
            psycopg_conninfo(application_name=linker),
            LINK_GUEST + " RETURNING id",
            [user.pk, guest.pk],
        )
        assert wait_for(lambda: waiting_on_a_lock(psycopg_conninfo(), linker), timeout=10)
        inserter.commit()
    thread.join(timeout=10)

    # Then the link waited for the insert and backfilled the delivery it could not see before
    assert MessageDelivery.objects.get(pk=delivery_id).user_id == user.pk
    assert list(UserLinkAudit.objects.order_by("id").values_list("outcome", "method")) == [
        ("no_match", "guest"),
        ("linked", "guest_backfill"),
    ]


def test_a_delivery_inserted_while_a_guest_link_is_open_is_linked_on_commit():
    guest = EventGuestFactory()
    message = MessageFactory(event=guest.event)
    user = UserFactory()
    inserter = "deliveries-test-inserter"

    with psycopg.connect(psycopg_conninfo()) as linker:
        # Given a guest linked (its backfill found nothing), not committed
        linker.execute(LINK_GUEST, [user.pk, guest.pk])
        # When another connection inserts a delivery for the guest meanwhile
        thread, results = run_in_thread(
            psycopg_conninfo(application_name=inserter), INSERT_DELIVERY, [message.pk, guest.pk]
        )
        assert wait_for(lambda: waiting_on_a_lock(psycopg_conninfo(), inserter), timeout=10)
        linker.commit()
    thread.join(timeout=10)

    # Then the insert waited for the link and saw it
    (delivery_id,) = results
    assert MessageDelivery.objects.get(pk=delivery_id).user_id == user.pk
    assert list(UserLinkAudit.objects.values_list("outcome", "method")) == [("linked", "guest")]


def test_a_flag_flipped_by_another_connection_is_seen_by_the_next_delivery():
    guest = EventGuestFactory(user=UserFactory())
    first = MessageDeliveryFactory(guest=guest)

    with psycopg.connect(psycopg_conninfo(), autocommit=True) as other:
        other.execute(
            "UPDATE deliveries_featureflag SET enabled = false WHERE name = 'LINK_USER_BY_PHONE'"
        )
    second = MessageDeliveryFactory(guest=guest)

    assert MessageDelivery.objects.get(pk=first.pk).user_id == guest.user_id
    assert MessageDelivery.objects.get(pk=second.pk).user_id is None
    assert UserLinkAudit.objects.get(delivery=second).outcome == "skipped"


def test_the_integrity_command_line_exits_2_and_fix_brings_it_to_0(subprocess_env):
    message = MessageFactory()
    with triggers_bypassed():
        linked = EventGuestFactory(event=message.event, user=UserFactory())
        MessageDelivery.objects.bulk_create(
            [MessageDelivery(message=message, guest=linked)]
            + [
                MessageDelivery(
                    message=message,
                    guest=EventGuestFactory(event=message.event, user=linked.user),
                    user=linked.user,
                )
                for _ in range(9)
            ]
        )
    check = ["manage.py", "integrity", "--check", "deliveries.unlinked_deliveries", "--json"]

    started = time.monotonic()
    broken = run_python(*check, env=subprocess_env)
    fixed = run_python(*check, "--fix", env=subprocess_env)

    assert broken.returncode == 2, broken.stderr
    (result,) = json.loads(broken.stdout)["checks"]
    assert (result["failing_count"], result["population"], result["ratio"]) == (1, 10, 0.1)
    assert fixed.returncode == 0, fixed.stderr
    assert json.loads(fixed.stdout)["checks"][0]["failing_count"] == 0
    assert MessageDelivery.objects.filter(user__isnull=True).count() == 0
    assert time.monotonic() - started < 120


def test_the_backfill_command_line_shows_progress_and_is_idempotent(subprocess_env):
    message = MessageFactory()
    user = UserFactory()
    with triggers_bypassed():
        guests = [EventGuestFactory(event=message.event, user=user) for _ in range(5)]
        MessageDelivery.objects.bulk_create(
            [MessageDelivery(message=message, guest=guest) for guest in guests]
        )

    first = run_python("manage.py", "backfill_deliveries", "--batch-size", "2", env=subprocess_env)
    second = run_python("manage.py", "backfill_deliveries", env=subprocess_env)

    assert first.returncode == 0, first.stderr
    assert "linked 5 of 5" in first.stdout
    # The progress bar, on stderr
    assert "backfill" in first.stderr
    assert "ids" in first.stderr
    assert second.returncode == 0, second.stderr
    assert "Nothing to do" in second.stdout
    assert set(MessageDelivery.objects.values_list("user_id", flat=True)) == {user.pk}
    assert UserLinkAudit.objects.filter(method="historical").count() == 5


def test_the_python_event_lock_is_the_one_the_insert_trigger_waits_for():
    guest = EventGuestFactory(user=UserFactory())
    message = MessageFactory(event=guest.event)
    inserter = "deliveries-test-lock-key"

    with transaction.atomic():
        locks.event_link_lock(guest.event_id)
        thread, results = run_in_thread(
            psycopg_conninfo(application_name=inserter), INSERT_DELIVERY, [message.pk, guest.pk]
        )
        assert wait_for(lambda: waiting_on_a_lock(psycopg_conninfo(), inserter), timeout=10)
        assert results == []
    thread.join(timeout=10)

    assert len(results) == 1
    assert MessageDelivery.objects.get(pk=results[0]).user_id == guest.user_id


def test_a_delivery_inserted_while_a_guest_is_moved_by_raw_sql_ends_on_the_new_user():
    old, new = UserFactory(), UserFactory()
    guest = EventGuestFactory(user=old)
    message = MessageFactory(event=guest.event)
    inserter = "deliveries-test-inserter-move"

    with psycopg.connect(psycopg_conninfo()) as mover:
        # Given a guest moved from `old` to `new` by raw SQL, not committed
        mover.execute(LINK_GUEST, [new.pk, guest.pk])
        # When another connection inserts a delivery for the guest meanwhile
        thread, results = run_in_thread(
            psycopg_conninfo(application_name=inserter), INSERT_DELIVERY, [message.pk, guest.pk]
        )
        assert wait_for(lambda: waiting_on_a_lock(psycopg_conninfo(), inserter), timeout=10)
        mover.commit()
    thread.join(timeout=10)

    # Then the insert waited for the move and the old user never reads it
    (delivery_id,) = results
    assert MessageDelivery.objects.get(pk=delivery_id).user_id == new.pk
    assert not MessageDelivery.objects.filter(user=old).exists()


def _waiting_on_an_advisory_lock() -> bool:
    with psycopg.connect(psycopg_conninfo(), autocommit=True) as probe:
        row = probe.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND wait_event = 'advisory'"
        ).fetchone()
    return bool(row and row[0])


def test_linking_a_guest_while_a_delivery_to_it_commits_does_not_deadlock():
    from django.db import connection

    from deliveries.services import guest_link_user

    guest = EventGuestFactory()
    message = MessageFactory(event=guest.event)
    user = UserFactory()
    outcome: list[object] = []

    def link() -> None:
        try:
            outcome.append(guest_link_user(guest=guest, user=user).user_id)
        except Exception as error:  # noqa: BLE001 - the test reports what the linker met
            outcome.append(error)
        finally:
            connection.close()

    with psycopg.connect(psycopg_conninfo()) as inserter:
        # Given a delivery to the guest inserted, not committed: it holds the event's shared
        # lock, and its foreign key to the guest is checked at commit (KEY SHARE on the row)
        (delivery_id,) = inserter.execute(INSERT_DELIVERY, [message.pk, guest.pk]).fetchone()
        # When the service links the guest meanwhile (it locks the guest row, then waits for the
        # event's lock in the link trigger)
        thread = threading.Thread(target=link)
        thread.start()
        assert wait_for(_waiting_on_an_advisory_lock, timeout=10)
        # Then the insert commits (its key check is not blocked by the linker's row lock) ...
        inserter.commit()
    thread.join(timeout=15)

    # ... and the link completes after it, backfilling the delivery
    assert outcome == [user.pk]
    assert MessageDelivery.objects.get(pk=delivery_id).user_id == user.pk
