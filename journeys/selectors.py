"""Reads of the journeys app."""

from __future__ import annotations

import uuid

from django.db.models import Count, IntegerField, OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce

from journeys.models import LIVE_STATUSES, Journey, JourneySession, JourneyStep, SessionStatus


def journey_list() -> QuerySet[Journey]:
    return Journey.objects.all()


def journeys_with_live_session_count(journeys: QuerySet[Journey]) -> QuerySet[Journey]:
    """`journeys` with `live_session_count` (active, waiting or paused sessions).

    A correlated subquery rather than a join with GROUP BY: it is evaluated only for the rows
    a page shows, and the partial unique index on live sessions answers it.
    """
    live = (
        JourneySession.objects.filter(journey=OuterRef("pk"), status__in=LIVE_STATUSES)
        .order_by()
        .values("journey")
        .annotate(total=Count("id"))
        .values("total")
    )
    return journeys.annotate(
        live_session_count=Coalesce(Subquery(live, output_field=IntegerField()), 0)
    )


def journey_get(*, journey_id: int) -> Journey | None:
    return Journey.objects.filter(pk=journey_id).first()


def session_list(
    *,
    journey_id: int | None = None,
    contact_id: uuid.UUID | None = None,
    status: str | None = None,
) -> QuerySet[JourneySession]:
    sessions = JourneySession.objects.all()
    if journey_id is not None:
        sessions = sessions.filter(journey_id=journey_id)
    if contact_id is not None:
        sessions = sessions.filter(contact_id=contact_id)
    if status:
        sessions = sessions.filter(status=status)
    return sessions


def session_get(*, session_id: int) -> JourneySession | None:
    return JourneySession.objects.filter(pk=session_id).first()


def session_steps(*, session_id: int) -> QuerySet[JourneyStep]:
    return JourneyStep.objects.filter(session_id=session_id).order_by("step_number")


def session_status_counts(*, journey_id: int) -> dict[str, int]:
    counts = dict.fromkeys(SessionStatus.values, 0)
    rows = (
        JourneySession.objects.filter(journey_id=journey_id)
        .values("status")
        .order_by()
        .annotate(total=Count("id"))
    )
    for row in rows:
        counts[row["status"]] = row["total"]
    return counts
