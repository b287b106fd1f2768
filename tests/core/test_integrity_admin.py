"""Integrity in the admin: the runs list, a run's page, "run integrity now" and repairs."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group, Permission
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_q.models import OrmQ, Schedule
from django_q.signing import SignedPackage

from deliveries.models import MessageDelivery, UserLinkAudit
from evoflow.integrity import IntegrityCheck, registered
from evoflow.integrity.registry import all_checks
from evoflow.integrity.runner import (
    PROCESS_RUN_LEASE,
    integrity_run,
    integrity_run_lease,
    integrity_run_queued_expiry,
    integrity_run_request,
    integrity_runs_fail_lost,
)
from evoflow.integrity.tasks import integrity_run_requested
from evoflow.models import IntegrityCheckResult, IntegrityRun, User
from evoflow.permissions import OPERATORS_GROUP
from evoflow.schedules import schedules_ensure
from journeys.integrity import _resume_overdue
from journeys.models import JourneySession, SessionStatus
from journeys.services import session_start
from tests.core.factories import UserFactory
from tests.deliveries.test_backfill_and_integrity import build_backlog
from tests.helpers import qcluster, wait_for
from tests.journeys.conftest import advance_all
from tests.journeys.factories import JourneyFactory, linear_flow

pytestmark = pytest.mark.django_db

RUNS = "/admin/evoflow/integrityrun/"
RUN_NOW = "/admin/evoflow/integrityrun/run-now/"
UNLINKED = "deliveries.unlinked_deliveries"
REPAIR_UNLINKED = f"/admin/evoflow/integrityrun/repair/{UNLINKED}/"
# A check that needs no data: two failing rows out of ten, samples 7 and 8.
FIXED = IntegrityCheck(
    id="test.fixed",
    description="two of ten",
    sql="SELECT 2, 10, ARRAY['7', '8']",
    warning_count=1,
    error_ratio=0.5,
    sample_admin_url_name="admin:deliveries_messagedelivery_change",
)


def run_url(run: IntegrityRun) -> str:
    return f"/admin/evoflow/integrityrun/{run.pk}/change/"


def staff_client(*, without: tuple[str, ...] = ()) -> Client:
    """An operator (staff, the operators group's permissions) lacking the `without` codenames."""
    user = UserFactory(is_staff=True)
    group = Group.objects.get(name=OPERATORS_GROUP)
    if without:
        user.user_permissions.set(group.permissions.exclude(codename__in=without))
    else:
        user.groups.add(group)
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def operator_client() -> Client:
    return staff_client()


@pytest.fixture
def superuser_client() -> Client:
    client = Client()
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


def queued_tasks() -> list[tuple[str, tuple]]:
    tasks = [SignedPackage.loads(row.payload) for row in OrmQ.objects.order_by("id")]
    return [(task["func"], task["args"]) for task in tasks]


def html(response) -> str:
    return response.content.decode()


# -- the runs list and "run integrity now" -------------------------------------------------------


@pytest.mark.parametrize("client_fixture", ["superuser_client", "operator_client"])
def test_run_now_queues_one_run_and_its_task(request, client_fixture):
    client = request.getfixturevalue(client_fixture)
    assert 'data-testid="run-now"' in html(client.get(RUNS))

    response = client.post(RUN_NOW)

    run = IntegrityRun.objects.get()
    assert response.status_code == 302
    assert response["Location"] == run_url(run)
    assert (run.status, run.trigger, run.fix_requested, run.requested_checks) == (
        "queued",
        "admin",
        False,
        [],
    )
    assert run.requested_by is not None
    assert run.request_id
    assert queued_tasks() == [("evoflow.integrity.tasks.integrity_run_requested", (run.pk,))]


def test_a_second_click_shows_the_queued_run_instead_of_queueing_another(operator_client):
    first = operator_client.post(RUN_NOW)
    second = operator_client.post(RUN_NOW)

    run = IntegrityRun.objects.get()
    assert first["Location"] == second["Location"] == run_url(run)
    assert len(queued_tasks()) == 1


def test_the_run_page_refreshes_while_queued_and_shows_the_results_when_done(operator_client):
    with registered(FIXED):
        operator_client.post(RUN_NOW)
        run = IntegrityRun.objects.get()

        queued_page = html(operator_client.get(run_url(run)))
        assert '<meta http-equiv="refresh" content="2">' in queued_page
        assert 'data-testid="run-live"' in queued_page
        assert "queued" in queued_page

        # The worker's side, called as the queue would call it
        assert integrity_run_requested(run.pk) == run.pk

        run.refresh_from_db()
        assert run.status == "warning"
        done_page = html(operator_client.get(run_url(run)))
    assert 'http-equiv="refresh"' not in done_page
    assert 'data-check="test.fixed"' in done_page
    assert "2 / 10" in done_page
    result = run.results.get(check_id="test.fixed")
    assert (result.status, result.failing_count) == ("warning", 2)


def test_a_task_delivered_twice_executes_the_run_once(operator_client):
    with registered(FIXED):
        run, created = integrity_run_request(check_ids=["test.fixed"])
        assert created

        assert integrity_run_requested(run.pk) == run.pk
        assert integrity_run_requested(run.pk) is None

    run.refresh_from_db()
    assert (run.status, run.exit_code) == ("warning", 1)
    assert run.results.count() == 1


def test_a_run_still_queued_after_the_expiry_is_failed_and_replaced():
    old, _ = integrity_run_request(trigger="admin")
    IntegrityRun.objects.filter(pk=old.pk).update(
        started_at=timezone.now() - integrity_run_queued_expiry() - timedelta(minutes=1)
    )

    new, created = integrity_run_request(trigger="admin")

    assert created
    assert new.pk != old.pk
    old.refresh_from_db()
    assert (old.status, old.exit_code) == ("failed", 3)
    assert "no worker" in old.error
    # Its task, if a worker ever gets to it, does nothing
    assert integrity_run_requested(old.pk) is None


# -- runs nobody executes any more ---------------------------------------------------------------


def silent_for(run: IntegrityRun, duration: timedelta) -> None:
    """The run as a worker leaves it: claimed, then no heartbeat for `duration`."""
    IntegrityRun.objects.filter(pk=run.pk).update(
        status="running",
        started_at=timezone.now() - duration - timedelta(minutes=1),
        heartbeat_at=timezone.now() - duration,
    )


def test_the_worker_renews_the_heartbeat_of_the_run_it_executes():
    with registered(FIXED):
        run, _ = integrity_run_request(check_ids=["test.fixed"])
        assert run.heartbeat_at is None

        integrity_run_requested(run.pk)
        command_run = integrity_run(check_ids=["test.fixed"])

    run.refresh_from_db()
    command_run.refresh_from_db()
    assert run.status == command_run.status == "warning"
    assert run.heartbeat_at is not None
    assert command_run.heartbeat_at is not None


def test_a_run_whose_worker_died_is_failed_as_lost_and_its_page_stops_refreshing(
    operator_client,
):
    # Given a run a worker claimed, then died: no heartbeat for longer than the lease
    run, _ = integrity_run_request(trigger="admin")
    silent_for(run, integrity_run_lease() + timedelta(seconds=5))

    page = html(operator_client.get(run_url(run)))

    run.refresh_from_db()
    assert (run.status, run.exit_code) == ("failed", 3)
    assert run.error.startswith("worker lost: no heartbeat for ")
    assert 'http-equiv="refresh"' not in page
    assert 'data-testid="run-live"' not in page
    assert "worker lost" in page
    # The next click starts a new run
    new, created = integrity_run_request(trigger="admin")
    assert created
    assert new.pk != run.pk


def test_a_queued_run_no_worker_started_stops_refreshing_its_page(operator_client):
    run, _ = integrity_run_request(trigger="admin")
    IntegrityRun.objects.filter(pk=run.pk).update(started_at=timezone.now() - timedelta(days=1))

    page = html(operator_client.get(run_url(run)))

    run.refresh_from_db()
    assert (run.status, run.error) == (
        "failed",
        f"no worker started the run within {integrity_run_queued_expiry().seconds // 60} minutes",
    )
    assert 'http-equiv="refresh"' not in page


def test_a_long_repair_that_still_beats_is_never_started_twice(operator_client):
    first, _ = integrity_run_request(check_ids=[UNLINKED], fix=True, trigger="admin-repair")
    # Claimed an hour ago, still backfilling: its last beat is within the lease
    IntegrityRun.objects.filter(pk=first.pk).update(
        status="running",
        started_at=timezone.now() - timedelta(hours=1),
        heartbeat_at=timezone.now() - integrity_run_lease() + timedelta(minutes=1),
    )

    response = operator_client.post(REPAIR_UNLINKED)
    page = html(operator_client.get(run_url(first)))

    assert response["Location"] == run_url(first)
    assert IntegrityRun.objects.count() == 1
    assert len(queued_tasks()) == 1
    first.refresh_from_db()
    assert first.status == "running"
    assert '<meta http-equiv="refresh" content="2">' in page
    # The lease outlasts any task: the worker kills a task after Q_TIMEOUT
    assert integrity_run_lease().total_seconds() > 2 * 60


def test_a_run_with_neither_heartbeat_nor_worker_since_its_start_is_lost():
    # A run claimed before heartbeats existed: its start stands in for the first beat
    run, _ = integrity_run_request(trigger="admin")
    IntegrityRun.objects.filter(pk=run.pk).update(
        status="running", started_at=timezone.now() - integrity_run_lease() - timedelta(minutes=1)
    )

    assert integrity_runs_fail_lost() == 1

    run.refresh_from_db()
    assert run.status == "failed"


def test_a_task_delivered_again_after_its_worker_died_fails_the_run():
    run, _ = integrity_run_request(trigger="admin")
    silent_for(run, integrity_run_lease() + timedelta(seconds=5))

    assert integrity_run_requested(run.pk) is None

    run.refresh_from_db()
    assert (run.status, run.exit_code) == ("failed", 3)
    assert run.results.count() == 0


def test_a_run_failed_as_lost_stays_failed_when_its_worker_comes_back():
    run_ids: list[int] = []

    def declared_lost_sql() -> str:
        # While the first check runs, the worker looks dead to everyone else: a page view
        # fails the run as lost.
        silent_for(IntegrityRun(pk=run_ids[0]), integrity_run_lease() + timedelta(seconds=5))
        integrity_runs_fail_lost(runs=IntegrityRun.objects.filter(pk=run_ids[0]))
        return "SELECT 0, 1, ARRAY[]::text[]"

    slow = IntegrityCheck(id="test.a_slow", description="stalls", sql=declared_lost_sql)
    with registered(slow, FIXED):
        run, _ = integrity_run_request(check_ids=["test.a_slow", "test.fixed"])
        run_ids.append(run.pk)

        returned = integrity_run_requested(run.pk)

    run.refresh_from_db()
    assert returned == run.pk
    assert (run.status, run.exit_code) == ("failed", 3)
    assert run.error.startswith("worker lost")
    # The check in progress stored nothing, and the runner stopped: the second never ran
    assert not run.results.exists()


def test_a_command_run_is_never_taken_for_lost_while_its_process_works(operator_client):
    # `manage.py integrity --fix` runs in its own process, with no task timeout: a long repair
    # leaves no heartbeat for longer than the lease, and the run is still alive.
    run_ids: list[int] = []

    def silent_sql() -> str:
        silent_for(IntegrityRun(pk=run_ids[0]), integrity_run_lease() + timedelta(minutes=5))
        page = html(operator_client.get(run_url(IntegrityRun(pk=run_ids[0]))))
        assert "worker lost" not in page
        assert integrity_runs_fail_lost() == 0
        return "SELECT 1, 2, ARRAY['x']::text[]"

    slow = IntegrityCheck(id="test.a_slow", description="stalls", sql=silent_sql)
    run = IntegrityRun.objects.create(trigger="command")
    run_ids.append(run.pk)
    with registered(slow):
        from evoflow.integrity.runner import _integrity_run_fill

        _integrity_run_fill(run, [slow])

    run.refresh_from_db()
    assert (run.status, run.exit_code) == ("warning", 1)
    assert list(run.results.values_list("check_id", flat=True)) == ["test.a_slow"]


def test_a_killed_command_run_is_taken_for_lost_after_the_process_lease():
    run = IntegrityRun.objects.create(trigger="command")
    silent_for(run, PROCESS_RUN_LEASE - timedelta(minutes=5))
    assert integrity_runs_fail_lost() == 0

    silent_for(run, PROCESS_RUN_LEASE + timedelta(minutes=5))
    assert integrity_runs_fail_lost() == 1

    run.refresh_from_db()
    assert (run.status, run.exit_code) == ("failed", 3)


def test_the_change_permission_also_sees_the_runs_so_it_may_run_them():
    client = staff_client(without=("view_integrityrun",))
    user = User.objects.get(pk=client.session["_auth_user_id"])
    user.user_permissions.add(Permission.objects.get(codename="change_integrityrun"))

    response = client.post(RUN_NOW)

    assert response.status_code == 302
    assert IntegrityRun.objects.get().status == "queued"


def test_a_queue_behind_busy_workers_is_not_expired_before_two_task_timeouts(settings):
    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "timeout": 600}
    assert integrity_run_queued_expiry() == timedelta(minutes=20)
    run, _ = integrity_run_request(trigger="admin")
    IntegrityRun.objects.filter(pk=run.pk).update(started_at=timezone.now() - timedelta(minutes=15))

    assert integrity_runs_fail_lost() == 0


@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_make_one_queued_run():
    barrier = threading.Barrier(4)
    run_ids: list[int] = []
    errors: list[BaseException] = []

    def click() -> None:
        try:
            barrier.wait()
            run, _ = integrity_run_request(trigger="admin")
            run_ids.append(run.pk)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=click) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(set(run_ids)) == 1
    assert IntegrityRun.objects.filter(status="queued").count() == 1
    assert OrmQ.objects.count() == 1


def test_without_run_integrity_there_is_no_button_and_posting_is_forbidden():
    client = staff_client(without=("run_integrity",))

    page = client.get(RUNS)
    post = client.post(RUN_NOW)
    get = client.get(RUN_NOW)

    assert page.status_code == 200
    assert 'data-testid="run-now"' not in html(page)
    assert (post.status_code, get.status_code) == (403, 403)
    assert IntegrityRun.objects.count() == 0
    assert OrmQ.objects.count() == 0


def test_repairing_or_running_needs_the_view_permission_of_the_runs_too():
    # Both end on the run's page: without view_integrityrun they would end on a 403.
    client = staff_client(without=("view_integrityrun",))
    run = integrity_run(check_ids=[UNLINKED])

    dashboard = html(client.get("/admin/"))

    assert f'data-testid="repair-{UNLINKED}"' not in dashboard
    assert client.get(REPAIR_UNLINKED).status_code == 403
    assert client.post(REPAIR_UNLINKED).status_code == 403
    assert client.post(RUN_NOW).status_code == 403
    assert IntegrityRun.objects.get() == run
    assert OrmQ.objects.count() == 0


def test_run_now_answers_get_with_405(operator_client):
    response = operator_client.get(RUN_NOW)

    assert response.status_code == 405
    assert IntegrityRun.objects.count() == 0


def test_the_list_shows_counts_by_status_and_who_asked(operator_client):
    ok = IntegrityCheck(id="test.ok", description="nothing fails", sql="SELECT 0, 5, '{}'")
    with registered(FIXED, ok):
        run, _ = integrity_run_request(
            check_ids=["test.fixed", "test.ok"], requested_by=UserFactory(username="night-owl")
        )
        integrity_run_requested(run.pk)

    page = html(operator_client.get(RUNS))

    run.refresh_from_db()
    assert run.status == "warning"
    assert "night-owl" in page
    counts = '<span data-status="{}" style="white-space:nowrap">1 {}</span>'
    assert f"{counts.format('ok', 'ok')} {counts.format('warning', 'warning')}" in page


def _runs_with_results(count: int) -> None:
    now = timezone.now()
    runs = IntegrityRun.objects.bulk_create(
        IntegrityRun(
            status="warning",
            trigger="schedule",
            started_at=now - timedelta(minutes=index),
            finished_at=now - timedelta(minutes=index) + timedelta(seconds=3),
            exit_code=1,
            requested_by=None,
        )
        for index in range(count)
    )
    IntegrityCheckResult.objects.bulk_create(
        IntegrityCheckResult(run=run, check_id=check_id, status=status)
        for run in runs
        for check_id, status in (("a", "ok"), ("b", "warning"), ("c", "error"))
    )


def _queries(client: Client, url: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200
    return len(captured)


def test_the_runs_list_reads_a_bounded_number_of_rows_10_vs_1000(operator_client):
    _runs_with_results(10)
    operator_client.get(RUNS)  # warm the session and permission caches
    few = _queries(operator_client, RUNS)

    _runs_with_results(990)
    many = _queries(operator_client, RUNS)

    assert few == many


def test_the_run_page_reads_a_bounded_number_of_rows_10_vs_1000(operator_client):
    def run_with(count: int) -> IntegrityRun:
        run = IntegrityRun.objects.create(status="warning", finished_at=timezone.now())
        IntegrityCheckResult.objects.bulk_create(
            IntegrityCheckResult(
                run=run,
                check_id=f"x.{index:04d}",
                status="warning",
                sample_ids=[str(index)],
            )
            for index in range(count)
        )
        return run

    small, big = run_with(10), run_with(1000)
    operator_client.get(run_url(small))

    assert _queries(operator_client, run_url(small)) == _queries(operator_client, run_url(big))


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_worker_executes_the_run_requested_from_the_admin(subprocess_env):
    # The operators group is made by a migration, which a transactional test's flush removes
    client = Client()
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    response = client.post(RUN_NOW)
    run = IntegrityRun.objects.get()
    assert response["Location"] == run_url(run)

    with qcluster(subprocess_env):
        finished = wait_for(
            lambda: IntegrityRun.objects.filter(pk=run.pk, finished_at__isnull=False).exists(),
            timeout=60,
        )

    assert finished, "no worker finished the run"
    run.refresh_from_db()
    assert run.status in ("healthy", "warning", "error")
    assert run.results.count() == len(all_checks())
    page = html(client.get(run_url(run)))
    assert 'http-equiv="refresh"' not in page
    assert page.count('class="integrity-check"') == len(all_checks())


# -- a run's page --------------------------------------------------------------------------------


def test_the_run_page_shows_thresholds_and_links_each_sample(operator_client):
    broken_url = IntegrityCheck(
        id="test.bad_url_name",
        description="samples whose admin page does not exist",
        sql="SELECT 1, 1, ARRAY['x']",
        sample_admin_url_name="admin:no_such_page",
    )
    with registered(FIXED, broken_url):
        run = integrity_run(check_ids=["test.fixed", "test.bad_url_name"])

        response = operator_client.get(run_url(run))

    page = html(response)
    assert response.status_code == 200
    assert '<a href="/admin/deliveries/messagedelivery/7/change/">7</a>' in page
    assert '<a href="/admin/deliveries/messagedelivery/8/change/">8</a>' in page
    # warning_count 1, error_count none, warning_ratio none, error_ratio 0.5
    assert "warning: count ≥ 1, ratio &gt; -" in page
    assert "error: count ≥ -, ratio &gt; 0.5" in page
    # A sample id whose admin page does not reverse is plain text, not a 500
    assert 'data-check="test.bad_url_name"' in page
    assert "no_such_page" not in page
    # Neither check has a repair: no repair link, even for an operator who may repair
    assert 'data-testid="repair-link"' not in page


def test_the_run_page_of_a_check_no_longer_registered_still_renders(operator_client):
    run = IntegrityRun.objects.create(status="warning", finished_at=timezone.now())
    IntegrityCheckResult.objects.create(
        run=run, check_id="gone.check", status="warning", failing_count=1, sample_ids=["1"]
    )

    response = operator_client.get(run_url(run))

    assert response.status_code == 200
    assert 'data-check="gone.check"' in html(response)


def test_an_unknown_run_id_is_not_a_500(operator_client):
    for object_id in ("999999", "abc", "²"):
        response = operator_client.get(f"/admin/evoflow/integrityrun/{object_id}/change/")
        assert response.status_code in (302, 404), object_id


# -- repairs -------------------------------------------------------------------------------------


def test_repair_preview_matches_the_dry_run_and_the_repair_fixes_the_rows(operator_client):
    # Given 4 deliveries the old system left without their guest's user, found by a run
    broken, expected = build_backlog(consistent=3, inconsistent=4)
    found = integrity_run(check_ids=[UNLINKED])
    assert found.results.get().failing_count == 4

    # The run's page offers the repair
    run_page = html(operator_client.get(run_url(found)))
    assert f'href="{REPAIR_UNLINKED}"' in run_page

    # The confirmation page evaluates the check now and previews the dry run
    confirm = operator_client.get(REPAIR_UNLINKED)
    page = html(confirm)
    assert confirm.status_code == 200
    assert '<strong data-testid="repair-preview">4</strong>' in page
    assert '<span data-testid="repair-failing">4</span>' in page
    assert 'data-testid="repair-confirm"' in page
    assert f'<a href="/admin/deliveries/messagedelivery/{broken[0]}/change/">' in page
    # ...and changes nothing
    assert MessageDelivery.objects.filter(pk__in=broken, user__isnull=True).count() == 4
    assert UserLinkAudit.objects.count() == 0

    # When the operator confirms
    response = operator_client.post(REPAIR_UNLINKED)

    repair_run = IntegrityRun.objects.exclude(pk=found.pk).get()
    assert response.status_code == 302
    assert response["Location"] == run_url(repair_run)
    assert (
        repair_run.status,
        repair_run.trigger,
        repair_run.fix_requested,
        repair_run.requested_checks,
    ) == ("queued", "admin-repair", True, [UNLINKED])
    assert queued_tasks() == [("evoflow.integrity.tasks.integrity_run_requested", (repair_run.pk,))]

    # And a worker executes it
    integrity_run_requested(repair_run.pk)

    result = IntegrityCheckResult.objects.get(run=repair_run)
    assert (result.status, result.failing_count, result.repaired_count) == ("ok", 0, 4)
    assert dict(MessageDelivery.objects.values_list("id", "user_id")) == expected
    done_page = html(operator_client.get(run_url(repair_run)))
    assert 'http-equiv="refresh"' not in done_page
    assert 'data-check="deliveries.unlinked_deliveries"' in done_page


def test_without_repair_integrity_there_is_no_repair_link_and_the_repair_is_forbidden():
    build_backlog(consistent=1, inconsistent=2)
    found = integrity_run(check_ids=[UNLINKED])
    client = staff_client(without=("repair_integrity",))

    run_page = client.get(run_url(found))
    get = client.get(REPAIR_UNLINKED)
    post = client.post(REPAIR_UNLINKED)

    assert run_page.status_code == 200
    assert 'data-testid="repair-link"' not in html(run_page)
    assert "/repair/" not in html(run_page)
    assert (get.status_code, post.status_code) == (403, 403)
    assert IntegrityRun.objects.count() == 1
    assert MessageDelivery.objects.filter(user__isnull=True).count() == 2
    assert OrmQ.objects.count() == 0


def test_superuser_sees_the_repair_link(superuser_client):
    build_backlog(consistent=1, inconsistent=1)
    found = integrity_run(check_ids=[UNLINKED])

    assert f'href="{REPAIR_UNLINKED}"' in html(superuser_client.get(run_url(found)))


@pytest.mark.parametrize(
    ("check_id", "why"),
    [("no.such_check", "unknown"), ("deliveries.user_mismatch", "no repair")],
)
def test_a_repair_of_an_unknown_or_unrepairable_check_is_404(operator_client, check_id, why):
    url = f"/admin/evoflow/integrityrun/repair/{check_id}/"

    assert operator_client.get(url).status_code == 404, why
    assert operator_client.post(url).status_code == 404, why
    assert IntegrityRun.objects.count() == 0


def test_the_repair_url_answers_other_methods_with_405(operator_client):
    assert operator_client.put(REPAIR_UNLINKED).status_code == 405
    assert operator_client.delete(REPAIR_UNLINKED).status_code == 405


def test_the_repair_page_of_a_passing_check_says_it_would_change_nothing(operator_client):
    page = html(operator_client.get(REPAIR_UNLINKED))

    assert '<strong data-testid="repair-preview">0</strong>' in page
    assert "does not fail now" in page


def test_a_failing_dry_run_is_shown_not_a_500(operator_client):
    def broken_repair(*, dry_run: bool) -> int:
        raise RuntimeError("boom")

    check = IntegrityCheck(
        id="test.broken_repair",
        description="its repair cannot even count",
        sql="SELECT 1, 1, ARRAY['1']",
        repair=broken_repair,
    )
    with registered(check):
        response = operator_client.get("/admin/evoflow/integrityrun/repair/test.broken_repair/")

    assert response.status_code == 200
    assert "The dry run failed" in html(response)
    assert "boom" not in html(response)


def sleeping_repair(*, dry_run: bool) -> int:
    """A dry run far longer than its budget: one long statement."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_sleep(60)")
    return 1


def many_statements_repair(*, dry_run: bool) -> int:
    """A dry run far longer than its budget: many short statements (a big backlog's batches)."""
    with connection.cursor() as cursor:
        for _ in range(6000):
            cursor.execute("SELECT pg_sleep(0.01)")
    return 1


@pytest.mark.parametrize("repair", [sleeping_repair, many_statements_repair])
def test_a_dry_run_past_its_budget_is_cut_short_and_says_so(operator_client, monkeypatch, repair):
    monkeypatch.setattr("evoflow.admin.REPAIR_PREVIEW_SECONDS", 0.3)
    check = IntegrityCheck(
        id="test.slow_repair",
        description="three failing rows, a slow dry run",
        sql="SELECT 3, 10, ARRAY['1', '2', '3']",
        repair=repair,
    )
    with registered(check):
        response = operator_client.get("/admin/evoflow/integrityrun/repair/test.slow_repair/")

    page = html(response)
    assert response.status_code == 200
    assert (
        '<p data-testid="repair-preview">The preview did not finish within 0.3 s;'
        " the check counts 3 failing rows.</p>"
    ) in page
    assert 'data-testid="repair-confirm"' in page
    # The cancelled statement left the connection usable
    assert IntegrityRun.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_the_preview_of_a_repair_with_its_own_durable_transaction_counts():
    # Outside any transaction, as in production: a repair that opens a durable transaction
    # (the conversations' repairs) must not be nested in one by the preview.
    client = Client()
    client.force_login(UserFactory(is_staff=True, is_superuser=True))

    response = client.get(
        "/admin/evoflow/integrityrun/repair/conversations.message_count_mismatch/"
    )

    assert response.status_code == 200
    assert '<strong data-testid="repair-preview">0</strong>' in html(response)


def test_the_journeys_resume_repair_counts_what_it_would_resume(settings):
    settings.JOURNEYS_ENRICH_CONTACTS = False
    journey = JourneyFactory(flow=linear_flow(("w", "wait", {"minutes": 5}), ("z", "exit", {})))
    for _ in range(3):
        session_start(journey_id=journey.pk, contact_id=str(uuid.uuid4()))
    advance_all()
    waiting = JourneySession.objects.filter(status=SessionStatus.WAITING).order_by("id")
    assert waiting.count() == 3
    JourneySession.objects.filter(pk__in=[session.pk for session in waiting[:2]]).update(
        wait_until=timezone.now() - timedelta(minutes=10)
    )

    would = _resume_overdue(dry_run=True)
    assert JourneySession.objects.filter(status=SessionStatus.WAITING).count() == 3

    did = _resume_overdue(dry_run=False)

    assert (would, did) == (2, 2)
    assert _resume_overdue(dry_run=True) == 0


# -- the daily schedule --------------------------------------------------------------------------


def test_ensuring_the_schedules_twice_leaves_one_daily_integrity_schedule():
    schedules_ensure()
    schedules_ensure()

    schedule = Schedule.objects.get(name="integrity.daily")
    assert (schedule.func, schedule.schedule_type) == (
        "evoflow.integrity.tasks.integrity_run_scheduled",
        Schedule.DAILY,
    )


def test_run_integrity_permission_exists_for_the_operators_group():
    codenames = set(
        Group.objects.get(name=OPERATORS_GROUP).permissions.values_list("codename", flat=True)
    )
    assert {"run_integrity", "repair_integrity", "view_integrityrun"} <= codenames
    assert Permission.objects.filter(codename="run_integrity").count() == 1
