"""Running the integrity checks and storing what they found.

This module evaluates checks and fills a run with their results (`integrity_run` for the
command and the schedule, `integrity_run_execute_queued` for a run requested from the admin).
The run's lifecycle around that (queueing, heartbeat, lease, finishing, failing lost runs) is
in `evoflow.integrity.lifecycle`, and repairs (the preview and applying one) are in
`evoflow.integrity.repairs`; their public names are re-exported here for existing callers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models.functions import Now
from django.utils import timezone

from evoflow.db import advisory_xact_lock, set_local_statement_timeout
from evoflow.integrity.alerts import (
    check_is_entering,
    check_previous_status,
    integrity_alert_send,
)
from evoflow.integrity.lifecycle import (
    EXIT_ERROR,
    EXIT_HEALTHY,
    EXIT_RUN_FAILED,
    EXIT_WARNING,
    FAIL_LEVELS,
    INTEGRITY_RUN_TASK,
    PROCESS_RUN_LEASE,
    WORKER_TRIGGERS,
    integrity_run_beat,
    integrity_run_finish,
    integrity_run_latest_finished,
    integrity_run_lease,
    integrity_run_queued_expiry,
    integrity_run_request,
    integrity_run_taken_for_lost,
    integrity_runs_fail_lost,
    resolve_checks,
)
from evoflow.integrity.registry import (
    SAMPLE_LIMIT,
    CheckOutcome,
    IntegrityCheck,
    UnknownCheck,
    get_check,
)
from evoflow.integrity.repairs import (
    REPAIR_PREVIEW_SECONDS,
    PreviewOutOfTime,
    integrity_repair_apply,
    integrity_repair_preview,
)
from evoflow.models import IntegrityCheckResult, IntegrityRun
from evoflow.requestid import get_request_id

__all__ = [
    "EXIT_ERROR",
    "EXIT_HEALTHY",
    "EXIT_RUN_FAILED",
    "EXIT_WARNING",
    "FAIL_LEVELS",
    "INTEGRITY_RUN_TASK",
    "PROCESS_RUN_LEASE",
    "REPAIR_PREVIEW_SECONDS",
    "RUN_STATUS_BY_EXIT",
    "WORKER_TRIGGERS",
    "Evaluation",
    "PreviewOutOfTime",
    "evaluate_check",
    "exit_code_for",
    "integrity_repair_preview",
    "integrity_run",
    "integrity_run_execute_queued",
    "integrity_run_latest_finished",
    "integrity_run_lease",
    "integrity_run_queued_expiry",
    "integrity_run_request",
    "integrity_runs_fail_lost",
    "resolve_checks",
    "run_document",
]

logger = logging.getLogger(__name__)


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
            row = cursor.fetchone()
        failing, population, samples = row[:3]
        severe = row[3] if len(row) > 3 else 0
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
        severe_count=int(severe or 0),
    )
    return Evaluation(check, check.status_for(outcome), outcome, duration)


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
            if not integrity_run_beat(run):
                return integrity_run_taken_for_lost(run)
    except Exception as exc:
        logger.exception("integrity run %s failed", run.pk)
        return integrity_run_finish(
            run, status=IntegrityRun.Status.FAILED, exit_code=EXIT_RUN_FAILED, error=str(exc)
        )
    return integrity_run_finish(
        run,
        status=RUN_STATUS_BY_EXIT[exit_code_for(statuses)],
        exit_code=exit_code_for(statuses, fail_level=fail_level),
    )


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
        return integrity_run_finish(
            run,
            status=IntegrityRun.Status.FAILED,
            exit_code=EXIT_RUN_FAILED,
            error=f"unknown check {exc.args[0]!r}",
        )
    return _integrity_run_fill(run, checks)


def _run_one(run: IntegrityRun, check: IntegrityCheck, *, fix: bool, dry_run: bool) -> str:
    evaluation = evaluate_check(check)
    repaired: int | None = None
    if fix and check.repair is not None and evaluation.status in ("warning", "error"):
        repaired = integrity_repair_apply(check=check, dry_run=dry_run)
        if not dry_run:
            evaluation = evaluate_check(check)
    # (The status and failing gauges are read from the stored results at scrape time, so every
    # web process shows what this process stored: evoflow/metrics.py.)
    outcome = evaluation.outcome or CheckOutcome(0, 0, [])
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
