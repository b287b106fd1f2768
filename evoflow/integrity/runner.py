"""Running the integrity checks and storing what they found."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import Case, Q, QuerySet, Value, When
from django.db.models.functions import Now
from django.utils import timezone

from evoflow import metrics
from evoflow.db import advisory_xact_lock, set_local_statement_timeout
from evoflow.integrity.alerts import (
    check_is_entering,
    check_previous_status,
    integrity_alert_send,
)
from evoflow.integrity.registry import (
    SAMPLE_LIMIT,
    CheckOutcome,
    IntegrityCheck,
    UnknownCheck,
    all_checks,
    get_check,
)
from evoflow.models import IntegrityCheckResult, IntegrityRun, User
from evoflow.requestid import NO_REQUEST_ID, get_request_id, new_request_id
from evoflow.tasks import enqueue_after_commit

logger = logging.getLogger(__name__)

EXIT_HEALTHY = 0
EXIT_WARNING = 1
EXIT_ERROR = 2
EXIT_RUN_FAILED = 3
FAIL_LEVELS = ("warning", "error")


@dataclass(frozen=True)
class Evaluation:
    check: IntegrityCheck
    status: str
    outcome: CheckOutcome | None
    duration_ms: float
    error: str = ""


def evaluate_check(check: IntegrityCheck) -> Evaluation:
    """Run one check's query under the integrity statement timeout."""
    started = time.perf_counter()
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            set_local_statement_timeout(settings.INTEGRITY_STATEMENT_TIMEOUT_MS)
            cursor.execute(check.render_sql(), {"sample_limit": SAMPLE_LIMIT})
            failing, population, samples = cursor.fetchone()
    except DatabaseError as exc:
        duration = (time.perf_counter() - started) * 1000
        logger.exception("integrity check %s could not run", check.id, extra={"check_id": check.id})
        return Evaluation(
            check, IntegrityCheckResult.Status.FAILED, None, duration, str(exc).strip()
        )
    duration = (time.perf_counter() - started) * 1000
    outcome = CheckOutcome(
        failing_count=int(failing or 0),
        population=int(population or 0),
        sample_ids=[str(sample) for sample in (samples or [])][:SAMPLE_LIMIT],
    )
    return Evaluation(check, check.status_for(outcome), outcome, duration)


def resolve_checks(check_ids: Iterable[str] | None) -> list[IntegrityCheck]:
    ids = list(check_ids or [])
    if not ids:
        return all_checks()
    return [get_check(check_id) for check_id in ids]


def exit_code_for(statuses: Iterable[str], *, fail_level: str = "warning") -> int:
    statuses = set(statuses)
    if IntegrityCheckResult.Status.FAILED in statuses:
        return EXIT_RUN_FAILED
    if IntegrityCheckResult.Status.ERROR in statuses:
        return EXIT_ERROR
    if IntegrityCheckResult.Status.WARNING in statuses and fail_level == "warning":
        return EXIT_WARNING
    return EXIT_HEALTHY


RUN_STATUS_BY_EXIT = {
    EXIT_HEALTHY: IntegrityRun.Status.HEALTHY,
    EXIT_WARNING: IntegrityRun.Status.WARNING,
    EXIT_ERROR: IntegrityRun.Status.ERROR,
    EXIT_RUN_FAILED: IntegrityRun.Status.FAILED,
}


def integrity_run(
    *,
    check_ids: Iterable[str] | None = None,
    fix: bool = False,
    dry_run: bool = False,
    fail_level: str = "warning",
    trigger: str = "command",
) -> IntegrityRun:
    """Evaluate checks (and, with `fix`, repair what fails), storing the run and each result.

    Unknown check ids raise UnknownCheck before anything is stored. With `fix`, a failing check
    that has a repair is repaired (or, with `dry_run`, asked what it would change) and then
    evaluated again, so the stored result is the state after the repair.
    """
    if fail_level not in FAIL_LEVELS:
        raise ValueError(f"fail_level must be one of {FAIL_LEVELS}")
    checks = resolve_checks(check_ids)
    run = IntegrityRun.objects.create(
        trigger=trigger,
        requested_checks=[check.id for check in checks] if check_ids else [],
        fix_requested=fix,
        dry_run=dry_run,
        request_id=get_request_id(),
    )
    return _integrity_run_fill(run, checks, fail_level=fail_level)


def _integrity_run_fill(
    run: IntegrityRun, checks: list[IntegrityCheck], *, fail_level: str = "warning"
) -> IntegrityRun:
    """Run `checks` into an existing, running run and store its outcome: the one code path of
    the command, the schedule and the runs requested from the admin.

    The run's heartbeat is renewed after every check. A run failed as lost meanwhile (see
    `integrity_runs_fail_lost`) stays failed: the runner stops at its next beat and never
    overwrites that status.
    """
    statuses = []
    try:
        for check in checks:
            statuses.append(_run_one(run, check, fix=run.fix_requested, dry_run=run.dry_run))
            if not _integrity_run_beat(run):
                return _integrity_run_taken_for_lost(run)
    except Exception as exc:
        logger.exception("integrity run %s failed", run.pk)
        return _integrity_run_finish(
            run, status=IntegrityRun.Status.FAILED, exit_code=EXIT_RUN_FAILED, error=str(exc)
        )
    return _integrity_run_finish(
        run,
        status=RUN_STATUS_BY_EXIT[exit_code_for(statuses)],
        exit_code=exit_code_for(statuses, fail_level=fail_level),
    )


def _integrity_run_beat(run: IntegrityRun) -> bool:
    """Renew the run's heartbeat; False when it is not running any more."""
    return bool(
        IntegrityRun.objects.filter(pk=run.pk, status=IntegrityRun.Status.RUNNING).update(
            heartbeat_at=Now()
        )
    )


def _integrity_run_finish(
    run: IntegrityRun, *, status: str, exit_code: int, error: str = ""
) -> IntegrityRun:
    """Store the run's outcome, only while it is still running (one conditional update)."""
    finished_at = timezone.now()
    stored = IntegrityRun.objects.filter(pk=run.pk, status=IntegrityRun.Status.RUNNING).update(
        status=status, exit_code=exit_code, error=error, finished_at=finished_at
    )
    if not stored:
        return _integrity_run_taken_for_lost(run)
    run.status, run.exit_code, run.error, run.finished_at = status, exit_code, error, finished_at
    return run


def _integrity_run_taken_for_lost(run: IntegrityRun) -> IntegrityRun:
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
INTEGRITY_RUN_TASK = "evoflow.tasks.integrity_run_requested"


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


def integrity_run_execute_queued(*, run_id: int) -> IntegrityRun | None:
    """Execute a queued run (the worker's side of `integrity_run_request`).

    The run is claimed with one conditional update, so a task delivered twice executes it
    once; None when it is not queued any more (done, expired or deleted). A task delivered
    again after its worker died fails the run it finds lost, so the run does not stay running.
    """
    claimed = IntegrityRun.objects.filter(pk=run_id, status=IntegrityRun.Status.QUEUED).update(
        status=IntegrityRun.Status.RUNNING, started_at=timezone.now(), heartbeat_at=Now()
    )
    if not claimed:
        integrity_runs_fail_lost(runs=IntegrityRun.objects.filter(pk=run_id))
        logger.info("integrity run %s is not queued; nothing to do", run_id)
        return None
    run = IntegrityRun.objects.get(pk=run_id)
    try:
        checks = resolve_checks(run.requested_checks)
    except UnknownCheck as exc:
        return _integrity_run_finish(
            run,
            status=IntegrityRun.Status.FAILED,
            exit_code=EXIT_RUN_FAILED,
            error=f"unknown check {exc.args[0]!r}",
        )
    return _integrity_run_fill(run, checks)


def integrity_run_latest_finished() -> IntegrityRun | None:
    """The newest finished run of every check, dry runs left out: a run of some checks (a
    repair, `integrity --check`) says nothing about the others, so it never answers for them."""
    return (
        IntegrityRun.objects.filter(finished_at__isnull=False, requested_checks=[], dry_run=False)
        .order_by("-finished_at", "-id")
        .first()
    )


# The repair page previews the dry run while the operator waits: it gets this long.
REPAIR_PREVIEW_SECONDS = 5


class PreviewOutOfTime(Exception):
    """The repair's dry run did not finish within its time budget."""


def integrity_repair_preview(
    *, check: IntegrityCheck, seconds: float = REPAIR_PREVIEW_SECONDS
) -> int:
    """What the check's repair would change (its dry run), or PreviewOutOfTime after `seconds`.

    A dry run may be many statements (a backfill's batches) and a repair may open its own
    durable transaction, so no statement timeout bounds it: past the deadline the running
    statement is cancelled and no further one is sent.
    """
    if check.repair is None:
        raise ValueError(f"the integrity check {check.id!r} has no repair")
    deadline = time.monotonic() + seconds
    is_past_deadline = threading.Event()
    connection.ensure_connection()
    database_connection = connection.connection  # the timer thread has its own `connection`

    def cancel() -> None:
        is_past_deadline.set()
        database_connection.cancel_safe()

    def refuse_past_deadline(
        execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]
    ) -> Any:
        if is_past_deadline.is_set() or time.monotonic() >= deadline:
            raise PreviewOutOfTime(check.id)
        return execute(sql, params, many, context)

    timer = threading.Timer(seconds, cancel)
    # Inside a caller's transaction a savepoint keeps a cancelled statement from aborting it.
    savepoint = transaction.atomic() if connection.in_atomic_block else contextlib.nullcontext()
    try:
        with savepoint, connection.execute_wrapper(refuse_past_deadline):
            timer.start()
            try:
                return check.repair(dry_run=True)
            finally:
                # Before the savepoint's own statement, which no cancel may hit.
                timer.cancel()
                timer.join()
    except DatabaseError:
        if is_past_deadline.is_set():
            raise PreviewOutOfTime(check.id) from None
        raise


def _run_one(run: IntegrityRun, check: IntegrityCheck, *, fix: bool, dry_run: bool) -> str:
    evaluation = evaluate_check(check)
    repaired: int | None = None
    if fix and check.repair is not None and evaluation.status in ("warning", "error"):
        repaired = check.repair(dry_run=dry_run)
        logger.info(
            "integrity repair %s %s %d rows",
            check.id,
            "would change" if dry_run else "changed",
            repaired,
            extra={"check_id": check.id, "dry_run": dry_run},
        )
        if not dry_run:
            evaluation = evaluate_check(check)
    outcome = evaluation.outcome or CheckOutcome(0, 0, [])
    if evaluation.outcome is not None:
        metrics.INTEGRITY_CHECK_FAILING.labels(check.id).set(outcome.failing_count)
    metrics.INTEGRITY_CHECK_STATUS.labels(check.id).set(
        metrics.INTEGRITY_STATUS_VALUES[evaluation.status]
    )
    with transaction.atomic():
        # Per check, reading the previous result and storing this one is serialised, so of two
        # runs at the same time (cron and the admin) only the first sees the transition: the
        # second reads the first's committed result as its previous one.
        advisory_xact_lock(f"integrity-check:{check.id}")
        if not (
            IntegrityRun.objects.select_for_update()
            .filter(pk=run.pk, status=IntegrityRun.Status.RUNNING)
            .exists()
        ):
            # Failed as lost meanwhile: its results and alerts are no longer this run's to add.
            return evaluation.status
        previous_status = check_previous_status(check_id=check.id)
        result = IntegrityCheckResult.objects.create(
            run=run,
            check_id=check.id,
            status=evaluation.status,
            failing_count=outcome.failing_count,
            population=outcome.population,
            ratio=outcome.ratio,
            sample_ids=outcome.sample_ids,
            duration_ms=round(evaluation.duration_ms, 3),
            error=evaluation.error,
            repaired_count=repaired,
        )
        if check_is_entering(status=evaluation.status, previous_status=previous_status):
            # After the commit, so a slow or dead receiver never holds the lock.
            transaction.on_commit(
                partial(
                    integrity_alert_send,
                    run=run,
                    check=check,
                    result=result,
                    previous_status=previous_status,
                )
            )
    if evaluation.status in ("warning", "error"):
        logger.log(
            logging.ERROR if evaluation.status == "error" else logging.WARNING,
            "integrity check %s is %s: %d of %d (sample %s)",
            check.id,
            evaluation.status,
            outcome.failing_count,
            outcome.population,
            outcome.sample_ids[:5],
            extra={
                "check_id": check.id,
                "status": evaluation.status,
                "previous_status": previous_status,
                "failing_count": outcome.failing_count,
                "sample_ids": outcome.sample_ids,
            },
        )
    elif evaluation.status == "ok" and previous_status != "ok":
        logger.info(
            "integrity check %s recovered from %s",
            check.id,
            previous_status,
            extra={"check_id": check.id, "status": "ok", "previous_status": previous_status},
        )
    return evaluation.status


def run_document(run: IntegrityRun) -> dict:
    """The JSON form of a stored run, as `integrity --json` and the API print it."""
    results = list(run.results.all())
    return {
        "run_id": run.pk,
        "status": run.status,
        "exit_code": run.exit_code,
        "trigger": run.trigger,
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "fix": run.fix_requested,
        "dry_run": run.dry_run,
        "error": run.error,
        "checks": [_result_document(result) for result in results],
    }


def _result_document(result: IntegrityCheckResult) -> dict:
    try:
        check: IntegrityCheck | None = get_check(result.check_id)
    except UnknownCheck:
        check = None
    return {
        "id": result.check_id,
        "description": check.description if check else "",
        "status": result.status,
        "failing_count": result.failing_count,
        "population": result.population,
        "ratio": result.ratio,
        "sample_ids": result.sample_ids,
        "duration_ms": result.duration_ms,
        "thresholds": check.thresholds if check else {},
        "error": result.error,
        "repaired_count": result.repaired_count,
    }
