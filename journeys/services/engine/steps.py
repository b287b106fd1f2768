"""The write of each step, and persisting it through the funnel (J1).

Every write is a `SessionWrite` guarded by the run's lease token and the session's step count,
so a session cancelled, paused or taken over while the run held it is left alone (the funnel
reports it as not updated).

- `base_write`, `fail_write`, `outcome_write`, `crash_write`: the session's next state;
- `pure_write`: the write of a pure node, evaluated here without I/O;
- `writes_persist`: the pure writes of a whole batch in one statement;
- `write_persist`: one write, and the engine's one crash fallback: a write that cannot be
  stored (a NaN or a NUL in a variable, say) fails its session instead, with a failed step, so
  no session stays active (or its step `started`) to be run again.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from journeys.flows.flow import MAX_WAIT_SECONDS, Flow, FlowInvalid
from journeys.flows.nodes import Outcome, node_evaluate
from journeys.models import Contact, SessionStatus, StepStatus
from journeys.services.engine.context import AdvanceRun, RunningSession
from journeys.services.funnel import (
    SessionWrite,
    StepWrite,
    UnstorableValue,
    session_persist_many,
)

logger = logging.getLogger(__name__)


def base_write(run: AdvanceRun, session: RunningSession) -> SessionWrite:
    """The session as it is, still active and leased: each write starts from this."""
    return SessionWrite(
        session_id=session.id,
        contact_id=session.contact_id,
        status=SessionStatus.ACTIVE,
        current_node_id=session.current_node_id,
        step_count=session.step_count,
        variables=session.variables,
        context=session.context,
        expected_statuses=(SessionStatus.ACTIVE,),
        expected_step_count=session.step_count,
        lease_token=run.token,
        is_lease_released=False,
    )


def fail_write(
    run: AdvanceRun, session: RunningSession, message: str, **extra: Any
) -> SessionWrite:
    write = base_write(run, session)
    write.status = SessionStatus.FAILED
    write.error = {"message": message, "node_id": session.current_node_id, **extra}
    write.ended_reason = "failed"
    write.is_finished = True
    write.is_lease_released = True
    return write


def outcome_write(
    run: AdvanceRun, session: RunningSession, outcome: Outcome, step: StepWrite
) -> SessionWrite:
    """The session's next state after its current node produced `outcome`."""
    flow = run.runnable_flow_of(session)
    node = flow.nodes[session.current_node_id]
    write = base_write(run, session)
    write.step = step
    write.step_count = session.step_count + 1
    write.variables = {**session.variables, **outcome.variables}
    write.context = {key: value for key, value in session.context.items() if key != "retry"}
    if outcome.kind == "complete":
        write.status = SessionStatus.COMPLETED
        write.ended_reason = outcome.reason or "exit"
        write.is_finished = True
        write.is_lease_released = True
    elif outcome.kind == "wait":
        write.status = SessionStatus.WAITING
        # Clamped: a flow saved before waits were bounded must not overflow the deadline.
        wait_seconds = min(outcome.wait_seconds or 0, MAX_WAIT_SECONDS)
        write.wait_until = timezone.now() + timedelta(seconds=wait_seconds)
        write.wait_event = outcome.wait_event
        write.wait_filters = outcome.wait_filters
        write.context["wait_kind"] = "event" if outcome.wait_event else "delay"
        write.is_lease_released = True
    else:
        next_node_id = flow.next_node_id(node.id, outcome.handle)
        if next_node_id is None:
            # A node without an outgoing edge ends the session: nothing stays active forever.
            write.status = SessionStatus.COMPLETED
            handle = f" for handle {outcome.handle!r}" if outcome.handle else ""
            write.ended_reason = f'no outgoing edge from node "{node.id}"{handle}'
            write.is_finished = True
            write.is_lease_released = True
        else:
            write.current_node_id = next_node_id
    return write


def pure_write(run: AdvanceRun, session: RunningSession) -> SessionWrite | None:
    """The write of the session's current node if it is pure (or cannot run); None for a
    node with a side effect, which runs under the J4 protocol."""
    flow = run.flow_of(session)
    if isinstance(flow, FlowInvalid):
        return fail_write(run, session, f"invalid flow: {flow}")
    node = flow.nodes.get(session.current_node_id)
    if node is None:
        message = f'node "{session.current_node_id}" is not in the journey\'s flow'
        return fail_write(run, session, message)
    if session.step_count >= run.max_steps:
        message = f"step limit of {run.max_steps} reached (a loop without a wait?)"
        return fail_write(run, session, message)
    if node.has_side_effect:
        return None
    started = timezone.now()
    outcome = node_evaluate(node, run.state_of(session))
    step = StepWrite(
        step_number=session.step_count + 1,
        node_id=node.id,
        node_type=node.type,
        status=StepStatus.COMPLETED,
        started_at=started,
        finished_at=started,
        duration_ms=0.0,
        result=outcome.result,
    )
    return outcome_write(run, session, outcome, step)


def crash_write(
    run: AdvanceRun,
    session: RunningSession,
    error: Exception,
    *,
    detail: str = "",
    attempt: int = 1,
    idempotency_key: str = "",
    started_at: datetime | None = None,
) -> SessionWrite:
    """Fail the session at its current node after an unexpected error, with a failed step.

    Not retried: the same node with the same state would fail the same way. `detail` is
    only given where the error's text cannot carry a secret (never for a call's error,
    whose message may quote a templated header).
    """
    flow = run.flow_of(session)
    node = flow.nodes.get(session.current_node_id) if isinstance(flow, Flow) else None
    node_type = node.type if node else ""
    message = f"unexpected error: {type(error).__name__}" + (f": {detail}" if detail else "")
    logger.warning(
        "session %s failed at node %s: %s",
        session.id,
        session.current_node_id,
        type(error).__name__,
        extra={"session_id": session.id},
    )
    now = timezone.now()
    write = fail_write(run, session, message, attempts=attempt, node_type=node_type)
    write.step = StepWrite(
        step_number=session.step_count + 1,
        node_id=session.current_node_id,
        node_type=node_type,
        status=StepStatus.FAILED,
        attempt=attempt,
        idempotency_key=idempotency_key,
        started_at=started_at or now,
        finished_at=now,
        error=message,
    )
    write.step_count = session.step_count + 1
    return write


def writes_persist(
    run: AdvanceRun, pairs: Sequence[tuple[RunningSession, SessionWrite]]
) -> list[tuple[RunningSession, SessionWrite | None]]:
    """Persist the writes in one statement; if that fails, one by one (`write_persist`),
    failing only the sessions whose write cannot be stored.

    Returns each session with the write persisted for it, or None when a guard did not hold
    (the session was cancelled, paused or taken over).
    """
    if not pairs:
        return []
    try:
        with transaction.atomic():
            result = session_persist_many(writes=[write for _, write in pairs])
    except Exception:
        if len(pairs) == 1 and pairs[0][1].status == SessionStatus.FAILED:
            raise  # even the failure cannot be stored: the database itself is the problem
        # One by one, a failure that cannot be stored is replaced like any other write: only
        # a failure that was alone in its statement says the database itself is the problem.
        return [
            (session, write_persist(run, session, write, is_failure_replaceable=True))
            for session, write in pairs
        ]
    return [
        (session, write if session.id in result.updated_session_ids else None)
        for session, write in pairs
    ]


def write_persist(
    run: AdvanceRun,
    session: RunningSession,
    write: SessionWrite,
    *,
    contact_changes: dict[str, Any] | None = None,
    is_failure_replaceable: bool = False,
) -> SessionWrite | None:
    """Persist one write (and mirror the contact changes of its call, in the same transaction);
    returns the write persisted, or None when a guard did not hold.

    A write that cannot be stored (a mapped answer or a variable holding a NaN or a NUL) is
    replaced by a crash write that fails the session with a failed step at the same attempt
    and key. A failure that cannot be stored either is raised (the database is the problem)
    unless `is_failure_replaceable`, as when a batch is retried one write at a time.
    """
    try:
        with transaction.atomic():
            persisted = session_persist_many(writes=[write])
            if contact_changes and session.id in persisted.updated_session_ids:
                _contact_mirror_update(session.contact_id, contact_changes)
    except Exception as error:
        if write.status == SessionStatus.FAILED and not is_failure_replaceable:
            raise  # even the failure cannot be stored: the database itself is the problem
        step = write.step
        write = crash_write(
            run,
            session,
            error,
            detail=str(error)[:200] if isinstance(error, UnstorableValue) else "",
            attempt=step.attempt if step else 1,
            idempotency_key=step.idempotency_key if step else "",
            started_at=step.started_at if step else None,
        )
        with transaction.atomic():
            persisted = session_persist_many(writes=[write])
    return write if session.id in persisted.updated_session_ids else None


def _contact_mirror_update(contact_id: uuid.UUID, changes: dict[str, Any]) -> None:
    Contact.objects.filter(id=contact_id).update(**changes, updated_at=timezone.now())
