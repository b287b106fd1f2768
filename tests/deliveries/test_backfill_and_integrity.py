"""The historical backfill command and the integrity checks, on backlogs built around the
triggers (as a restore or the old system would have left them)."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection

from deliveries import services
from deliveries.models import EventGuest, MessageDelivery, UserLinkAudit
from evoflow.models import IntegrityCheckResult
from tests.core.factories import UserFactory
from tests.deliveries.conftest import FALLBACK, LINKING, flag_set, triggers_bypassed
from tests.deliveries.factories import EventFactory, EventGuestFactory, MessageFactory

pytestmark = pytest.mark.django_db

UNLINKED = "deliveries.unlinked_deliveries"


def build_backlog(*, consistent: int, inconsistent: int) -> tuple[list[int], dict[int, int]]:
    """Deliveries as the old system left them: `inconsistent` of them have no user although
    their guest is linked. Returns (ids of the inconsistent ones, {delivery id: guest's user})."""
    event = EventFactory()
    message = MessageFactory(event=event)
    users = UserFactory.create_batch(2)
    with triggers_bypassed():
        guests = [
            EventGuestFactory(event=event, user=users[index % 2])
            for index in range(consistent + inconsistent)
        ]
        rows = MessageDelivery.objects.bulk_create(
            [
                MessageDelivery(
                    message=message,
                    guest=guest,
                    user_id=guest.user_id if index < consistent else None,
                )
                for index, guest in enumerate(guests)
            ]
        )
    broken = [row.pk for row in rows[consistent:]]
    expected = {row.pk: row.guest.user_id for row in rows}
    assert UserLinkAudit.objects.count() == 0
    return broken, expected


def run_command(name: str, *args: str) -> tuple[int, str]:
    out = StringIO()
    try:
        call_command(name, *args, stdout=out, stderr=StringIO())
    except SystemExit as exit_:
        return int(exit_.code or 0), out.getvalue()
    return 0, out.getvalue()


def users_by_delivery() -> dict[int, int | None]:
    return dict(MessageDelivery.objects.values_list("id", "user_id"))


# -- backfill_deliveries -------------------------------------------------------------------------


def test_backfill_fixes_a_backlog_and_a_second_run_changes_nothing():
    broken, expected = build_backlog(consistent=7, inconsistent=5)

    code, output = run_command("backfill_deliveries", "--batch-size", "2", "--no-progress")

    assert code == 0
    assert "linked 5 of 5 deliveries without a user" in output
    assert users_by_delivery() == expected
    audits = UserLinkAudit.objects.order_by("delivery_id")
    assert [(row.delivery_id, row.outcome, row.method) for row in audits] == [
        (pk, "linked", "historical") for pk in broken
    ]

    second_code, second_output = run_command("backfill_deliveries", "--no-progress")

    assert second_code == 0
    assert "Nothing to do" in second_output
    assert users_by_delivery() == expected
    assert UserLinkAudit.objects.count() == 5


def test_backfill_dry_run_changes_nothing():
    build_backlog(consistent=3, inconsistent=4)
    before = users_by_delivery()

    code, output = run_command("backfill_deliveries", "--dry-run", "--no-progress")

    assert code == 0
    assert "would link 4 of 4 deliveries without a user" in output
    assert "  linked: 4" in output
    assert users_by_delivery() == before
    assert UserLinkAudit.objects.count() == 0


def test_backfill_audits_every_attempt_those_that_link_nothing_too():
    broken, _ = build_backlog(consistent=0, inconsistent=2)
    with triggers_bypassed():
        orphan_guest = EventGuestFactory()
        orphan = MessageDelivery.objects.create(
            message=MessageFactory(event=orphan_guest.event), guest=orphan_guest
        )

    _, first = run_command("backfill_deliveries", "--no-progress")
    _, second = run_command("backfill_deliveries", "--no-progress")

    assert "linked 2 of 3" in first
    assert "  no_match: 1" in first
    assert "linked 0 of 1" in second
    assert MessageDelivery.objects.get(pk=orphan.pk).user_id is None
    # Every attempt is logged (seed 002): the two links once, the orphan once per run.
    assert sorted(
        UserLinkAudit.objects.values_list("delivery_id", "outcome", "method", "details__reason")
    ) == sorted(
        [
            (broken[0], "linked", "historical", "guest_user"),
            (broken[1], "linked", "historical", "guest_user"),
            (orphan.pk, "no_match", "historical", "guest_not_linked"),
            (orphan.pk, "no_match", "historical", "guest_not_linked"),
        ]
    )


def test_the_integrity_repair_audits_the_attempts_that_link_nothing():
    broken, _ = build_backlog(consistent=0, inconsistent=1)
    with triggers_bypassed():
        orphan_guest = EventGuestFactory()
        orphan = MessageDelivery.objects.create(
            message=MessageFactory(event=orphan_guest.event), guest=orphan_guest
        )

    code, _ = run_command("integrity", "--check", UNLINKED, "--fix")

    assert code == 0
    assert sorted(UserLinkAudit.objects.values_list("delivery_id", "outcome", "method")) == sorted(
        [(broken[0], "linked", "historical"), (orphan.pk, "no_match", "historical")]
    )


def test_the_backfill_with_linking_off_audits_each_attempt_skipped_with_its_reason():
    build_backlog(consistent=0, inconsistent=2)
    flag_set(LINKING, False)

    run_command("backfill_deliveries", "--no-progress")

    assert list(UserLinkAudit.objects.values_list("outcome", "method", "details__reason")) == [
        ("skipped", "historical", "flag_off"),
        ("skipped", "historical", "flag_off"),
    ]


def test_backfill_honours_the_flags():
    broken, expected = build_backlog(consistent=0, inconsistent=3)
    flag_set(LINKING, False)

    _, output = run_command("backfill_deliveries", "--no-progress")

    assert "linked 0 of 3" in output
    assert "  skipped: 3" in output
    assert set(MessageDelivery.objects.values_list("user_id", flat=True)) == {None}

    flag_set(LINKING, True)
    run_command("backfill_deliveries", "--no-progress")

    assert users_by_delivery() == expected


def test_backfill_uses_the_phone_fallback_only_when_its_flag_is_on():
    user = UserFactory(phone="+14155550123")
    with triggers_bypassed():
        guest = EventGuestFactory(phone="+14155550123")
        delivery = MessageDelivery.objects.create(
            message=MessageFactory(event=guest.event), guest=guest
        )

    run_command("backfill_deliveries", "--no-progress")
    assert MessageDelivery.objects.get(pk=delivery.pk).user_id is None

    flag_set(FALLBACK, True)
    run_command("backfill_deliveries", "--no-progress")

    assert MessageDelivery.objects.get(pk=delivery.pk).user_id == user.pk
    assert list(
        UserLinkAudit.objects.order_by("id").values_list(
            "outcome", "method", "user_id", "details__reason"
        )
    ) == [
        ("no_match", "historical", None, "guest_not_linked"),
        ("linked", "historical", user.pk, "unique_user_with_phone"),
    ]


def test_backfill_refuses_a_bad_batch_size():
    with pytest.raises(Exception, match="--batch-size must be a positive number"):
        call_command("backfill_deliveries", "--batch-size", "0", stdout=StringIO())


# -- integrity -----------------------------------------------------------------------------------


def integrity_json(*args: str) -> tuple[int, dict]:
    code, output = run_command("integrity", "--json", *args)
    return code, json.loads(output)


def check_result(document: dict, check_id: str) -> dict:
    (result,) = [check for check in document["checks"] if check["id"] == check_id]
    return result


def test_integrity_reports_the_exact_inconsistency_count_and_ratio_and_exits_2_above_1_percent():
    broken, _ = build_backlog(consistent=97, inconsistent=3)

    code, document = integrity_json("--check", UNLINKED)

    result = check_result(document, UNLINKED)
    assert code == 2
    assert (result["status"], result["failing_count"], result["population"]) == ("error", 3, 100)
    assert result["ratio"] == 0.03
    assert result["sample_ids"] == [str(pk) for pk in broken]


def test_integrity_is_a_warning_at_or_below_1_percent():
    build_backlog(consistent=199, inconsistent=1)

    code, document = integrity_json("--check", UNLINKED)

    result = check_result(document, UNLINKED)
    assert code == 1
    assert (result["status"], result["failing_count"], result["population"]) == (
        "warning",
        1,
        200,
    )
    assert result["ratio"] == 0.005


def test_integrity_fix_runs_the_backfill_and_brings_the_rate_to_zero():
    broken, expected = build_backlog(consistent=10, inconsistent=5)

    dry_code, dry = integrity_json("--check", UNLINKED, "--fix", "--dry-run")
    assert dry_code == 2
    assert check_result(dry, UNLINKED)["repaired_count"] == 5
    assert MessageDelivery.objects.filter(user__isnull=True).count() == 5

    code, document = integrity_json("--check", UNLINKED, "--fix")

    result = check_result(document, UNLINKED)
    assert code == 0
    assert (result["status"], result["failing_count"], result["repaired_count"]) == ("ok", 0, 5)
    assert users_by_delivery() == expected
    assert UserLinkAudit.objects.filter(method="historical").count() == 5
    assert IntegrityCheckResult.objects.filter(check_id=UNLINKED).count() == 2

    after_code, after = integrity_json("--check", UNLINKED)
    assert after_code == 0
    assert check_result(after, UNLINKED)["failing_count"] == 0


def test_integrity_is_healthy_on_data_written_through_the_triggers():
    event = EventFactory()
    EventGuestFactory(event=event, user=UserFactory())
    EventGuestFactory(event=event)
    MessageFactory(event=event)
    services.message_send(event=event, sender=event.host, body="hi")

    code, document = integrity_json(
        "--check",
        UNLINKED,
        "--check",
        "deliveries.user_mismatch",
        "--check",
        "deliveries.linked_without_audit",
        "--check",
        "deliveries.phone_not_normalised",
    )

    assert code == 0, document
    assert [check["failing_count"] for check in document["checks"]] == [0, 0, 0, 0]


def test_a_delivery_left_on_the_old_user_around_the_triggers_is_caught():
    old, new = UserFactory(), UserFactory()
    guest = EventGuestFactory(user=old)
    result = services.message_send(event=guest.event, sender=guest.event.host, body="hi")
    with triggers_bypassed():
        EventGuest.objects.filter(pk=guest.pk).update(user=new)

    code, document = integrity_json("--check", "deliveries.user_mismatch")

    delivery = MessageDelivery.objects.get(message=result.message)
    mismatch = check_result(document, "deliveries.user_mismatch")
    assert code == 2
    assert (mismatch["failing_count"], mismatch["population"]) == (1, 1)
    assert mismatch["sample_ids"] == [str(delivery.pk)]


def test_linked_deliveries_without_an_audit_row_are_caught():
    build_backlog(consistent=2, inconsistent=0)

    code, document = integrity_json("--check", "deliveries.linked_without_audit")

    result = check_result(document, "deliveries.linked_without_audit")
    assert code == 1
    assert (result["failing_count"], result["population"]) == (2, 2)


def test_guests_and_users_whose_phone_is_not_normalised_are_caught():
    good_guest = EventGuestFactory(phone="(415) 555-0101")
    stale_guest = EventGuestFactory(phone="+14155550102")
    unreadable_user = UserFactory(phone="not a number")
    UserFactory(phone="+44 20 7946 0958")
    with connection.cursor() as cursor:
        # Changed around the model: the stored E.164 no longer matches the typed number.
        cursor.execute(
            "UPDATE deliveries_eventguest SET phone = '+1 415 555 0199' WHERE id = %s",
            [stale_guest.pk],
        )

    code, document = integrity_json("--check", "deliveries.phone_not_normalised")

    result = check_result(document, "deliveries.phone_not_normalised")
    assert code == 1
    assert result["failing_count"] == 2
    assert sorted(result["sample_ids"]) == sorted(
        [f"guest:{stale_guest.pk}", f"user:{unreadable_user.pk}"]
    )
    assert f"guest:{good_guest.pk}" not in result["sample_ids"]


def test_the_unlinked_check_fails_exactly_the_rows_of_the_admins_inconsistent_filter():
    from deliveries.selectors import deliveries_inconsistent
    from evoflow.integrity import get_check
    from evoflow.integrity.runner import evaluate_check

    # Given inconsistent deliveries, consistent ones, a removed guest's and an unlinked guest's
    broken, _ = build_backlog(consistent=3, inconsistent=4)
    event = EventFactory()
    message = MessageFactory(event=event)
    removed = EventGuestFactory(event=event, user=UserFactory())
    nobody = EventGuestFactory(event=event, user=None)
    with triggers_bypassed():
        MessageDelivery.objects.bulk_create(
            [MessageDelivery(message=message, guest=guest) for guest in (removed, nobody)]
        )
        EventGuest.objects.filter(pk=removed.pk).update(removed_at="2026-01-01T00:00:00Z")

    evaluation = evaluate_check(get_check(UNLINKED))

    assert evaluation.outcome is not None
    assert sorted(int(i) for i in evaluation.outcome.sample_ids) == sorted(broken)
    assert sorted(deliveries_inconsistent().values_list("id", flat=True)) == sorted(broken)
    assert evaluation.outcome.population == MessageDelivery.objects.count()


def test_the_phone_check_reads_only_its_partial_indexes_of_stale_numbers():
    from evoflow.integrity import get_check

    # Given a guest whose number was changed around the model, and a sound one
    event = EventFactory()
    stale = EventGuestFactory(event=event, phone="+14155550101")
    EventGuestFactory(event=event, phone="+14155550102")
    EventGuest.objects.filter(pk=stale.pk).update(phone="+14155550199")

    with connection.cursor() as cursor:
        # Whatever the planner would pick on tables this small: scans of the tables are off.
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute(
            "EXPLAIN " + get_check("deliveries.phone_not_normalised").render_sql(),
            {"sample_limit": 20},
        )
        plan = "\n".join(row[0] for row in cursor.fetchall())
        cursor.execute(
            get_check("deliveries.phone_not_normalised").render_sql(), {"sample_limit": 20}
        )
        failing, _population, samples = cursor.fetchone()

    # Then the failing rows come from the two partial indexes (the migration's predicate is
    # still the check's), and the stale guest is found
    assert "guest_phone_stale_idx" in plan
    assert "user_phone_stale_idx" in plan
    assert (failing, samples) == (1, [f"guest:{stale.pk}"])
