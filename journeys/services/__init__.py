"""Every write of the journeys app. Session writes all go through `funnel` (J1)."""

from journeys.services.contacts import contact_enrich, contacts_enrich
from journeys.services.engine import sessions_advance, sessions_enqueue_advance
from journeys.services.events import ContactEventResult, contact_event_ingest
from journeys.services.funnel import (
    InvalidContactId,
    InvalidFlow,
    InvalidSessionTransition,
    JourneyError,
    JourneyInactive,
    JourneyNotFound,
    ReentryNotAllowed,
    SessionAlreadyLive,
    SessionNotFound,
    contact_id_parse,
    session_persist,
    session_persist_many,
)
from journeys.services.journeys import (
    journey_create,
    journey_create_in_transaction,
    journey_update,
    journey_update_in_transaction,
    journey_validate,
)
from journeys.services.sessions import (
    session_cancel,
    session_pause,
    session_resume,
    session_retry,
    session_start,
    session_start_in_transaction,
    sessions_resume_due,
    sessions_start_many,
)

__all__ = [
    "ContactEventResult",
    "InvalidContactId",
    "InvalidFlow",
    "InvalidSessionTransition",
    "JourneyError",
    "JourneyInactive",
    "JourneyNotFound",
    "ReentryNotAllowed",
    "SessionAlreadyLive",
    "SessionNotFound",
    "contact_enrich",
    "contact_event_ingest",
    "contact_id_parse",
    "contacts_enrich",
    "journey_create",
    "journey_create_in_transaction",
    "journey_update",
    "journey_update_in_transaction",
    "journey_validate",
    "session_cancel",
    "session_pause",
    "session_persist",
    "session_persist_many",
    "session_resume",
    "session_retry",
    "session_start",
    "session_start_in_transaction",
    "sessions_advance",
    "sessions_enqueue_advance",
    "sessions_resume_due",
    "sessions_start_many",
]
