"""The engine: advance claimed sessions node by node, persisting every step through the funnel.

A worker claims a batch of active sessions with a lease (one UPDATE ... FOR UPDATE SKIP LOCKED),
then repeats: evaluate every session's current node; the pure nodes of the whole batch are
persisted in ONE funnel statement (session state + step row + contact stub); each node with a
side effect is run on its own with the at-most-once protocol of J4:

1. record the step as `started`, with its idempotency key (derived from session and step);
2. make the call outside any transaction, carrying that key;
3. record the step `completed` together with the session's move to the next node.

A step found `completed` is never run again (the session already moved past it in the same
statement); a step found `started` (the worker died between 1 and 3) is re-sent with the same
key, which the receiver recognises. Waits persist their deadline and release the session;
`sessions_resume_due` picks them up again.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from evoflow.http import UpstreamUnavailable
from evoflow.tasks import enqueue_after_commit
from journeys.flows.effects import EffectFailed, effect_run
from journeys.flows.flow import MAX_WAIT_SECONDS, Flow, FlowInvalid, Node, flow_parse
from journeys.flows.nodes import NodeState, Outcome, node_evaluate
from journeys.models import Contact, SessionStatus, StepStatus
from journeys.services.contacts import contact_enrich
from journeys.services.funnel import (
    SessionWrite,
    StepWrite,
    UnstorableValue,
    session_persist_many,
)

logger = logging.getLogger(__name__)

ADVANCE_TASK = "journeys.tasks.sessions_advance_task"
# Sessions per advance task: large enough to amortise each statement over many sessions.
ADVANCE_BATCH_SIZE = 200
# One task run stops after this long and hands the rest of its sessions to a new task, so a
# long batch never holds a worker past the cluster's task timeout.
TASK_TIME_BUDGET_SECONDS = 60.0

CONTACT_FIELDS = (
    "name",
    "email",
    "phone",
    "phone_e164",
    "custom_attributes",
    "additional_attributes",
    "labels",
    "is_blocked",
)


def idempotency_key_for(session_id: int, step_number: int) -> str:
    return f"journey-session-{session_id}-step-{step_number}"


@dataclass
class RunningSession:
    id: int
    journey_id: int
    journey_version: int
    contact_id: uuid.UUID
    current_node_id: str
    step_count: int
    variables: dict[str, Any]
    context: dict[str, Any]


@dataclass
class AdvanceReport:
    claimed: int = 0
    steps: int = 0
    completed: int = 0
    waiting: int = 0
    failed: int = 0
    lost: int = 0  # cancelled, paused or taken over while this worker held them
    handed_over: int = 0
    session_ids_handed_over: list[int] = field(default_factory=list)


_CLAIM_SQL = """
UPDATE journeys_journeysession AS s
SET lease_token = %(token)s,
    lease_until = now() + make_interval(secs => %(lease_seconds)s),
    updated_at = now()
FROM journeys_journey AS j
WHERE s.journey_id = j.id
  AND s.id IN (
    SELECT id FROM journeys_journeysession
    WHERE id = ANY (%(ids)s) AND status = 'active'
      AND (lease_until IS NULL OR lease_until < now())
    ORDER BY id
    FOR UPDATE SKIP LOCKED
  )
RETURNING s.id, s.journey_id, j.version, s.contact_id, s.current_node_id, s.step_count,
          s.variables, s.context
"""


def _jsonb(value: Any) -> Any:
    # Django's psycopg setup hands jsonb to raw cursors as text (JSONField decodes its own).
    if isinstance(value, str | bytes):
        return json.loads(value)
    return {} if value is None else value


def _claim(session_ids: Sequence[int], token: uuid.UUID) -> list[RunningSession]:
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            _CLAIM_SQL,
            {
                "token": token,
                "ids": list(session_ids),
                "lease_seconds": float(settings.JOURNEYS_SESSION_LEASE_SECONDS),
            },
        )
        rows = cursor.fetchall()
    return [
        RunningSession(
            id=row[0],
            journey_id=row[1],
            journey_version=row[2],
            contact_id=row[3],
            current_node_id=row[4],
            step_count=row[5],
            variables=_jsonb(row[6]),
            context=_jsonb(row[7]),
        )
        for row in sorted(rows)
    ]


# Parsed flows per (journey id, version): a worker parses each flow version once.
_FLOW_CACHE: dict[tuple[int, int], Flow | FlowInvalid] = {}


def _flows_load(sessions: Sequence[RunningSession]) -> dict[int, Flow | FlowInvalid]:
    """The flow of each session's journey, by journey id.

    The flow is read after the claim, so the journey may have been edited in between: the
    flow read then (its current version) serves the session, the same flow a later claim
    would get. A journey deleted meanwhile yields FlowInvalid, which fails its sessions.
    """
    flows: dict[int, Flow | FlowInvalid] = {}
    missing: set[int] = set()
    for session in sessions:
        cached = _FLOW_CACHE.get((session.journey_id, session.journey_version))
        if cached is None:
            missing.add(session.journey_id)
        else:
            flows[session.journey_id] = cached
    missing -= set(flows)
    if missing:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT id, version, flow FROM journeys_journey WHERE id = ANY (%s)",
                [sorted(missing)],
            )
            for journey_id, version, flow in cursor.fetchall():
                parsed: Flow | FlowInvalid
                try:
                    parsed = flow_parse(_jsonb(flow))
                except FlowInvalid as error:
                    parsed = error
                _FLOW_CACHE[(journey_id, version)] = parsed
                flows[journey_id] = parsed
    for journey_id in missing - set(flows):
        flows[journey_id] = FlowInvalid([f"journey {journey_id} no longer exists"])
    return flows


def _contacts_load(
    contact_ids: Sequence[uuid.UUID], stub_ids: set[uuid.UUID]
) -> dict[uuid.UUID, dict[str, Any]]:
    """The contacts' fields by id; adds the ids of stubs (never enriched) to `stub_ids`."""
    rows = Contact.objects.filter(id__in=set(contact_ids)).values(
        "id", "crm_synced_at", *CONTACT_FIELDS
    )
    contacts = {}
    for row in rows:
        contact_id = row.pop("id")
        if row.pop("crm_synced_at") is None:
            stub_ids.add(contact_id)
        contacts[contact_id] = row
    return contacts


def _contacts_enrich_before(
    nodes_by_contact: dict[uuid.UUID, Node],
    contacts: dict[uuid.UUID, dict[str, Any]],
    stub_ids: set[uuid.UUID],
) -> None:
    """Enrich the stubs whose next node reads `contact.*`, outside any transaction.

    A contact that exists only in the CRM would otherwise run its first nodes with empty
    fields (the enrichment task runs on its own schedule). A CRM that is down or does not
    know the contact leaves the stub as it is: the session goes on with it.
    """
    wanted = [
        contact_id
        for contact_id, node in nodes_by_contact.items()
        if node.reads_contact and contact_id in stub_ids
    ]
    if not wanted or not settings.JOURNEYS_ENRICH_CONTACTS:
        return
    stub_ids.difference_update(wanted)  # one attempt per task run
    for contact_id in wanted:
        try:
            contact_enrich(contact_id=contact_id)
        except UpstreamUnavailable:
            # The CRM is down: the other stubs would each wait through the same retries.
            logger.warning("enrichment before a node skipped: the CRM is unavailable")
            break
        except Exception as error:  # the CRM is optional here; the enrichment task retries
            logger.warning(
                "enrichment of contact %s before its node failed: %s",
                contact_id,
                type(error).__name__,
            )
    contacts.update(_contacts_load(wanted, set()))


def _base_write(session: RunningSession, token: uuid.UUID) -> SessionWrite:
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
        lease_token=token,
        is_lease_released=False,
    )


def _fail_write(
    session: RunningSession, token: uuid.UUID, message: str, **extra: Any
) -> SessionWrite:
    write = _base_write(session, token)
    write.status = SessionStatus.FAILED
    write.error = {"message": message, "node_id": session.current_node_id, **extra}
    write.ended_reason = "failed"
    write.is_finished = True
    write.is_lease_released = True
    return write


def _outcome_write(
    session: RunningSession,
    token: uuid.UUID,
    flow: Flow,
    outcome: Outcome,
    step: StepWrite,
) -> SessionWrite:
    """The session's next state after its current node produced `outcome`."""
    node = flow.nodes[session.current_node_id]
    write = _base_write(session, token)
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


def _state(session: RunningSession, contacts: dict[uuid.UUID, dict[str, Any]]) -> NodeState:
    return NodeState(
        contact_id=str(session.contact_id),
        contact=contacts.get(session.contact_id, {}),
        variables=session.variables,
        session_id=session.id,
        step_number=session.step_count + 1,
    )


def _apply(session: RunningSession, write: SessionWrite) -> bool:
    """Carry a persisted write into the in-memory session; True while it stays active."""
    session.current_node_id = write.current_node_id
    session.step_count = write.step_count
    session.variables = write.variables
    session.context = write.context
    return write.status == SessionStatus.ACTIVE


def sessions_advance(*, session_ids: Sequence[int]) -> AdvanceReport:
    """Advance these sessions as far as they go now (until a wait, the end, or a failure).

    Safe to call twice with the same ids, at once or after a crash: only sessions whose lease
    this call obtains are touched, and each write is guarded by the lease and the step count.
    """
    token = uuid.uuid4()
    report = AdvanceReport()
    sessions = _claim(session_ids, token)
    report.claimed = len(sessions)
    if not sessions:
        return report
    flows = _flows_load(sessions)
    stub_ids: set[uuid.UUID] = set()
    contacts = _contacts_load([s.contact_id for s in sessions], stub_ids)
    max_steps = int(settings.JOURNEYS_MAX_STEPS_PER_SESSION)
    deadline = time.monotonic() + TASK_TIME_BUDGET_SECONDS
    running = sessions

    while running:
        if time.monotonic() > deadline:
            _hand_over(running, token, report)
            break
        if stub_ids:
            _contacts_enrich_before(_next_nodes(running, flows), contacts, stub_ids)
        pure: list[tuple[RunningSession, SessionWrite]] = []
        effects: list[RunningSession] = []
        for session in running:
            flow = flows[session.journey_id]
            try:
                write = _pure_write(session, token, flow, contacts, max_steps)
            except Exception as error:
                # A node that cannot be evaluated (a bug, a value it cannot handle) fails its
                # own session, never the batch.
                write = _crash_write(session, token, flow, error, detail=str(error)[:200])
            if write is None:
                effects.append(session)
            else:
                pure.append((session, write))

        still_running: list[RunningSession] = []
        for session, write in _persist_isolated(pure, token, flows):
            if write is None:
                report.lost += 1
                continue
            report.steps += int(write.step is not None)
            _count(report, write)
            if _apply(session, write):
                still_running.append(session)
        for index, session in enumerate(effects):
            if time.monotonic() > deadline:
                # Every call may take up to its timeout: check the budget before each one.
                _hand_over([*effects[index:], *still_running], token, report)
                return report
            flow = flows[session.journey_id]
            assert isinstance(flow, Flow)
            effect_write = _effect_step(session, token, flow, contacts, report)
            if effect_write is not None and _apply(session, effect_write):
                still_running.append(session)
        running = still_running
    return report


def _next_nodes(
    sessions: Sequence[RunningSession], flows: dict[int, Flow | FlowInvalid]
) -> dict[uuid.UUID, Node]:
    nodes: dict[uuid.UUID, Node] = {}
    for session in sessions:
        flow = flows[session.journey_id]
        if isinstance(flow, Flow):
            node = flow.nodes.get(session.current_node_id)
            if node is not None and node.reads_contact:
                nodes[session.contact_id] = node
    return nodes


def _pure_write(
    session: RunningSession,
    token: uuid.UUID,
    flow: Flow | FlowInvalid,
    contacts: dict[uuid.UUID, dict[str, Any]],
    max_steps: int,
) -> SessionWrite | None:
    """The write of the session's current node if it is pure (or cannot run); None for a
    node with a side effect, which runs under the J4 protocol."""
    if isinstance(flow, FlowInvalid):
        return _fail_write(session, token, f"invalid flow: {flow}")
    node = flow.nodes.get(session.current_node_id)
    if node is None:
        message = f'node "{session.current_node_id}" is not in the journey\'s flow'
        return _fail_write(session, token, message)
    if session.step_count >= max_steps:
        message = f"step limit of {max_steps} reached (a loop without a wait?)"
        return _fail_write(session, token, message)
    if node.has_side_effect:
        return None
    started = timezone.now()
    outcome = node_evaluate(node, _state(session, contacts))
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
    return _outcome_write(session, token, flow, outcome, step)


def _crash_write(
    session: RunningSession,
    token: uuid.UUID,
    flow: Flow | FlowInvalid,
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
    write = _fail_write(session, token, message, attempts=attempt, node_type=node_type)
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


def _persist_isolated(
    pairs: Sequence[tuple[RunningSession, SessionWrite]],
    token: uuid.UUID,
    flows: dict[int, Flow | FlowInvalid],
) -> list[tuple[RunningSession, SessionWrite | None]]:
    """Persist the writes in one statement; if that fails, one by one, failing only the
    sessions whose write cannot be stored (a NaN or a NUL in a variable, say).

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
        persisted: list[tuple[RunningSession, SessionWrite | None]] = []
        for pair in pairs:
            persisted.extend(_persist_one(*pair, token=token, flows=flows))
        return persisted
    return [
        (session, write if session.id in result.updated_session_ids else None)
        for session, write in pairs
    ]


def _persist_one(
    session: RunningSession,
    write: SessionWrite,
    *,
    token: uuid.UUID,
    flows: dict[int, Flow | FlowInvalid],
) -> list[tuple[RunningSession, SessionWrite | None]]:
    try:
        with transaction.atomic():
            result = session_persist_many(writes=[write])
    except Exception as error:
        step = write.step
        write = _crash_write(
            session,
            token,
            flows[session.journey_id],
            error,
            detail=str(error)[:200] if isinstance(error, UnstorableValue) else "",
            attempt=step.attempt if step else 1,
            idempotency_key=step.idempotency_key if step else "",
            started_at=step.started_at if step else None,
        )
        with transaction.atomic():
            result = session_persist_many(writes=[write])
    return [(session, write if session.id in result.updated_session_ids else None)]


def _count(report: AdvanceReport, write: SessionWrite) -> None:
    if write.status == SessionStatus.COMPLETED:
        report.completed += 1
    elif write.status == SessionStatus.WAITING:
        report.waiting += 1
    elif write.status == SessionStatus.FAILED:
        report.failed += 1


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


def _effect_step(
    session: RunningSession,
    token: uuid.UUID,
    flow: Flow,
    contacts: dict[uuid.UUID, dict[str, Any]],
    report: AdvanceReport,
) -> SessionWrite | None:
    """One side-effect node under the J4 protocol; returns the persisted write, or None."""
    node = flow.nodes[session.current_node_id]
    step_number = session.step_count + 1
    key = _retry_key(session, node.id) or idempotency_key_for(session.id, step_number)
    existing = _existing_step(session.id, step_number)
    if existing is not None and existing[0] != StepStatus.STARTED:
        # Cannot happen while the step count guard holds; refuse rather than repeat.
        logger.error("session %s step %s is already %s", session.id, step_number, existing[0])
        report.lost += 1
        return None
    # A step found `started` was sent before: after a retryable failure (the session waited)
    # or by a worker that died during the call. Both count as attempts, so a call that
    # keeps killing its worker stops after the node's attempts instead of looping forever.
    attempt = existing[1] + 1 if existing else 1
    started_at = timezone.now()
    if attempt > node.retry.attempts:
        write = _fail_write(
            session,
            token,
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
        return _effect_persist(session, token, flow, write, {}, report)

    # 1. Record "started" with the key, before the call.
    started_write = _base_write(session, token)
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
        report.lost += 1
        return None

    # 2. The call, outside any transaction.
    clock = time.perf_counter()
    contact_changes: dict[str, Any] = {}
    try:
        outcome = effect_run(node, _state(session, contacts), idempotency_key=key)
    except EffectFailed as error:
        write = _effect_failure_write(session, token, flow, key, attempt, started_at, error)
    except Exception as error:
        # Not a failure the call reports but one it cannot survive: fail this session only.
        # The message is the error's type alone: its text may quote a (secret) header.
        write = _crash_write(
            session, token, flow, error, attempt=attempt, idempotency_key=key, started_at=started_at
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
            write = _outcome_write(session, token, flow, outcome, step)
        except Exception as error:
            write = _crash_write(
                session,
                token,
                flow,
                error,
                attempt=attempt,
                idempotency_key=key,
                started_at=started_at,
            )
        else:
            contact_changes = outcome.contact_changes
            if contact_changes:
                contacts.setdefault(session.contact_id, {}).update(contact_changes)

    # 3. Record the outcome with the session's move, in one transaction.
    return _effect_persist(session, token, flow, write, contact_changes, report)


def _effect_persist(
    session: RunningSession,
    token: uuid.UUID,
    flow: Flow,
    write: SessionWrite,
    contact_changes: dict[str, Any],
    report: AdvanceReport,
) -> SessionWrite | None:
    """Step 3 of the protocol; a write that cannot be stored (a mapped answer holding a NaN
    or a NUL) fails the session instead, so it never stays `started` forever."""
    try:
        with transaction.atomic():
            persisted = session_persist_many(writes=[write])
            if session.id in persisted.updated_session_ids:
                _contact_mirror_update(session.contact_id, contact_changes)
    except Exception as error:
        if write.status == SessionStatus.FAILED:
            raise  # even the failure cannot be stored: the database itself is the problem
        step = write.step
        write = _crash_write(
            session,
            token,
            flow,
            error,
            detail=str(error)[:200] if isinstance(error, UnstorableValue) else "",
            attempt=step.attempt if step else 1,
            idempotency_key=step.idempotency_key if step else "",
            started_at=step.started_at if step else None,
        )
        contact_changes = {}
        with transaction.atomic():
            persisted = session_persist_many(writes=[write])
    if session.id not in persisted.updated_session_ids:
        report.lost += 1
        return None
    report.steps += int(write.step is not None and write.step.status != StepStatus.STARTED)
    _count(report, write)
    return write


def _contact_mirror_update(contact_id: uuid.UUID, changes: dict[str, Any]) -> None:
    if changes:
        Contact.objects.filter(id=contact_id).update(**changes, updated_at=timezone.now())


def _effect_failure_write(
    session: RunningSession,
    token: uuid.UUID,
    flow: Flow,
    key: str,
    attempt: int,
    started_at: datetime,
    error: EffectFailed,
) -> SessionWrite:
    node = flow.nodes[session.current_node_id]
    retry = node.retry
    node_type = node.type
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
        write = _base_write(session, token)
        write.step = step
        write.status = SessionStatus.WAITING
        write.wait_until = timezone.now() + timedelta(seconds=retry.delay_after(attempt))
        write.context = {**session.context, "wait_kind": "retry", "retry": {"attempt": attempt}}
        write.is_lease_released = True
        return write
    step.status = StepStatus.FAILED
    step.finished_at = timezone.now()
    write = _fail_write(session, token, str(error), attempts=attempt, node_type=node_type)
    write.step = step
    write.step_count = session.step_count + 1
    return write


def _hand_over(running: Sequence[RunningSession], token: uuid.UUID, report: AdvanceReport) -> None:
    """Release the leases of sessions this run has no time left for, and queue a new run."""
    writes = []
    for session in running:
        write = _base_write(session, token)
        write.is_lease_released = True
        writes.append(write)
    with transaction.atomic():
        persisted = session_persist_many(writes=writes)
        ids = sorted(persisted.updated_session_ids)
        sessions_enqueue_advance(session_ids=ids)
    report.handed_over += len(ids)
    report.session_ids_handed_over.extend(ids)


def sessions_enqueue_advance(*, session_ids: Sequence[int]) -> None:
    """Queue advance tasks for these sessions, in batches, once the transaction commits."""
    ordered = list(session_ids)
    for start in range(0, len(ordered), ADVANCE_BATCH_SIZE):
        enqueue_after_commit(ADVANCE_TASK, ordered[start : start + ADVANCE_BATCH_SIZE])
