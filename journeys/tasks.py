"""django-q2 entry points of the journeys app: thin, idempotent, ids in, services called."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from journeys import services

# The scheduled entry point's dotted path, for the schedule JourneysConfig.ready() registers
# (the other tasks are named beside the services that enqueue them).
SESSIONS_RESUME_DUE_TASK = "journeys.tasks.sessions_resume_due_task"


def sessions_advance_task(session_ids: list[int]) -> dict[str, Any]:
    """Advance sessions; delivered twice, the second run finds them leased or moved on."""
    report = services.sessions_advance(session_ids=session_ids)
    return {key: value for key, value in asdict(report).items() if key != "session_ids_handed_over"}


def sessions_resume_due_task() -> dict[str, int]:
    """The frequent schedule: wake due sessions, restart stalled ones."""
    return asdict(services.sessions_resume_due())


def contacts_enrich_task(contact_ids: list[str]) -> int:
    return services.contacts_enrich(contact_ids=contact_ids)
