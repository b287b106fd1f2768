"""Contact events: start the journeys they trigger, resume the sessions waiting for them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from django.db import transaction

from journeys.flows.flow import FlowInvalid, properties_match, triggers_parse
from journeys.models import Journey, JourneySession, ProcessedContactEvent, SessionStatus
from journeys.services.engine import sessions_enqueue_advance
from journeys.services.funnel import JourneyError, contact_id_parse
from journeys.services.sessions import session_start_for_journey, sessions_resume_writes


@dataclass
class ContactEventResult:
    is_duplicate: bool = False
    started_session_ids: list[int] = field(default_factory=list)
    resumed_session_ids: list[int] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)


@transaction.atomic(durable=True)
def contact_event_ingest(
    *,
    name: str,
    contact_id: Any,
    properties: dict[str, Any] | None = None,
    message_id: str | None = None,
) -> ContactEventResult:
    """Handle one contact event; a `message_id` seen before makes the call a no-op.

    The processed-id row, the new sessions and the resumed ones commit together, so a
    failure leaves nothing half done and the retried event is processed afresh.
    """
    contact_uuid = contact_id_parse(contact_id)
    properties = properties or {}
    if message_id:
        processed, created = ProcessedContactEvent.objects.get_or_create(
            message_id=message_id, defaults={"name": name, "contact_id": contact_uuid}
        )
        if not created:
            stored = dict(processed.result or {})
            return ContactEventResult(
                is_duplicate=True,
                started_session_ids=list(stored.get("started_session_ids", [])),
                resumed_session_ids=list(stored.get("resumed_session_ids", [])),
                skipped=list(stored.get("skipped", [])),
            )

    result = ContactEventResult()
    for journey in Journey.objects.filter(is_active=True).order_by("id"):
        try:
            triggers = triggers_parse(journey.triggers)
        except FlowInvalid:
            continue
        if not any(
            trigger.event == name and properties_match(trigger.filters, properties)
            for trigger in triggers
        ):
            continue
        try:
            session_id = session_start_for_journey(
                journey=journey,
                contact_id=contact_uuid,
                variables={"event": {"name": name, "properties": properties}},
                context={"source": "event", "event": name},
            )
        except JourneyError as error:
            result.skipped.append({"journey_id": journey.pk, "code": error.code})
        else:
            result.started_session_ids.append(session_id)

    waiting = [
        session
        for session in JourneySession.objects.select_for_update(of=("self",))
        .select_related("journey")
        .filter(contact_id=contact_uuid, status=SessionStatus.WAITING, wait_event=name)
        .order_by("id")
        if properties_match(session.wait_filters or {}, properties)
    ]
    for session in waiting:
        session.variables = {
            **session.variables,
            "event": {"name": name, "properties": properties},
        }
    active_ids = sessions_resume_writes(waiting, handle_for={s.pk: "event" for s in waiting})
    result.resumed_session_ids = [session.pk for session in waiting]
    sessions_enqueue_advance(session_ids=active_ids)

    if message_id:
        ProcessedContactEvent.objects.filter(message_id=message_id).update(result=asdict(result))
    return result
