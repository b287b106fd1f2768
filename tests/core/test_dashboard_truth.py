"""The dashboard says what is true: a tile's badge is at least a warning when one of its own
numbers counts failures, "last integrity run" is the last full run, Repair is offered only when
there is something to repair, and "Run integrity now" is on the dashboard for who may run it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Group, Permission
from django.test import Client
from django.utils import timezone
from django_q.models import Failure

from evoflow.integrity.runner import integrity_run
from evoflow.models import IntegrityRun
from evoflow.permissions import OPERATORS_GROUP
from tests.core.factories import UserFactory
from tests.core.test_dashboard import client_for, dashboard_page, text
from tests.deliveries.test_backfill_and_integrity import build_backlog

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator_web() -> Client:
    """A member of the operators group, logged in."""
    user = UserFactory(is_staff=True)
    user.groups.add(Group.objects.get(name=OPERATORS_GROUP))
    return client_for(user)


def _failure(*, hours_ago: float) -> None:
    stopped = timezone.now() - timedelta(hours=hours_ago)
    Failure.objects.create(
        id=f"f{hours_ago}".replace(".", "")[:32],
        name="failed",
        func="journeys.tasks.sessions_resume",
        started=stopped,
        stopped=stopped,
        success=False,
    )


def test_a_failed_task_of_the_last_day_makes_the_tasks_badge_a_warning(operator_web):
    integrity_run(trigger="test")  # stored results: tasks ok, as no task had failed yet
    _failure(hours_ago=1)

    _, found = dashboard_page(operator_web)

    assert text(found, "tasks-failed") == "1"
    assert found["tile-tasks"]["data-status"] == "warning"
    assert text(found, "status-tasks") == "warning"
    assert found["status-tasks"]["title"] == "1 failed in the last 24 hours"


def test_an_old_failure_leaves_the_badge_to_the_stored_results(operator_web):
    _failure(hours_ago=30)
    integrity_run(trigger="test")

    _, found = dashboard_page(operator_web)

    assert text(found, "tasks-failed") == "0"
    assert found["tile-tasks"]["data-status"] == "ok"
    assert "title" not in found["status-tasks"]


def test_the_last_integrity_run_is_the_last_full_run_not_a_repair(operator_web):
    build_backlog(consistent=1, inconsistent=2)
    full = integrity_run(trigger="test")
    integrity_run(check_ids=["deliveries.unlinked_deliveries"], fix=True, trigger="test")
    integrity_run(fix=True, dry_run=True, trigger="test")
    assert IntegrityRun.objects.count() == 3

    _, found = dashboard_page(operator_web)

    assert text(found, "last-integrity-run").startswith("Last full integrity run:")
    link = found["last-integrity-run-link"]
    assert link["href"] == f"/admin/evoflow/integrityrun/{full.pk}/change/"
    assert text(found, "last-integrity-run-link").endswith(f"UTC, {full.status}")


def test_repair_is_offered_only_while_something_fails(operator_web):
    build_backlog(consistent=1, inconsistent=2)
    integrity_run(trigger="test")

    _, failing = dashboard_page(operator_web)
    assert "repair-deliveries.unlinked_deliveries" in failing

    integrity_run(check_ids=["deliveries.unlinked_deliveries"], fix=True, trigger="test")
    _, repaired = dashboard_page(operator_web)
    assert text(repaired, "inconsistency-rate") == "0%"
    assert "repair-deliveries.unlinked_deliveries" not in repaired


def test_run_integrity_now_is_on_the_dashboard_for_who_may_run_it(operator_web):
    _, found = dashboard_page(operator_web)
    assert text(found, "dashboard-run-integrity") == "Run integrity now"

    viewer = UserFactory(is_staff=True)
    viewer.user_permissions.set(Permission.objects.filter(codename="view_integrityrun"))
    _, without = dashboard_page(client_for(viewer))
    assert "last-integrity-run" in without
    assert "dashboard-run-integrity" not in without


def test_the_dashboard_button_queues_a_run_and_opens_it(operator_web):
    response = operator_web.post("/admin/evoflow/integrityrun/run-now/")

    run = IntegrityRun.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/admin/evoflow/integrityrun/{run.pk}/change/"
    assert run.status == "queued"
