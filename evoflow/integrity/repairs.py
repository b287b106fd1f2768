"""Repairs of integrity checks: the dry-run preview the repair page shows while the operator
waits, and applying a repair during a run (`manage.py integrity --fix`, the admin's repair)."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from django.db import DatabaseError, connection, transaction

from evoflow.integrity.registry import IntegrityCheck

# The runner's logger: these lines were the runner's before it was split, and log filters
# and alerts may select them by that name.
logger = logging.getLogger("evoflow.integrity.runner")

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


def integrity_repair_apply(*, check: IntegrityCheck, dry_run: bool) -> int:
    """Run the check's repair (or, with `dry_run`, ask what it would change); rows changed."""
    if check.repair is None:
        raise ValueError(f"the integrity check {check.id!r} has no repair")
    repaired = check.repair(dry_run=dry_run)
    logger.info(
        "integrity repair %s %s %d rows",
        check.id,
        "would change" if dry_run else "changed",
        repaired,
        extra={"check_id": check.id, "dry_run": dry_run},
    )
    return repaired
