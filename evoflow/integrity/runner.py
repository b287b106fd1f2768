"""Running the integrity checks and storing what they found."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial

from django.conf import settings
from django.db import DatabaseError, connection, transaction
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
    the command, the schedule and the runs requested from the admin."""
    try:
        statuses = [
            _run_one(run, check, fix=run.fix_requested, dry_run=run.dry_run) for check in checks
        ]
    except Exception as exc:
        logger.exception("integrity run %s failed", run.pk)
        run.status = IntegrityRun.Status.FAILED
        run.exit_code = EXIT_RUN_FAILED
        run.error = str(exc)
        run.finished_at = timezone.now()
        run.save(update_fields=["status", "exit_code", "error", "finished_at"])
        return run
    run.exit_code = exit_code_for(statuses, fail_level=fail_level)
    run.status = RUN_STATUS_BY_EXIT[exit_code_for(statuses)]
    run.finished_at = timezone.now()
    run.save(update_fields=["status", "exit_code", "finished_at"])
    return run


# Two clicks on "run integrity now" (or "repair") within this many minutes get the same run; a
# run still queued after it is taken for lost (no worker) and failed, so a new one can start.
ADMIN_RUN_REUSE_MINUTES = 5
INTEGRITY_RUN_TASK = "evoflow.tasks.integrity_run_requested"


def integrity_run_request(
    *,
    check_ids: Iterable[str] | None = None,
    fix: bool = False,
    trigger: str = "admin",
    requested_by: User | None = None,
) -> tuple[IntegrityRun, bool]:
    """A queued run and the task that will execute it, or the same request's live run from the
    last few minutes: `(run, created)`. Unknown check ids raise UnknownCheck."""
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
        cutoff = timezone.now() - timedelta(minutes=ADMIN_RUN_REUSE_MINUTES)
        same_request.filter(status=IntegrityRun.Status.QUEUED, started_at__lt=cutoff).update(
            status=IntegrityRun.Status.FAILED,
            exit_code=EXIT_RUN_FAILED,
            error=f"no worker started the run within {ADMIN_RUN_REUSE_MINUTES} minutes",
            finished_at=timezone.now(),
        )
        live = (
            same_request.filter(
                status__in=[IntegrityRun.Status.QUEUED, IntegrityRun.Status.RUNNING],
                started_at__gte=cutoff,
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
    once; None when it is not queued any more (done, expired or deleted).
    """
    claimed = IntegrityRun.objects.filter(pk=run_id, status=IntegrityRun.Status.QUEUED).update(
        status=IntegrityRun.Status.RUNNING, started_at=timezone.now()
    )
    if not claimed:
        logger.info("integrity run %s is not queued; nothing to do", run_id)
        return None
    run = IntegrityRun.objects.get(pk=run_id)
    try:
        checks = resolve_checks(run.requested_checks)
    except UnknownCheck as exc:
        run.status = IntegrityRun.Status.FAILED
        run.exit_code = EXIT_RUN_FAILED
        run.error = f"unknown check {exc.args[0]!r}"
        run.finished_at = timezone.now()
        run.save(update_fields=["status", "exit_code", "error", "finished_at"])
        return run
    return _integrity_run_fill(run, checks)


def integrity_run_latest_finished() -> IntegrityRun | None:
    return (
        IntegrityRun.objects.filter(finished_at__isnull=False)
        .order_by("-finished_at", "-id")
        .first()
    )


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
