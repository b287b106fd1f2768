"""The side-effect protocol (J4): each node with a side effect is run at most once per step.

1. record the step as `started`, with its idempotency key (derived from session and step);
2. make the call outside any transaction, carrying that key;
3. record the step `completed` together with the session's move to the next node.

A step found `started` when a session comes back (after a retryable failure, or a worker that
died during the call) is sent again with the same key, as its next attempt; a step found in any
other state is never sent again.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from journeys.flows.effects import EffectFailed, effect_run
from journeys.models import SessionStatus, StepStatus
from journeys.services.engine.context import AdvanceRun, RunningSession
from journeys.services.engine.steps import (
    base_write,
    crash_write,
    fail_write,
    outcome_write,
    write_persist,
)
from journeys.services.funnel import SessionWrite, StepWrite, session_persist_many

logger = logging.getLogger(__name__)


def idempotency_key_for(session_id: int, step_number: int) -> str:
    return f"journey-session-{session_id}-step-{step_number}"


def _existing_step(session_id: int, step_number: int) -> tuple[str, int] | None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT status, attempt FROM journeys_journeystep "
            "WHERE session_id = %s AND step_number = %s",
            [session_id, step_number],
        )
        row = cursor.fetchone()
    return (row[0], row[1]) if row else None


def _retry_key(session: RunningSession, node_id: str) -> str | None:
    """The failed session's key when this session retries its call (see `session_retry`):
    only for the first step, at the node that failed."""
    retry = session.context.get("retry_idempotency_key")
    if session.step_count == 0 and isinstance(retry, dict) and retry.get("node_id") == node_id:
        key = retry.get("key")
        return key if isinstance(key, str) and key else None
    return None


def effect_step(run: AdvanceRun, session: RunningSession) -> SessionWrite | None:
    """One side-effect node under the J4 protocol; returns the persisted write, or None."""
    flow = run.runnable_flow_of(session)
    node = flow.nodes[session.current_node_id]
    step_number = session.step_count + 1
    key = _retry_key(session, node.id) or idempotency_key_for(session.id, step_number)
    existing = _existing_step(session.id, step_number)
    if existing is not None and existing[0] != StepStatus.STARTED:
        # Cannot happen while the step count guard holds; refuse rather than repeat.
        logger.error("session %s step %s is already %s", session.id, step_number, existing[0])
        run.report.lost += 1
        return None
    # A step found `started` was sent before: after a retryable failure (the session waited)
    # or by a worker that died during the call. Both count as attempts, so a call that
    # keeps killing its worker stops after the node's attempts instead of looping forever.
    attempt = existing[1] + 1 if existing else 1
    started_at = timezone.now()
    if attempt > node.retry.attempts:
        write = fail_write(
            run,
            session,
            f"gave up after {node.retry.attempts} attempts (the worker stopped during the call)",
            attempts=node.retry.attempts,
            node_type=node.type,
        )
        write.step = StepWrite(
            step_number=step_number,
            node_id=node.id,
            node_type=node.type,
            status=StepStatus.FAILED,
            attempt=node.retry.attempts,
            idempotency_key=key,
            started_at=started_at,
            finished_at=started_at,
            error=str(write.error["message"]),
        )
        write.step_count = step_number
        return _outcome_persist(run, session, write, {})

    # 1. Record "started" with the key, before the call.
    started_write = base_write(run, session)
    started_write.step = StepWrite(
        step_number=step_number,
        node_id=node.id,
        node_type=node.type,
        status=StepStatus.STARTED,
        attempt=attempt,
        idempotency_key=key,
        started_at=started_at,
    )
    with transaction.atomic():
        persisted = session_persist_many(writes=[started_write])
    if session.id not in persisted.updated_session_ids:
        run.report.lost += 1
        return None

    # 2. The call, outside any transaction.
    clock = time.perf_counter()
    contact_changes: dict[str, Any] = {}
    try:
        outcome = effect_run(node, run.state_of(session), idempotency_key=key)
    except EffectFailed as error:
        write = _failure_write(run, session, key, attempt, started_at, error)
    except Exception as error:
        # Not a failure the call reports but one it cannot survive: fail this session only.
        # The message is the error's type alone: its text may quote a (secret) header.
        write = crash_write(
            run, session, error, attempt=attempt, idempotency_key=key, started_at=started_at
        )
    else:
        try:
            step = StepWrite(
                step_number=step_number,
                node_id=node.id,
                node_type=node.type,
                status=StepStatus.COMPLETED,
                attempt=attempt,
                idempotency_key=key,
                started_at=started_at,
                finished_at=timezone.now(),
                duration_ms=(time.perf_counter() - clock) * 1000,
                result=outcome.result,
            )
            write = outcome_write(run, session, outcome, step)
        except Exception as error:
            write = crash_write(
                run, session, error, attempt=attempt, idempotency_key=key, started_at=started_at
            )
        else:
            contact_changes = outcome.contact_changes
            if contact_changes:
                run.contacts.setdefault(session.contact_id, {}).update(contact_changes)

    # 3. Record the outcome with the session's move, in one transaction.
    return _outcome_persist(run, session, write, contact_changes)


def _outcome_persist(
    run: AdvanceRun,
    session: RunningSession,
    write: SessionWrite,
    contact_changes: dict[str, Any],
) -> SessionWrite | None:
    """Step 3 of the protocol, counted in the run's report; a write that cannot be stored
    fails the session instead (`write_persist`), so its step never stays `started` forever."""
    persisted = write_persist(run, session, write, contact_changes=contact_changes)
    if persisted is None:
        run.report.lost += 1
        return None
    is_step_done = persisted.step is not None and persisted.step.status != StepStatus.STARTED
    run.report.steps += int(is_step_done)
    run.report.count(persisted)
    return persisted


def _failure_write(
    run: AdvanceRun,
    session: RunningSession,
    key: str,
    attempt: int,
    started_at: datetime,
    error: EffectFailed,
) -> SessionWrite:
    """The session after its call failed: waiting for the next attempt while the error is
    retryable and attempts remain, else failed."""
    node = run.runnable_flow_of(session).nodes[session.current_node_id]
    retry = node.retry
    step = StepWrite(
        step_number=session.step_count + 1,
        node_id=node.id,
        node_type=node.type,
        status=StepStatus.STARTED,
        attempt=attempt,
        idempotency_key=key,
        started_at=started_at,
        error=str(error),
    )
    if error.is_retryable and attempt < retry.attempts:
        # Try again later, with the same step number and key; the worker is freed meanwhile.
        write = base_write(run, session)
        write.step = step
        write.status = SessionStatus.WAITING
        write.wait_until = timezone.now() + timedelta(seconds=retry.delay_after(attempt))
        write.context = {**session.context, "wait_kind": "retry", "retry": {"attempt": attempt}}
        write.is_lease_released = True
        return write
    step.status = StepStatus.FAILED
    step.finished_at = timezone.now()
    write = fail_write(run, session, str(error), attempts=attempt, node_type=node.type)
    write.step = step
    write.step_count = session.step_count + 1
    return write
