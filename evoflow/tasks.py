"""Background work: the one way to enqueue a task, task paths, and schedules created idempotently.

`enqueue_after_commit` is the only enqueue helper. With the default ORM broker the queue row is
written inside the caller's transaction, so the task and the data it needs commit together (or
roll back together: a rolled-back task never runs, and a crash between commit and enqueue
cannot lose it). With the Redis broker the push waits for the commit with
`transaction.on_commit`.

A task is named one way only: by its dotted path, declared once as a module-level `*_TASK`
string constant (beside the service that enqueues it, or in the app's `tasks.py` for scheduled
ones) and used by `enqueue_after_commit` and by the schedules; tests/core/test_architecture.py
imports every such constant and checks no enqueue names its task any other way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django_q.models import Schedule
from django_q.signals import post_execute_in_worker, pre_enqueue, pre_execute
from django_q.tasks import async_task

from evoflow import metrics
from evoflow.db import advisory_xact_lock
from evoflow.requestid import NO_REQUEST_ID, _current, get_request_id, new_request_id

logger = logging.getLogger(__name__)

TaskFunc = str | Callable[..., Any]


def _task_path(func: TaskFunc) -> str:
    return func if isinstance(func, str) else f"{func.__module__}.{func.__qualname__}"


def enqueue_after_commit(
    func: TaskFunc, *args: Any, task_name: str | None = None, **kwargs: Any
) -> None:
    """Run `func(*args, **kwargs)` on a worker once the current transaction has committed."""
    path = _task_path(func)
    options: dict[str, Any] = {}
    if task_name:
        options["task_name"] = task_name

    def push() -> None:
        async_task(path, *args, q_options=options, **kwargs)
        metrics.TASKS_ENQUEUED.labels(path).inc()
        logger.info("enqueued %s", path, extra={"task": path, "request_id": get_request_id()})

    if "orm" in settings.Q_CLUSTER and connection.in_atomic_block:
        push()
    else:
        transaction.on_commit(push)


def schedule_ensure(
    *,
    name: str,
    func: TaskFunc,
    schedule_type: str,
    minutes: int | None = None,
    args: str = "",
    repeats: int = -1,
    first_run: datetime | None = None,
) -> Schedule:
    """Create or update the schedule called `name`; running it again changes nothing.

    `first_run` applies only when the schedule is created: an existing schedule keeps its
    next run, so redeploying never shifts or repeats a run.
    """
    defaults: dict[str, Any] = {
        "func": _task_path(func),
        "schedule_type": schedule_type,
        "minutes": minutes,
        "args": args,
        "repeats": repeats,
    }
    # django-q2's Schedule.name is not unique, so concurrent callers (two hosts deploying at
    # once) are serialised on a transaction-level advisory lock keyed by the name.
    with transaction.atomic():
        advisory_xact_lock(f"schedule:{name}")
        schedule = Schedule.objects.filter(name=name).order_by("id").first()
        if schedule is None:
            if first_run is not None:
                defaults["next_run"] = first_run
            return Schedule.objects.create(name=name, **defaults)
        for field, value in defaults.items():
            setattr(schedule, field, value)
        schedule.save()
        return schedule


# -- request ids across the queue -------------------------------------------------------------
# A task carries the request id of the work that enqueued it (an HTTP request, a sync run, an
# earlier task), so the worker's log lines can be followed back to their cause. Scheduled tasks
# get a fresh id per run.


def _stamp_request_id(sender: Any, task: dict[str, Any], **kwargs: Any) -> None:
    current = get_request_id()
    if current != NO_REQUEST_ID:
        task.setdefault("request_id", current)


def _bind_request_id(sender: Any, task: dict[str, Any], **kwargs: Any) -> None:
    # Each worker process runs one task at a time, so the value simply replaces the previous
    # task's.
    _current.set(task.get("request_id") or new_request_id())


def _unbind_request_id(sender: Any, task: dict[str, Any], **kwargs: Any) -> None:
    # django-q2 logs "processing <task>" before pre_execute: without this, that line (and
    # anything else between two tasks) would carry the previous task's id.
    _current.set(NO_REQUEST_ID)


def connect_request_id_signals() -> None:
    pre_enqueue.connect(_stamp_request_id, dispatch_uid="evoflow.request_id.enqueue")
    pre_execute.connect(_bind_request_id, dispatch_uid="evoflow.request_id.execute")
    post_execute_in_worker.connect(_unbind_request_id, dispatch_uid="evoflow.request_id.done")
