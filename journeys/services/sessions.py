"""Session lifecycle: start, pause, resume, cancel, retry, and resuming due sessions.

Every write here is a `SessionWrite` through the funnel; none saves a model directly.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from journeys.flows.flow import Flow, FlowInvalid, flow_parse
from journeys.models import (
    LIVE_STATUSES,
    TERMINAL_STATUSES,
    Journey,
    JourneySession,
    JourneyStep,
    SessionStatus,
    StepStatus,
)
from journeys.services.engine import sessions_enqueue_advance
from journeys.services.funnel import (
    InvalidSessionTransition,
    InvalidVariables,
    JourneyInactive,
    JourneyNotFound,
    NewSession,
    ReentryNotAllowed,
    SessionWrite,
    contact_id_parse,
    contacts_enrichment_enqueue,
    session_insert,
    session_insert_many,
    session_persist,
    session_persist_many,
)


def _journey_get(journey_id: int) -> Journey:
    journey = Journey.objects.filter(pk=journey_id).first()
    if journey is None:
        raise JourneyNotFound(f"journey {journey_id} does not exist")
    return journey


def _flow_of(journey: Journey) -> Flow:
    try:
        return flow_parse(journey.flow)
    except FlowInvalid as error:  # only reachable if someone bypassed validation
        raise JourneyInactive(f"journey {journey.pk} has an invalid flow: {error}") from error


def session_start_for_journey(
    *,
    journey: Journey,
    contact_id: uuid.UUID,
    variables: dict[str, Any] | None = None,
    context: dict[str, Any] | None = None,
    start_node_id: str | None = None,
    is_reentry_checked: bool = True,
) -> int:
    """Start a session of a loaded journey inside the caller's transaction (events, retries
    and `session_start` share it)."""
    if not journey.is_active:
        raise JourneyInactive(f"journey {journey.pk} is not active")
    flow = _flow_of(journey)
    if (
        is_reentry_checked
        and not journey.allow_reentry
        and JourneySession.objects.filter(
            journey=journey, contact_id=contact_id, status__in=TERMINAL_STATUSES
        ).exists()
    ):
        raise ReentryNotAllowed(
            f"contact {contact_id} already went through journey {journey.pk}, "
            "which does not allow re-entry"
        )
    session_id = session_insert(
        new=NewSession(
            journey_id=journey.pk,
            contact_id=contact_id,
            current_node_id=start_node_id or flow.entry_node_id,
            variables={**journey.default_variables, **(variables or {})},
            context=context or {},
        )
    )
    sessions_enqueue_advance(session_ids=[session_id])
    return session_id


@transaction.atomic(durable=True)
def session_start(
    *,
    journey_id: int,
    contact_id: Any,
    variables: dict[str, Any] | None = None,
    source: str = "api",
) -> int:
    """Start `journey_id` for a contact (who may exist only in the CRM); returns the session id.

    Raises InvalidContactId (nothing written), SessionAlreadyLive (J2, from the constraint),
    ReentryNotAllowed, JourneyInactive or JourneyNotFound.
    """
    return session_start_in_transaction(
        journey_id=journey_id, contact_id=contact_id, variables=variables, source=source
    )


def session_start_in_transaction(
    *,
    journey_id: int,
    contact_id: Any,
    variables: dict[str, Any] | None = None,
    source: str = "api",
) -> int:
    """`session_start` inside the caller's transaction, for a caller that already holds one
    (the admin's change form runs in its own atomic block, where a durable one is refused).
    The enqueued advance task commits or rolls back with that transaction."""
    contact_uuid = contact_id_parse(contact_id)
    if variables is not None and not isinstance(variables, dict):
        raise InvalidVariables("variables must be a JSON object")
    journey = _journey_get(journey_id)
    return session_start_for_journey(
        journey=journey,
        contact_id=contact_uuid,
        variables=variables,
        context={"source": source},
    )


@dataclass(frozen=True)
class BulkStartResult:
    session_ids: list[int]
    skipped: int


@transaction.atomic(durable=True)
def sessions_start_many(
    *, journey_id: int, contact_ids: Sequence[Any], variables: dict[str, Any] | None = None
) -> BulkStartResult:
    """Enroll many contacts at once (one funnel statement); live duplicates are skipped."""
    journey = _journey_get(journey_id)
    if not journey.is_active:
        raise JourneyInactive(f"journey {journey.pk} is not active")
    flow = _flow_of(journey)
    contacts = list(dict.fromkeys(contact_id_parse(value) for value in contact_ids))
    if not journey.allow_reentry:
        done = set(
            JourneySession.objects.filter(
                journey=journey, contact_id__in=contacts, status__in=TERMINAL_STATUSES
            ).values_list("contact_id", flat=True)
        )
        contacts = [contact for contact in contacts if contact not in done]
    merged = {**journey.default_variables, **(variables or {})}
    result = session_insert_many(
        sessions=[
            NewSession(
                journey_id=journey.pk,
                contact_id=contact,
                current_node_id=flow.entry_node_id,
                variables=merged,
                context={"source": "bulk"},
            )
            for contact in contacts
        ],
        skip_live=True,
    )
    ids = sorted(result.session_ids.values())
    contacts_enrichment_enqueue(result.created_contact_ids)
    sessions_enqueue_advance(session_ids=ids)
    return BulkStartResult(session_ids=ids, skipped=len(contact_ids) - len(ids))


def _locked(session_id: int) -> JourneySession:
    session = (
        JourneySession.objects.select_for_update()
        .select_related("journey")
        .filter(pk=session_id)
        .first()
    )
    if session is None:
        raise JourneyNotFound(f"session {session_id} does not exist")
    return session


def _write_from(session: JourneySession) -> SessionWrite:
    """A write that keeps the session as it is; callers change what they mean to change."""
    return SessionWrite(
        session_id=session.pk,
        contact_id=session.contact_id,
        status=session.status,
        current_node_id=session.current_node_id,
        step_count=session.step_count,
        variables=session.variables,
        context=dict(session.context),
        expected_statuses=(session.status,),
        expected_step_count=session.step_count,
        wait_event=session.wait_event,
        wait_filters=session.wait_filters,
        wait_until=session.wait_until,
        error=session.error,
        ended_reason=session.ended_reason,
        is_lease_released=True,
    )


def _refuse(session: JourneySession, action: str, allowed: Sequence[str]) -> None:
    if session.status not in allowed:
        raise InvalidSessionTransition(
            f"session {session.pk} is {session.status}; it cannot be {action}"
        )


@transaction.atomic(durable=True)
def session_pause(*, session_id: int) -> JourneySession:
    session = _locked(session_id)
    _refuse(session, "paused", (SessionStatus.ACTIVE, SessionStatus.WAITING))
    write = _write_from(session)
    write.status = SessionStatus.PAUSED
    write.context["paused_from"] = session.status
    # A worker may be in the middle of this session's call: its lease stays, so a resume
    # does not let a second worker claim the session and send the same step again while
    # the first one is still waiting for the answer.
    write.is_lease_kept = True
    session_persist(write=write)
    return JourneySession.objects.get(pk=session_id)


@transaction.atomic(durable=True)
def session_resume(*, session_id: int) -> JourneySession:
    """A paused session goes back to waiting (if its wait is still ahead) or to work."""
    session = _locked(session_id)
    _refuse(session, "resumed", (SessionStatus.PAUSED,))
    write = _write_from(session)
    write.context.pop("paused_from", None)
    # The lease a worker held when the session was paused stays until it expires (see
    # session_pause); the claim waits for it, and the stalled-session schedule restarts the
    # session if that worker dropped it.
    write.is_lease_kept = True
    if session.wait_until is not None and session.context.get("wait_kind"):
        write.status = SessionStatus.WAITING
    else:
        write.status = SessionStatus.ACTIVE
        sessions_enqueue_advance(session_ids=[session.pk])
    session_persist(write=write)
    return JourneySession.objects.get(pk=session_id)


@transaction.atomic(durable=True)
def session_cancel(*, session_id: int, reason: str = "cancelled") -> JourneySession:
    session = _locked(session_id)
    _refuse(session, "cancelled", LIVE_STATUSES)
    write = _write_from(session)
    write.status = SessionStatus.CANCELLED
    write.ended_reason = reason[:200]
    write.wait_event = None
    write.wait_until = None
    write.is_finished = True
    session_persist(write=write)
    return JourneySession.objects.get(pk=session_id)


@transaction.atomic(durable=True)
def session_retry(*, session_id: int) -> int:
    """A failed session's journey again, from the node that failed, as a new session.

    Terminal states are final (J3), so a retry never revives the failed row: it starts a new
    session at the failed node with the failed session's variables.
    """
    session = _locked(session_id)
    _refuse(session, "retried", (SessionStatus.FAILED,))
    context: dict[str, Any] = {"source": "retry", "retry_of": session.pk}
    failed_step = (
        JourneyStep.objects.filter(session=session, node_id=session.current_node_id)
        .exclude(idempotency_key="")
        .order_by("-step_number")
        .first()
    )
    if failed_step is not None and failed_step.status != StepStatus.COMPLETED:
        # The failed call may have reached the receiver (a timeout, a lost answer): the
        # retry sends it again under the same key, so the receiver can recognise it.
        context["retry_idempotency_key"] = {
            "node_id": failed_step.node_id,
            "key": failed_step.idempotency_key,
        }
    return session_start_for_journey(
        journey=session.journey,
        contact_id=session.contact_id,
        variables=session.variables,
        context=context,
        start_node_id=session.current_node_id,
        is_reentry_checked=False,
    )


def _resume_write(session: JourneySession, flow: Flow, handle: str | None) -> SessionWrite:
    """The write that ends a wait: on to the node after the wait along `handle`."""
    write = _write_from(session)
    write.wait_event = None
    write.wait_filters = {}
    write.wait_until = None
    kind = write.context.pop("wait_kind", None)
    if kind == "retry":
        write.status = SessionStatus.ACTIVE  # the same step again
        return write
    next_node_id = flow.next_node_id(session.current_node_id, handle)
    if next_node_id is None:
        write.status = SessionStatus.COMPLETED
        suffix = f" for handle {handle!r}" if handle else ""
        write.ended_reason = f'no outgoing edge from node "{session.current_node_id}"{suffix}'
        write.is_finished = True
    else:
        write.status = SessionStatus.ACTIVE
        write.current_node_id = next_node_id
    return write


def sessions_resume_writes(
    sessions: Sequence[JourneySession], *, handle_for: dict[int, str | None]
) -> list[int]:
    """Persist the resumption of locked waiting sessions; returns those now active."""
    flows: dict[int, Flow] = {}
    writes = []
    for session in sessions:
        if session.journey_id not in flows:
            flows[session.journey_id] = _flow_of(session.journey)
        writes.append(_resume_write(session, flows[session.journey_id], handle_for[session.pk]))
    result = session_persist_many(writes=writes)
    return [
        write.session_id
        for write in writes
        if write.status == SessionStatus.ACTIVE and write.session_id in result.updated_session_ids
    ]


@dataclass(frozen=True)
class ResumeReport:
    resumed: int
    restarted_stalled: int


def sessions_resume_due(*, batch_size: int = 500, max_batches: int = 20) -> ResumeReport:
    """What the frequent schedule runs: wake sessions whose wait is over, restart stalled ones.

    Claims with `FOR UPDATE SKIP LOCKED` in batches, so several workers (or hosts) running
    it at once share the work instead of waiting on each other or doing it twice. A stalled
    session is active with an expired lease (its worker died) or with no worker for longer
    than JOURNEYS_STALLED_AFTER_SECONDS (its task was lost).
    """
    resumed = stalled = 0
    for _ in range(max_batches):
        with transaction.atomic(durable=True):
            now = timezone.now()
            due = list(
                JourneySession.objects.select_for_update(skip_locked=True, of=("self",))
                .select_related("journey")
                .filter(status=SessionStatus.WAITING, wait_until__lte=now)
                .order_by("wait_until", "id")[:batch_size]
            )
            handles: dict[int, str | None] = {
                session.pk: "timeout" if session.wait_event else None for session in due
            }
            active_ids = sessions_resume_writes(due, handle_for=handles) if due else []
            sessions_enqueue_advance(session_ids=active_ids)
            resumed += len(due)
        if len(due) < batch_size:
            break
    for _ in range(max_batches):
        with transaction.atomic(durable=True):
            now = timezone.now()
            stalled_before = now - timedelta(seconds=int(settings.JOURNEYS_STALLED_AFTER_SECONDS))
            rows = list(
                JourneySession.objects.select_for_update(skip_locked=True)
                .filter(status=SessionStatus.ACTIVE)
                .filter(
                    Q(lease_until__lt=now)
                    | Q(lease_until__isnull=True, updated_at__lt=stalled_before)
                )
                .order_by("id")[:batch_size]
            )
            writes = [_write_from(session) for session in rows]
            result = session_persist_many(writes=writes)
            ids = sorted(result.updated_session_ids)
            sessions_enqueue_advance(session_ids=ids)
            stalled += len(ids)
        if len(rows) < batch_size:
            break
    return ResumeReport(resumed=resumed, restarted_stalled=stalled)
