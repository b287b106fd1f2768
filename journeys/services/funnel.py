"""The persistence funnel (J1): every journey-session write goes through this module.

Each write, alone or in a batch, is ONE SQL statement in the caller's transaction: it first
makes sure the contact row exists (`INSERT INTO journeys_contact (id) ... ON CONFLICT (id) DO
NOTHING`, which never touches an enriched contact), then inserts or updates the session, then
records the step row. One statement means one round trip per batch of node steps, and the stub
insert commits or rolls back together with the session write it serves.

Guards in the UPDATE (expected step count, expected statuses, lease token) make a write from a
worker that lost its session (cancelled, paused, taken over after a crash) a no-op that the
caller sees, instead of a lost update. The status trigger (J3) remains the last line.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction

from evoflow.errors import DomainError
from evoflow.jsonvalues import NOT_FINITE, NUL, UnstorableJson, jsonb_text
from evoflow.tasks import enqueue_after_commit
from journeys.models import LIVE_STATUSES


class JourneyError(DomainError):
    """A domain error of the journeys app; each subclass has its stable code and status."""

    code = "journey_error"


class InvalidContactId(JourneyError):
    code = "invalid_contact_id"


class SessionAlreadyLive(JourneyError):
    code = "session_already_live"
    status = 409


class ReentryNotAllowed(JourneyError):
    code = "reentry_not_allowed"
    status = 409


class JourneyInactive(JourneyError):
    code = "journey_inactive"
    status = 409


class InvalidVariables(JourneyError):
    code = "invalid_variables"


class InvalidSessionTransition(JourneyError):
    code = "invalid_session_transition"
    status = 409


class JourneyNotFound(JourneyError):
    code = "journey_not_found"
    status = 404


class SessionNotFound(JourneyError):
    code = "session_not_found"
    status = 404


class InvalidFlow(JourneyError):
    """The flow's every problem, in `messages`; the API answers them as `errors.flow`."""

    code = "invalid_flow"

    def __init__(self, detail: str, messages: list[str]) -> None:
        super().__init__(detail, extra={"errors": {"flow": messages}})
        self.messages = messages


def contact_id_parse(value: Any) -> uuid.UUID:
    """The contact id as a UUID; anything else is a loud InvalidContactId, never a skip."""
    if isinstance(value, uuid.UUID):
        return value
    if not isinstance(value, str):
        raise InvalidContactId(f"contact id must be a UUID string, got {type(value).__name__}")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidContactId(f"contact id {value[:80]!r} is not a UUID") from None


class UnstorableValue(UnstorableJson):
    """A value jsonb cannot hold (NaN, an infinity, a NUL character)."""


# How a session's error names what jsonb refused.
_UNSTORABLE_MESSAGES = {
    NOT_FINITE: "a number is not finite (NaN or an infinity)",
    NUL: "a string contains a NUL character (\\u0000)",
}


def _json(value: Any) -> str | None:
    """The value as JSON text for jsonb; UnstorableValue before anything is sent to the
    database, so the engine can fail the one session that holds it."""
    if value is None:
        return None
    try:
        return jsonb_text(value)
    except UnstorableJson as error:
        raise UnstorableValue(error.reason, _UNSTORABLE_MESSAGES[error.reason]) from error


@dataclass
class StepWrite:
    step_number: int
    node_id: str
    node_type: str
    status: str
    attempt: int = 1
    idempotency_key: str = ""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_ms: float | None = None
    result: Any = None
    error: str = ""


@dataclass
class SessionWrite:
    """The full new state of one session (and optionally its step row), with its guards."""

    session_id: int
    contact_id: uuid.UUID
    status: str
    current_node_id: str
    step_count: int
    variables: dict[str, Any]
    context: dict[str, Any]
    expected_statuses: Sequence[str]
    expected_step_count: int | None = None
    lease_token: uuid.UUID | None = None
    wait_event: str | None = None
    wait_filters: dict[str, Any] = field(default_factory=dict)
    wait_until: datetime | None = None
    error: Any = None
    ended_reason: str = ""
    is_finished: bool = False
    is_lease_released: bool = True
    # Leave the worker's lease (token and expiry) exactly as it is: pause and resume, so a
    # worker still in the middle of a call keeps the session until its lease runs out.
    is_lease_kept: bool = False
    step: StepWrite | None = None


@dataclass(frozen=True)
class PersistResult:
    updated_session_ids: set[int]
    created_contact_ids: list[uuid.UUID]


_PERSIST_SQL = """
WITH input AS (
    SELECT * FROM unnest(
        %(session_id)s::bigint[], %(contact_id)s::uuid[], %(expected_step)s::int[],
        %(expected_statuses)s::text[], %(lease_token)s::uuid[], %(status)s::text[],
        %(current_node_id)s::text[], %(step_count)s::int[], %(variables)s::text[],
        %(context)s::text[], %(wait_event)s::text[], %(wait_filters)s::text[],
        %(wait_until)s::timestamptz[], %(error)s::text[], %(ended_reason)s::text[],
        %(is_finished)s::boolean[], %(is_lease_released)s::boolean[], %(is_lease_kept)s::boolean[],
        %(step_number)s::int[], %(node_id)s::text[], %(node_type)s::text[],
        %(step_status)s::text[], %(attempt)s::int[], %(idempotency_key)s::text[],
        %(step_started_at)s::timestamptz[], %(step_finished_at)s::timestamptz[],
        %(duration_ms)s::float8[], %(result)s::text[], %(step_error)s::text[]
    ) AS t(
        session_id, contact_id, expected_step, expected_statuses, lease_token, status,
        current_node_id, step_count, variables, context, wait_event, wait_filters, wait_until,
        error, ended_reason, is_finished, is_lease_released, is_lease_kept, step_number,
        node_id, node_type,
        step_status, attempt, idempotency_key, step_started_at, step_finished_at, duration_ms,
        result, step_error
    )
),
stubs AS (
    INSERT INTO journeys_contact (id)
    SELECT DISTINCT contact_id FROM input ORDER BY contact_id
    ON CONFLICT (id) DO NOTHING
    RETURNING id
),
updated AS (
    UPDATE journeys_journeysession AS s SET
        status = i.status,
        current_node_id = i.current_node_id,
        step_count = i.step_count,
        variables = i.variables::jsonb,
        context = i.context::jsonb,
        wait_event = i.wait_event,
        wait_filters = i.wait_filters::jsonb,
        wait_until = i.wait_until,
        error = i.error::jsonb,
        ended_reason = i.ended_reason,
        finished_at = CASE WHEN i.is_finished THEN now() ELSE s.finished_at END,
        lease_token = CASE WHEN i.is_lease_kept THEN s.lease_token
                           WHEN i.is_lease_released THEN NULL ELSE s.lease_token END,
        lease_until = CASE WHEN i.is_lease_kept THEN s.lease_until
                           WHEN i.is_lease_released THEN NULL
                           ELSE now() + make_interval(secs => %(lease_seconds)s) END,
        updated_at = now()
    FROM input AS i
    WHERE s.id = i.session_id
      AND s.contact_id = i.contact_id
      AND (i.expected_step IS NULL OR s.step_count = i.expected_step)
      AND s.status = ANY (string_to_array(i.expected_statuses, ','))
      AND (i.lease_token IS NULL OR s.lease_token = i.lease_token)
    RETURNING s.id
),
steps AS (
    INSERT INTO journeys_journeystep (
        session_id, step_number, node_id, node_type, status, attempt, idempotency_key,
        started_at, finished_at, duration_ms, result, error
    )
    SELECT i.session_id, i.step_number, i.node_id, i.node_type, i.step_status, i.attempt,
           i.idempotency_key, coalesce(i.step_started_at, now()), i.step_finished_at,
           i.duration_ms, i.result::jsonb, i.step_error
    FROM input AS i JOIN updated AS u ON u.id = i.session_id
    WHERE i.step_number IS NOT NULL
    ON CONFLICT (session_id, step_number) DO UPDATE SET
        status = EXCLUDED.status,
        attempt = EXCLUDED.attempt,
        finished_at = EXCLUDED.finished_at,
        duration_ms = EXCLUDED.duration_ms,
        result = EXCLUDED.result,
        error = EXCLUDED.error
    RETURNING session_id
)
SELECT (SELECT coalesce(array_agg(id), '{}') FROM stubs),
       (SELECT coalesce(array_agg(id), '{}') FROM updated),
       (SELECT count(*) FROM steps)
"""


def _lease_seconds() -> float:
    return float(settings.JOURNEYS_SESSION_LEASE_SECONDS)


def session_persist_many(*, writes: Sequence[SessionWrite]) -> PersistResult:
    """Apply session writes (at most one per session) in one statement; see the module doc.

    Runs in the caller's transaction (or its own, in autocommit). Returns the sessions really
    updated (a guard that did not hold leaves its session out) and the contact stubs created.
    """
    if not writes:
        return PersistResult(set(), [])
    ids = [write.session_id for write in writes]
    if len(set(ids)) != len(ids):
        raise ValueError("at most one write per session in one persist")
    steps = [write.step for write in writes]
    params: dict[str, Any] = {
        "session_id": ids,
        "contact_id": [write.contact_id for write in writes],
        "expected_step": [write.expected_step_count for write in writes],
        "expected_statuses": [
            ",".join(str(s) for s in write.expected_statuses) for write in writes
        ],
        "lease_token": [write.lease_token for write in writes],
        "status": [str(write.status) for write in writes],
        "current_node_id": [write.current_node_id for write in writes],
        "step_count": [write.step_count for write in writes],
        "variables": [_json(write.variables) for write in writes],
        "context": [_json(write.context) for write in writes],
        "wait_event": [write.wait_event or "" for write in writes],
        "wait_filters": [_json(write.wait_filters) for write in writes],
        "wait_until": [write.wait_until for write in writes],
        "error": [_json(write.error) for write in writes],
        "ended_reason": [write.ended_reason for write in writes],
        "is_finished": [write.is_finished for write in writes],
        "is_lease_released": [write.is_lease_released for write in writes],
        "is_lease_kept": [write.is_lease_kept for write in writes],
        "step_number": [step.step_number if step else None for step in steps],
        "node_id": [step.node_id if step else None for step in steps],
        "node_type": [step.node_type if step else None for step in steps],
        "step_status": [str(step.status) if step else None for step in steps],
        "attempt": [step.attempt if step else None for step in steps],
        "idempotency_key": [step.idempotency_key if step else None for step in steps],
        "step_started_at": [step.started_at if step else None for step in steps],
        "step_finished_at": [step.finished_at if step else None for step in steps],
        "duration_ms": [step.duration_ms if step else None for step in steps],
        "result": [_json(step.result) if step else None for step in steps],
        "step_error": [step.error if step else None for step in steps],
        "lease_seconds": _lease_seconds(),
    }
    with connection.cursor() as cursor:
        cursor.execute(_PERSIST_SQL, params)
        row = cursor.fetchone()
    assert row is not None
    created, updated, _steps = row
    return PersistResult(updated_session_ids=set(updated), created_contact_ids=list(created))


def session_persist(*, write: SessionWrite) -> bool:
    """One session write through the funnel; False when a guard did not hold."""
    result = session_persist_many(writes=[write])
    contacts_enrichment_enqueue(result.created_contact_ids)
    return write.session_id in result.updated_session_ids


@dataclass(frozen=True)
class NewSession:
    journey_id: int
    contact_id: uuid.UUID
    current_node_id: str
    variables: dict[str, Any]
    context: dict[str, Any] = field(default_factory=dict)


_INSERT_SQL = """
WITH input AS (
    SELECT * FROM unnest(
        %(journey_id)s::bigint[], %(contact_id)s::uuid[], %(current_node_id)s::text[],
        %(variables)s::text[], %(context)s::text[], %(ordinal)s::int[]
    ) AS t(journey_id, contact_id, current_node_id, variables, context, ordinal)
),
stubs AS (
    INSERT INTO journeys_contact (id)
    SELECT DISTINCT contact_id FROM input ORDER BY contact_id
    ON CONFLICT (id) DO NOTHING
    RETURNING id
),
inserted AS (
    INSERT INTO journeys_journeysession (
        journey_id, contact_id, status, current_node_id, variables, context
    )
    SELECT journey_id, contact_id, 'active', current_node_id, variables::jsonb, context::jsonb
    FROM input ORDER BY ordinal
    {on_conflict}
    RETURNING id, journey_id, contact_id
)
SELECT (SELECT coalesce(array_agg(id), '{{}}') FROM stubs),
       (SELECT coalesce(array_agg(id ORDER BY id), '{{}}') FROM inserted),
       (SELECT coalesce(array_agg(journey_id ORDER BY id), '{{}}') FROM inserted),
       (SELECT coalesce(array_agg(contact_id ORDER BY id), '{{}}') FROM inserted)
"""

_LIVE_PREDICATE = "status IN ({})".format(", ".join(f"'{status}'" for status in LIVE_STATUSES))


@dataclass(frozen=True)
class InsertResult:
    # (journey id, contact id) -> new session id
    session_ids: dict[tuple[int, uuid.UUID], int]
    created_contact_ids: list[uuid.UUID]


def session_insert_many(*, sessions: Sequence[NewSession], skip_live: bool = False) -> InsertResult:
    """Insert new sessions with their contact stubs in one statement.

    With `skip_live` a pair that already has a live session is left out (bulk enrollment);
    without it the partial unique constraint raises, and the caller turns that into
    SessionAlreadyLive. Either way the statement's stubs go with it.
    """
    if not sessions:
        return InsertResult({}, [])
    on_conflict = (
        f"ON CONFLICT (journey_id, contact_id) WHERE {_LIVE_PREDICATE} DO NOTHING"
        if skip_live
        else ""
    )
    params: dict[str, Any] = {
        "journey_id": [new.journey_id for new in sessions],
        "contact_id": [new.contact_id for new in sessions],
        "current_node_id": [new.current_node_id for new in sessions],
        "variables": [_json(new.variables) for new in sessions],
        "context": [_json(new.context) for new in sessions],
        "ordinal": list(range(len(sessions))),
    }
    with connection.cursor() as cursor:
        cursor.execute(_INSERT_SQL.format(on_conflict=on_conflict), params)
        row = cursor.fetchone()
    assert row is not None
    created, ids, journey_ids, contact_ids = row
    return InsertResult(
        session_ids={
            (journey_id, contact_id): session_id
            for session_id, journey_id, contact_id in zip(
                ids, journey_ids, contact_ids, strict=True
            )
        },
        created_contact_ids=list(created),
    )


def session_insert(*, new: NewSession) -> int:
    """Insert one session through the funnel; SessionAlreadyLive on a live duplicate."""
    try:
        with transaction.atomic():
            result = session_insert_many(sessions=[new])
    except IntegrityError as error:
        constraint = getattr(getattr(error.__cause__, "diag", None), "constraint_name", "") or ""
        if constraint == "journeys_one_live_session_per_contact":
            raise SessionAlreadyLive(
                f"contact {new.contact_id} already has a live session in journey {new.journey_id}"
            ) from error
        raise
    contacts_enrichment_enqueue(result.created_contact_ids)
    return result.session_ids[(new.journey_id, new.contact_id)]


# The task that enriches new stubs from the CRM (journeys/tasks.py).
CONTACTS_ENRICH_TASK = "journeys.tasks.contacts_enrich_task"


def contacts_enrichment_enqueue(contact_ids: Sequence[uuid.UUID]) -> None:
    """Queue the CRM enrichment of new stubs (after commit), unless switched off."""
    if not contact_ids or not settings.JOURNEYS_ENRICH_CONTACTS:
        return
    enqueue_after_commit(CONTACTS_ENRICH_TASK, [str(contact_id) for contact_id in contact_ids])
