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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

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
    TRACK_LIMIT,
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
    "Plan",
    "PreviewOutOfTime",
    "evaluate_check",
    "evaluation_plan",
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
    # Every failing id of a check that evaluates incrementally (up to TRACK_LIMIT).
    tracked_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Plan:
    """How a run evaluates one check: a full sweep (`since` None) or the rows changed since
    `since` plus `recheck`, the ids that failed last time."""

    since: datetime | None = None
    recheck: tuple[str, ...] = ()
    # When the full sweep this evaluation builds on started (None: the check never sweeps).
    swept_at: datetime | None = None


FINISHED_RUN_STATUSES = (
    IntegrityRun.Status.HEALTHY,
    IntegrityRun.Status.WARNING,
    IntegrityRun.Status.ERROR,
)
MEASURED_STATUSES = (
    IntegrityCheckResult.Status.OK,
    IntegrityCheckResult.Status.WARNING,
    IntegrityCheckResult.Status.ERROR,
)


def evaluation_plan(*, check: IntegrityCheck, run: IntegrityRun, full: bool = False) -> Plan:
    """A full sweep unless the check can read only what changed and may: its latest result in
    a finished run builds on a full sweep younger than INTEGRITY_FULL_SWEEP_HOURS and tracked
    every failing id. The window opens INTEGRITY_CHANGE_OVERLAP_SECONDS before that run started,
    so a transaction still open then (its rows stamped earlier, committed later) is read too."""
    if not check.is_incremental:
        return Plan()
    sweep = Plan(swept_at=run.started_at)
    if full:
        return sweep
    previous = (
        IntegrityCheckResult.objects.filter(
            check_id=check.id, status__in=MEASURED_STATUSES, run__status__in=FINISHED_RUN_STATUSES
        )
        .exclude(run=run)
        .select_related("run")
        .order_by("-created_at", "-id")
        .first()
    )
    if previous is None or previous.swept_at is None or previous.run.started_at is None:
        return sweep
    oldest_sweep = run.started_at - timedelta(hours=int(settings.INTEGRITY_FULL_SWEEP_HOURS))
    if previous.swept_at < oldest_sweep or len(previous.tracked_ids) != previous.failing_count:
        return sweep
    overlap = timedelta(seconds=int(settings.INTEGRITY_CHANGE_OVERLAP_SECONDS))
    return Plan(
        since=previous.run.started_at - overlap,
        recheck=tuple(str(tracked) for tracked in previous.tracked_ids),
        swept_at=previous.swept_at,
    )


def evaluate_check(check: IntegrityCheck, *, plan: Plan | None = None) -> Evaluation:
    """Run one check's query (or, with an incremental plan, its changed-rows query) under the
    integrity statement timeout."""
    plan = plan or Plan()
    incremental = plan.since is not None and check.is_incremental
    sql = (check.render_changed_sql() if incremental else None) or check.render_sql()
    params: dict[str, Any] = {
        "sample_limit": TRACK_LIMIT if check.is_incremental else SAMPLE_LIMIT,
        "since": plan.since,
        "recheck": list(plan.recheck),
    }
    started = time.perf_counter()
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            set_local_statement_timeout(settings.INTEGRITY_STATEMENT_TIMEOUT_MS)
            if incremental or not check.is_incremental:
                # These queries read few rows, but the plans of the branches they skip (the
                # scan behind a proof, an exact count behind an estimate) are costed as large:
                # compiling them would take longer than the query itself.
                cursor.execute("SET LOCAL jit = off")
            cursor.execute(sql, params)
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
    found = [str(sample) for sample in (samples or [])]
    outcome = CheckOutcome(
        failing_count=int(failing or 0),
        population=int(population or 0),
        sample_ids=found[:SAMPLE_LIMIT],
        severe_count=int(severe or 0),
    )
    tracked: Sequence[str] = found[:TRACK_LIMIT] if check.is_incremental else ()
    return Evaluation(
        check, check.status_for(outcome), outcome, duration, tracked_ids=tuple(tracked)
    )


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
    full: bool = False,
) -> IntegrityRun:
    """Evaluate checks (and, with `fix`, repair what fails), storing the run and each result.

    A check that can read only the rows changed since the previous run does so unless `full`
    is given or its last full sweep is too old (`evaluation_plan`).

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
    return _integrity_run_fill(run, checks, fail_level=fail_level, full=full)


def _integrity_run_fill(
    run: IntegrityRun,
    checks: list[IntegrityCheck],
    *,
    fail_level: str = "warning",
    full: bool = False,
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
            statuses.append(
                _run_one(run, check, fix=run.fix_requested, dry_run=run.dry_run, full=full)
            )
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


def _run_one(
    run: IntegrityRun, check: IntegrityCheck, *, fix: bool, dry_run: bool, full: bool = False
) -> str:
    plan = evaluation_plan(check=check, run=run, full=full)
    evaluation = evaluate_check(check, plan=plan)
    repaired: int | None = None
    if fix and check.repair is not None and evaluation.status in ("warning", "error"):
        repaired = integrity_repair_apply(check=check, dry_run=dry_run)
        if not dry_run:
            # The repaired rows are among those found, which the same plan reads again.
            evaluation = evaluate_check(
                check, plan=Plan(plan.since, evaluation.tracked_ids or plan.recheck, plan.swept_at)
            )
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
            since=plan.since,
            swept_at=plan.swept_at if evaluation.outcome is not None else None,
            tracked_ids=list(evaluation.tracked_ids),
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
