"""The after-commit enqueue helper, proven with a real django-q2 worker, and schedules."""

import signal
import subprocess
import sys
import threading
from datetime import timedelta
from io import StringIO

import psycopg
import pytest
from django.core.management import call_command
from django.db import connection, transaction
from django_q.models import OrmQ, Schedule, Task
from django_q.signals import post_execute_in_worker, pre_execute

from evoflow.db import psycopg_conninfo
from evoflow.integrity.tasks import integrity_run_scheduled
from evoflow.models import IntegrityRun
from evoflow.requestid import NO_REQUEST_ID, bound_request_id, get_request_id
from evoflow.tasks import enqueue_after_commit, schedule_ensure
from tests.core.worker_tasks import report_request_id, write_marker
from tests.helpers import PROJECT_ROOT, wait_for


class Boom(Exception):
    pass


def queued_rows_seen_by_another_connection() -> int:
    with psycopg.connect(psycopg_conninfo()) as other:
        return other.execute("SELECT count(*) FROM django_q_ormq").fetchone()[0]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_task_never_runs_and_a_committed_one_runs_on_a_worker(
    tmp_path, subprocess_env
):
    rolled_back = tmp_path / "rolled-back"
    committed = tmp_path / "committed"

    # Given a task enqueued in a transaction that rolls back
    def enqueue_then_fail() -> None:
        with transaction.atomic():
            enqueue_after_commit(write_marker, str(rolled_back), "never")
            raise Boom

    with pytest.raises(Boom):
        enqueue_then_fail()
    assert OrmQ.objects.count() == 0

    # And one enqueued in a transaction that commits, invisible to others until then
    # (enqueued while serving a request, whose id the task carries to the worker)
    with bound_request_id("req-task-1"), transaction.atomic():
        enqueue_after_commit(write_marker, str(committed), "done")
        enqueue_after_commit(report_request_id)
        assert queued_rows_seen_by_another_connection() == 0
    assert queued_rows_seen_by_another_connection() == 2

    # When a real worker process runs
    worker = subprocess.Popen(
        [sys.executable, "manage.py", "qcluster"],
        cwd=PROJECT_ROOT,
        env=subprocess_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        ran = wait_for(committed.exists, timeout=60)
        finished = wait_for(lambda: Task.objects.filter(success=True).count() == 2, timeout=30)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            _, stderr = worker.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            _, stderr = worker.communicate()

    # Then the committed task ran exactly once and the rolled-back one never did
    assert ran, stderr.decode(errors="replace")[-2000:]
    assert finished
    assert committed.read_text() == "done"
    assert not rolled_back.exists()
    assert sorted(Task.objects.values_list("func", "success", "result")) == [
        ("tests.core.worker_tasks.report_request_id", True, "req-task-1"),
        ("tests.core.worker_tasks.write_marker", True, "done"),
    ]
    assert OrmQ.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_outside_a_transaction_the_task_is_queued_at_once(tmp_path):
    enqueue_after_commit(write_marker, str(tmp_path / "x"), "now")

    assert OrmQ.objects.count() == 1


@pytest.mark.django_db
def test_with_the_redis_broker_the_push_waits_for_the_commit(
    settings, django_capture_on_commit_callbacks, tmp_path
):
    # Given the Redis broker (no ORM queue shares the transaction)
    settings.Q_CLUSTER = {key: value for key, value in settings.Q_CLUSTER.items() if key != "orm"}
    settings.Q_CLUSTER["redis"] = "redis://127.0.0.1:1/0"

    # When a task is enqueued inside a transaction
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        enqueue_after_commit(write_marker, str(tmp_path / "x"), "later")

    # Then nothing was pushed yet: one push waits for the commit
    assert len(callbacks) == 1
    assert OrmQ.objects.count() == 0


@pytest.mark.django_db
def test_schedule_ensure_is_idempotent():
    first = schedule_ensure(
        name="integrity.daily", func="evoflow.tasks.noop", schedule_type=Schedule.DAILY
    )
    second = schedule_ensure(
        name="integrity.daily", func="evoflow.tasks.other", schedule_type=Schedule.HOURLY
    )

    assert first.pk == second.pk
    assert list(
        Schedule.objects.filter(name="integrity.daily").values_list("name", "func", "schedule_type")
    ) == [("integrity.daily", "evoflow.tasks.other", Schedule.HOURLY)]


@pytest.mark.django_db(transaction=True)
def test_concurrent_schedule_ensure_creates_one_schedule():
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def ensure() -> None:
        try:
            barrier.wait()
            schedule_ensure(
                name="sync.pages", func="x.y", schedule_type=Schedule.MINUTES, minutes=5
            )
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=ensure) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert Schedule.objects.filter(name="sync.pages").count() == 1


@pytest.mark.django_db
def test_migrate_creates_the_daily_integrity_schedule_once_and_keeps_its_next_run():
    # Given the schedule migrate created
    schedule = Schedule.objects.get(name="integrity.daily")
    schedule.next_run = schedule.next_run + timedelta(hours=5)
    schedule.save()

    # When the schedules are ensured again (a second deploy)
    call_command("ensure_schedules", stdout=StringIO())

    # Then there is still one, with the next run it had
    again = Schedule.objects.get(name="integrity.daily")
    assert again.pk == schedule.pk
    assert again.next_run == schedule.next_run
    assert again.func == "evoflow.integrity.tasks.integrity_run_scheduled"
    assert again.schedule_type == Schedule.DAILY


@pytest.mark.django_db
def test_the_scheduled_integrity_task_stores_a_run():
    run_id = integrity_run_scheduled()

    run = IntegrityRun.objects.get(pk=run_id)
    assert run.trigger == "schedule"
    assert run.status == "healthy"


def test_a_worker_forgets_a_tasks_request_id_once_the_task_is_done():
    # Given a worker process that runs a task carrying a request id
    pre_execute.send(sender="django_q", func=report_request_id, task={"request_id": "req-done"})
    assert get_request_id() == "req-done"

    # When the task is done
    post_execute_in_worker.send(sender="django_q", func=report_request_id, task={})

    # Then nothing logged before the next task (django-q2's own "processing" line) carries it
    assert get_request_id() == NO_REQUEST_ID
