"""The life of a stored integrity run: requested (queued), running with a heartbeat, finished,
or failed as lost when nobody executes it any more.

`integrity_run_request` queues a run and the task that executes it; the runner
(`evoflow.integrity.runner`) beats after every check and stores the outcome with
`integrity_run_finish`, which never overwrites a run failed as lost meanwhile.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Case, Q, QuerySet, Value, When
from django.db.models.functions import Now
from django.utils import timezone

from evoflow.db import advisory_xact_lock
from evoflow.integrity.registry import IntegrityCheck, all_checks, get_check
from evoflow.models import IntegrityRun, User
from evoflow.requestid import NO_REQUEST_ID, get_request_id, new_request_id
from evoflow.tasks import enqueue_after_commit

# The runner's logger: these lines were the runner's before it was split, and log filters
# and alerts may select them by that name.
logger = logging.getLogger("evoflow.integrity.runner")

EXIT_HEALTHY = 0
EXIT_WARNING = 1
EXIT_ERROR = 2
EXIT_RUN_FAILED = 3
FAIL_LEVELS = ("warning", "error")


def resolve_checks(check_ids: Iterable[str] | None) -> list[IntegrityCheck]:
    ids = list(check_ids or [])
    if not ids:
        return all_checks()
    return [get_check(check_id) for check_id in ids]


def integrity_run_beat(run: IntegrityRun) -> bool:
    """Renew the run's heartbeat; False when it is not running any more."""
    return bool(
        IntegrityRun.objects.filter(pk=run.pk, status=IntegrityRun.Status.RUNNING).update(
            heartbeat_at=Now()
        )
    )


def integrity_run_finish(
    run: IntegrityRun, *, status: str, exit_code: int, error: str = ""
) -> IntegrityRun:
    """Store the run's outcome, only while it is still running (one conditional update)."""
    finished_at = timezone.now()
    stored = IntegrityRun.objects.filter(pk=run.pk, status=IntegrityRun.Status.RUNNING).update(
        status=status, exit_code=exit_code, error=error, finished_at=finished_at
    )
    if not stored:
        return integrity_run_taken_for_lost(run)
    run.status, run.exit_code, run.error, run.finished_at = status, exit_code, error, finished_at
    return run


def integrity_run_taken_for_lost(run: IntegrityRun) -> IntegrityRun:
    logger.warning(
        "integrity run %s was failed as lost while it ran; its outcome is not stored", run.pk
    )
    run.refresh_from_db()
    return run


# Runs executed by a worker task (requested from the admin, or the daily schedule): the worker
# kills a task after Q_TIMEOUT, so such a run silent for the lease has no worker left. A run of
# `manage.py integrity` (or the demo seeder) runs in its own process with no such bound: a long
# repair may be silent for as long as it takes, so only a run silent for PROCESS_RUN_LEASE (a
# killed process) is taken for lost.
WORKER_TRIGGERS = ("admin", "admin-repair", "schedule")
PROCESS_RUN_LEASE = timedelta(hours=6)
# The task that executes a requested run (evoflow/integrity/tasks.py).
INTEGRITY_RUN_TASK = "evoflow.integrity.tasks.integrity_run_requested"


def integrity_run_lease() -> timedelta:
    """How long a running run may go without a heartbeat before it is taken for lost.

    The runner beats after every check, so the longest silence of a live run is one check: two
    evaluations under INTEGRITY_STATEMENT_TIMEOUT_MS and a repair between them. A repair has no
    statement bound of its own, but the worker kills any task after Q_TIMEOUT, so a run silent
    for twice the longer of the two has no worker left.
    """
    check_seconds = 3 * settings.INTEGRITY_STATEMENT_TIMEOUT_MS / 1000
    return timedelta(seconds=2 * max(settings.Q_CLUSTER["timeout"], check_seconds))


def integrity_run_queued_expiry() -> timedelta:
    """How long a requested run may wait in the queue before it is taken for lost (no worker).

    At least 5 minutes, and twice the task timeout: a queue behind busy workers (a sync runs up
    to its time budget) must not expire a run a worker is about to pick up.
    """
    return max(timedelta(minutes=5), timedelta(seconds=2 * settings.Q_CLUSTER["timeout"]))


def integrity_runs_fail_lost(*, runs: QuerySet[IntegrityRun] | None = None) -> int:
    """Fail the live runs (of `runs`, or all) that nobody is executing any more: queued for
    longer than `integrity_run_queued_expiry()`, or running without a heartbeat (or, before the
    first beat, since their start) for their lease (`integrity_run_lease()` for worker runs,
    PROCESS_RUN_LEASE for the others; see WORKER_TRIGGERS). One statement, so a run that beats
    meanwhile is re-checked under its row lock and kept. Returns how many it failed."""
    lease = integrity_run_lease()
    expiry = integrity_run_queued_expiry()

    def silent_since(moment: Any) -> Q:
        return Q(heartbeat_at__lt=moment) | Q(heartbeat_at__isnull=True, started_at__lt=moment)

    lost = Q(status=IntegrityRun.Status.QUEUED, started_at__lt=Now() - expiry) | Q(
        Q(silent_since(Now() - lease), trigger__in=WORKER_TRIGGERS)
        | Q(silent_since(Now() - PROCESS_RUN_LEASE), ~Q(trigger__in=WORKER_TRIGGERS)),
        status=IntegrityRun.Status.RUNNING,
    )
    failed = (
        (runs if runs is not None else IntegrityRun.objects.all())
        .filter(lost)
        .update(
            status=IntegrityRun.Status.FAILED,
            exit_code=EXIT_RUN_FAILED,
            finished_at=Now(),
            error=Case(
                When(
                    status=IntegrityRun.Status.QUEUED,
                    then=Value(f"no worker started the run within {expiry.seconds // 60} minutes"),
                ),
                default=Value(
                    "worker lost: no heartbeat for its lease (the worker or process died, or"
                    " the task timeout stopped it)"
                ),
            ),
        )
    )
    if failed:
        logger.warning("failed %d integrity runs nobody was executing any more", failed)
    return failed


def integrity_run_request(
    *,
    check_ids: Iterable[str] | None = None,
    fix: bool = False,
    trigger: str = "admin",
    requested_by: User | None = None,
) -> tuple[IntegrityRun, bool]:
    """A queued run and the task that will execute it, or the same request's live run:
    `(run, created)`. A live run nobody executes any more is failed first (see
    `integrity_runs_fail_lost`). Unknown check ids raise UnknownCheck."""
    checks = resolve_checks(check_ids)
    requested_checks = [check.id for check in checks] if check_ids else []
    request_id = get_request_id()
    if request_id == NO_REQUEST_ID:
        request_id = new_request_id()
    with transaction.atomic(durable=True):
        # Requests of the same kind wait for each other here, so the second of two concurrent
        # clicks sees the run the first one committed.
        advisory_xact_lock(f"integrity-run:{trigger}:{fix}:{','.join(requested_checks)}")
        same_request = IntegrityRun.objects.filter(
            trigger=trigger, fix_requested=fix, requested_checks=requested_checks
        )
        integrity_runs_fail_lost(runs=same_request)
        live = (
            same_request.filter(
                status__in=[IntegrityRun.Status.QUEUED, IntegrityRun.Status.RUNNING]
            )
            .order_by("-started_at", "-id")
            .first()
        )
        if live is not None:
            return live, False
        run = IntegrityRun.objects.create(
            status=IntegrityRun.Status.QUEUED,
            trigger=trigger,
            requested_checks=requested_checks,
            fix_requested=fix,
            request_id=request_id,
            requested_by=requested_by,
        )
        enqueue_after_commit(INTEGRITY_RUN_TASK, run.pk, task_name=f"integrity-run-{run.pk}")
    return run, True


def integrity_run_latest_finished() -> IntegrityRun | None:
    """The newest finished run of every check, dry runs left out: a run of some checks (a
    repair, `integrity --check`) says nothing about the others, so it never answers for them."""
    return (
        IntegrityRun.objects.filter(finished_at__isnull=False, requested_checks=[], dry_run=False)
        .order_by("-finished_at", "-id")
        .first()
    )
