"""django-q2 entry points of the integrity runs: thin, ids in, the runner called."""

from __future__ import annotations

from evoflow.integrity.runner import integrity_run, integrity_run_execute_queued

# The daily run's dotted path, for the schedule the evoflow app registers (the requested run's
# task is named beside the service that enqueues it: lifecycle.INTEGRITY_RUN_TASK).
INTEGRITY_SCHEDULED_TASK = "evoflow.integrity.tasks.integrity_run_scheduled"


def integrity_run_scheduled() -> int:
    """Scheduled entry point of the daily integrity run, a full sweep of every check (the runs
    between read only what changed since); returns the run's id."""
    return integrity_run(trigger="schedule", full=True).pk


def integrity_run_requested(run_id: int) -> int | None:
    """Execute a run queued from the admin ("run integrity now", "repair"); a second delivery
    of the task finds the run claimed and does nothing, unless its worker is gone: then it
    fails the run as lost."""
    run = integrity_run_execute_queued(run_id=run_id)
    return run.pk if run is not None else None
