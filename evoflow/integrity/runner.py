"""Running the integrity checks and storing what they found."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from evoflow import metrics
from evoflow.db import set_local_statement_timeout
from evoflow.integrity.registry import (
    SAMPLE_LIMIT,
    CheckOutcome,
    IntegrityCheck,
    UnknownCheck,
    all_checks,
    get_check,
)
from evoflow.models import IntegrityCheckResult, IntegrityRun
from evoflow.requestid import get_request_id

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
    try:
        statuses = [_run_one(run, check, fix=fix, dry_run=dry_run) for check in checks]
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
    IntegrityCheckResult.objects.create(
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
    if evaluation.status in ("warning", "error"):
        logger.log(
            logging.ERROR if evaluation.status == "error" else logging.WARNING,
            "integrity check %s is %s: %d of %d (sample %s)",
            check.id,
            evaluation.status,
            outcome.failing_count,
            outcome.population,
            outcome.sample_ids[:5],
            extra={"check_id": check.id, "failing_count": outcome.failing_count},
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
