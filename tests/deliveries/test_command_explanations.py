"""Commands say why they changed nothing, and refuse contradictory options: the backfill and
the integrity repair name the linking flag that is off; `integrity --dry-run` without `--fix`
is refused and stores no run."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command

from deliveries.models import MessageDelivery
from evoflow.models import IntegrityRun
from tests.deliveries.conftest import LINKING, flag_set
from tests.deliveries.test_backfill_and_integrity import build_backlog, run_command

pytestmark = pytest.mark.django_db

FLAG_OFF = "the feature flag LINK_USER_BY_PHONE is off"


def test_the_backfill_names_the_flag_that_made_it_link_nothing():
    build_backlog(consistent=2, inconsistent=3)
    flag_set(LINKING, False)

    dry_code, dry_out = run_command("backfill_deliveries", "--dry-run", "--no-progress")
    code, out = run_command("backfill_deliveries", "--no-progress")

    assert (dry_code, code) == (0, 0)
    assert f"Nothing would link: {FLAG_OFF}" in dry_out
    assert f"Nothing linked: {FLAG_OFF}" in out
    assert MessageDelivery.objects.filter(user__isnull=True).count() == 3


def test_the_backfill_says_nothing_of_the_flag_when_it_linked():
    build_backlog(consistent=2, inconsistent=3)

    code, out = run_command("backfill_deliveries", "--no-progress")

    assert code == 0
    assert "linked 3 of 3 deliveries" in out
    assert "Nothing" not in out
    assert MessageDelivery.objects.filter(user__isnull=True).count() == 0


def test_integrity_fix_dry_run_names_the_flag_when_the_repair_would_change_nothing():
    build_backlog(consistent=2, inconsistent=3)
    flag_set(LINKING, False)

    code, out = run_command(
        "integrity", "--check", "deliveries.unlinked_deliveries", "--fix", "--dry-run"
    )

    assert code == 2  # still failing at error level: 3 of 5 is past 1%
    line = next(line for line in out.splitlines() if "deliveries.unlinked_deliveries" in line)
    assert f"would repair 0 ({FLAG_OFF}" in line


def test_integrity_refuses_dry_run_without_fix_and_stores_no_run():
    build_backlog(consistent=2, inconsistent=3)

    err = StringIO()
    with pytest.raises(SystemExit) as exit_:
        call_command("integrity", "--dry-run", stdout=StringIO(), stderr=err)

    assert exit_.value.code == 3
    assert "--dry-run only applies to --fix" in err.getvalue()
    assert IntegrityRun.objects.count() == 0
    assert MessageDelivery.objects.filter(user__isnull=True).count() == 3
