"""`manage.py integrity`: exit codes, the JSON document, stored runs, repairs."""

import json
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone
from django_q.models import Task

from evoflow.integrity import IntegrityCheck, registered
from evoflow.models import IntegrityCheckResult, IntegrityRun, User
from tests.core.factories import UserFactory
from tests.helpers import free_port, run_python

TASKS_CHECK = "tasks.failed_recently"


def make_tasks(*, succeeded: int, failed: int, age: timedelta = timedelta(hours=1)) -> None:
    stopped = timezone.now() - age
    Task.objects.bulk_create(
        Task(
            id=f"{'ok' if index < succeeded else 'bad'}{index:029d}",
            name=f"task-{index}",
            func="tests.core.worker_tasks.write_marker",
            started=stopped - timedelta(seconds=1),
            stopped=stopped,
            success=index < succeeded,
        )
        for index in range(succeeded + failed)
    )


def run_integrity(*args: str) -> tuple[int, str]:
    """call_command, returning (exit code, stdout)."""
    out = StringIO()
    try:
        call_command("integrity", *args, stdout=out, stderr=StringIO())
    except SystemExit as exit_:
        return int(exit_.code or 0), out.getvalue()
    return 0, out.getvalue()


@pytest.mark.django_db
def test_healthy_run_exits_0_and_is_stored():
    make_tasks(succeeded=5, failed=0)

    code, output = run_integrity("--check", TASKS_CHECK)

    assert code == 0
    run = IntegrityRun.objects.get()
    assert (run.status, run.exit_code) == ("healthy", 0)
    result = run.results.get()
    assert (result.check_id, result.status, result.failing_count, result.population) == (
        TASKS_CHECK,
        "ok",
        0,
        5,
    )
    assert "run " in output


@pytest.mark.django_db
def test_any_failed_task_is_a_warning_exit_1():
    make_tasks(succeeded=19, failed=1)

    code, _ = run_integrity("--check", TASKS_CHECK)

    assert code == 1
    result = IntegrityCheckResult.objects.get()
    assert (result.status, result.failing_count, result.population) == ("warning", 1, 20)
    assert result.ratio == pytest.approx(0.05)
    assert result.sample_ids == [f"bad{19:029d}"]


@pytest.mark.django_db
def test_each_check_exports_its_failing_count_as_a_metric(client):
    make_tasks(succeeded=3, failed=2)

    run_integrity("--check", TASKS_CHECK)

    metrics_text = client.get("/metrics").content.decode()
    assert 'evoflow_integrity_failing{check_id="tasks.failed_recently"} 2.0' in metrics_text


@pytest.mark.django_db
def test_old_failures_do_not_count():
    make_tasks(succeeded=1, failed=3, age=timedelta(hours=30))

    code, _ = run_integrity("--check", TASKS_CHECK)

    assert code == 0


@pytest.mark.django_db
def test_more_than_ten_percent_failing_is_an_error_exit_2():
    make_tasks(succeeded=8, failed=2)

    code, _ = run_integrity("--check", TASKS_CHECK)

    assert code == 2
    assert IntegrityRun.objects.get().status == "error"


@pytest.mark.django_db
def test_fail_level_error_ignores_warnings():
    make_tasks(succeeded=19, failed=1)

    code, _ = run_integrity("--check", TASKS_CHECK, "--fail-level", "error")

    assert code == 0
    run = IntegrityRun.objects.get()
    assert run.status == "warning"  # the stored verdict does not depend on the exit policy


@pytest.mark.django_db
def test_a_check_whose_query_fails_makes_the_run_fail_exit_3(settings):
    settings.INTEGRITY_STATEMENT_TIMEOUT_MS = 50
    slow = IntegrityCheck(
        id="test.too_slow",
        description="sleeps past the statement timeout",
        sql="SELECT 0, 0, ARRAY[]::text[] FROM pg_sleep(1)",
    )

    with registered(slow):
        code, output = run_integrity("--check", "test.too_slow")

    assert code == 3
    result = IntegrityCheckResult.objects.get(check_id="test.too_slow")
    assert result.status == "failed"
    assert "statement timeout" in result.error
    assert IntegrityRun.objects.get().status == "failed"


@pytest.mark.django_db
def test_an_unknown_check_exits_3_and_stores_nothing():
    code, _ = run_integrity("--check", "no.such.check", "--json")

    assert code == 3
    assert IntegrityRun.objects.count() == 0


@pytest.mark.django_db
def test_json_document_describes_every_check():
    make_tasks(succeeded=3, failed=1)

    code, output = run_integrity("--json")

    document = json.loads(output)
    assert code == document["exit_code"]
    assert document["run_id"] == IntegrityRun.objects.get().pk
    by_id = {check["id"]: check for check in document["checks"]}
    assert set(by_id) == {check.check_id for check in IntegrityCheckResult.objects.all()}
    tasks = by_id[TASKS_CHECK]
    assert tasks["status"] == "error"
    assert (tasks["failing_count"], tasks["population"]) == (1, 4)
    assert tasks["ratio"] == pytest.approx(0.25)
    assert tasks["thresholds"] == {
        "warning_count": 1,
        "error_count": None,
        "warning_ratio": None,
        "error_ratio": 0.1,
    }
    assert tasks["description"]
    assert tasks["duration_ms"] >= 0


def _blank_named_users_check() -> IntegrityCheck:
    def repair(*, dry_run: bool) -> int:
        broken = User.objects.filter(first_name="broken")
        return broken.count() if dry_run else broken.update(first_name="")

    return IntegrityCheck(
        id="test.broken_users",
        description="users named 'broken'",
        sql="""
            SELECT count(*) FILTER (WHERE first_name = 'broken'), count(*),
                   coalesce((array_agg(id::text ORDER BY id)
                       FILTER (WHERE first_name = 'broken'))[1:%(sample_limit)s], '{}')
            FROM evoflow_user
        """,
        error_count=1,
        repair=repair,
    )


@pytest.mark.django_db
def test_fix_dry_run_reports_and_changes_nothing_then_fix_repairs():
    broken = UserFactory.create_batch(3, first_name="broken")
    UserFactory(first_name="fine")

    with registered(_blank_named_users_check()):
        dry_code, dry_output = run_integrity("--check", "test.broken_users", "--fix", "--dry-run")
        assert dry_code == 2
        assert "would repair 3" in dry_output
        assert User.objects.filter(first_name="broken").count() == 3

        fix_code, fix_output = run_integrity("--check", "test.broken_users", "--fix")

    assert fix_code == 0
    assert "repaired 3" in fix_output
    assert User.objects.filter(first_name="broken").count() == 0
    dry_result, fixed_result = IntegrityCheckResult.objects.order_by("run_id")
    assert (dry_result.status, dry_result.failing_count, dry_result.repaired_count) == (
        "error",
        3,
        3,
    )
    assert (fixed_result.status, fixed_result.failing_count, fixed_result.repaired_count) == (
        "ok",
        0,
        3,
    )
    assert dry_result.sample_ids == [str(user.pk) for user in broken]


@pytest.mark.django_db
def test_every_invocation_stores_a_run():
    for _ in range(3):
        run_integrity("--check", TASKS_CHECK)

    assert IntegrityRun.objects.count() == 3
    assert IntegrityCheckResult.objects.count() == 3


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_real_command_line_exit_code_and_json(subprocess_env):
    make_tasks(succeeded=9, failed=1)

    result = run_python(
        "manage.py", "integrity", "--check", TASKS_CHECK, "--json", env=subprocess_env
    )

    assert result.returncode == 1, result.stderr
    document = json.loads(result.stdout)
    assert document["status"] == "warning"
    assert document["checks"][0]["failing_count"] == 1


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_run_that_cannot_reach_the_database_exits_3(subprocess_env):
    env = {**subprocess_env, "DATABASE_URL": f"postgres://postgres@127.0.0.1:{free_port()}/x"}

    result = run_python("manage.py", "integrity", "--json", env=env)

    assert result.returncode == 3
    assert json.loads(result.stdout)["status"] == "failed"
