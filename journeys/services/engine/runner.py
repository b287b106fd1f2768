"""`sessions_advance`: one run of the engine over a batch of sessions (see the package's
docstring for the protocol), and handing the sessions it has no time for to a new task."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

from django.conf import settings
from django.db import transaction

from evoflow.tasks import enqueue_after_commit
from journeys.services.engine.claim import (
    contacts_enrich_before,
    contacts_load,
    flows_load,
    sessions_claim,
)
from journeys.services.engine.context import AdvanceReport, AdvanceRun, RunningSession
from journeys.services.engine.protocol import effect_step
from journeys.services.engine.steps import base_write, crash_write, pure_write, writes_persist
from journeys.services.funnel import SessionWrite, session_persist_many

ADVANCE_TASK = "journeys.tasks.sessions_advance_task"
# Sessions per advance task: large enough to amortise each statement over many sessions.
ADVANCE_BATCH_SIZE = 200
# One task run stops after this long and hands the rest of its sessions to a new task, so a
# long batch never holds a worker past the cluster's task timeout.
TASK_TIME_BUDGET_SECONDS = 60.0


def task_time_budget() -> float:
    """How long one task may run before it hands its sessions over: TASK_TIME_BUDGET_SECONDS, or
    half the session lease if that is shorter. A claimed session waiting for its turn behind the
    batch's other calls is not renewed meanwhile; were the budget longer than the lease, a
    second worker could claim it while this one still means to run it."""
    return min(TASK_TIME_BUDGET_SECONDS, float(settings.JOURNEYS_SESSION_LEASE_SECONDS) / 2)


def sessions_advance(*, session_ids: Sequence[int]) -> AdvanceReport:
    """Advance these sessions as far as they go now (until a wait, the end, or a failure).

    Safe to call twice with the same ids, at once or after a crash: only sessions whose lease
    this call obtains are touched, and each write is guarded by the lease and the step count.
    """
    token = uuid.uuid4()
    report = AdvanceReport()
    sessions = sessions_claim(session_ids, token)
    report.claimed = len(sessions)
    if not sessions:
        return report
    run = AdvanceRun(token=token, report=report, flows=flows_load(sessions))
    run.contacts = contacts_load([s.contact_id for s in sessions], run.stub_ids)
    run.max_steps = int(settings.JOURNEYS_MAX_STEPS_PER_SESSION)
    run.deadline = time.monotonic() + task_time_budget()
    running = sessions

    while running:
        if run.is_out_of_time():
            _hand_over(run, running)
            break
        if run.stub_ids:
            contacts_enrich_before(run, running)
        pure: list[tuple[RunningSession, SessionWrite]] = []
        effects: list[RunningSession] = []
        for session in running:
            try:
                write = pure_write(run, session)
            except Exception as error:
                # A node that cannot be evaluated (a bug, a value it cannot handle) fails its
                # own session, never the batch.
                write = crash_write(run, session, error, detail=str(error)[:200])
            if write is None:
                effects.append(session)
            else:
                pure.append((session, write))

        still_running: list[RunningSession] = []
        for session, persisted in writes_persist(run, pure):
            if persisted is None:
                report.lost += 1
                continue
            report.steps += int(persisted.step is not None)
            report.count(persisted)
            if session.apply(persisted):
                still_running.append(session)
        for index, session in enumerate(effects):
            if run.is_out_of_time():
                # Every call may take up to its timeout: check the budget before each one.
                _hand_over(run, [*effects[index:], *still_running])
                return report
            effect_write = effect_step(run, session)
            if effect_write is not None and session.apply(effect_write):
                still_running.append(session)
        running = still_running
    return report


def _hand_over(run: AdvanceRun, running: Sequence[RunningSession]) -> None:
    """Release the leases of sessions this run has no time left for, and queue a new run."""
    writes = []
    for session in running:
        write = base_write(run, session)
        write.is_lease_released = True
        writes.append(write)
    with transaction.atomic():
        persisted = session_persist_many(writes=writes)
        ids = sorted(persisted.updated_session_ids)
        sessions_enqueue_advance(session_ids=ids)
    run.report.handed_over += len(ids)
    run.report.session_ids_handed_over.extend(ids)


def sessions_enqueue_advance(*, session_ids: Sequence[int]) -> None:
    """Queue advance tasks for these sessions, in batches, once the transaction commits."""
    ordered = list(session_ids)
    for start in range(0, len(ordered), ADVANCE_BATCH_SIZE):
        enqueue_after_commit(ADVANCE_TASK, ordered[start : start + ADVANCE_BATCH_SIZE])
