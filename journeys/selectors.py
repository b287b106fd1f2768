"""Reads of the journeys app."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta

from django.db import connection
from django.db.models import Count, IntegerField, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce, Now

from evoflow.db import counts_by_value
from journeys.models import (
    LIVE_STATUSES,
    Contact,
    Journey,
    JourneySession,
    JourneyStep,
    SessionStatus,
)

# How late a live session may be before it counts as overdue: the resume schedule runs every
# minute, so a few minutes late means the schedule or the workers are not keeping up.
OVERDUE_MINUTES = 5


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
    return counts_by_value(
        JourneySession.objects.filter(journey_id=journey_id), "status", SessionStatus.values
    )


def sessions_count_by_status(*, statuses: Iterable[str] | None = None) -> dict[str, int]:
    """Sessions per status over the whole table (only `statuses`, when given), zeros included.

    Limited to the live statuses the count is served by their partial indexes; the dashboard
    asks for the terminal ones only while the table is small enough to count.
    """
    return counts_by_value(JourneySession.objects.all(), "status", statuses or SessionStatus.values)


def contacts_not_enriched() -> QuerySet[Contact]:
    """Contact stubs never filled from the CRM: the admin's "stub, not yet enriched" filter."""
    return Contact.objects.filter(crm_synced_at__isnull=True)


def sessions_overdue(*, now: datetime | None = None) -> QuerySet[JourneySession]:
    """Live sessions the check `journeys.sessions_overdue` counts, as of `now`.

    Waiting sessions more than OVERDUE_MINUTES past their resume time, and active ones whose
    lease (or, without one, last update) is that old: the worker that held them is gone. The
    check runs this very query (compiled); without `now`, the database's clock decides.
    """
    current: datetime | Now = now if now is not None else Now()
    cutoff = current - timedelta(minutes=OVERDUE_MINUTES)
    # "Lease, or without one last update, older than the cutoff", spelled so that each branch
    # is a range of a partial index (the due and active sessions' indexes) rather than an
    # expression over every active session.
    return JourneySession.objects.filter(
        Q(status=SessionStatus.WAITING, wait_until__lt=cutoff)
        | Q(status=SessionStatus.ACTIVE, lease_until__lt=cutoff)
        | Q(status=SessionStatus.ACTIVE, lease_until__isnull=True, updated_at__lt=cutoff)
    )


def sessions_count_by_status_up_to(*, statuses: Iterable[str], limit: int) -> dict[str, int]:
    """Sessions per status, each count stopping at `limit` rows: one query, bounded however big
    the table is (a count of `limit` means "at least that many").

    Each status is compared with a value of its own, not a joined column, so the planner can
    match it to a status's partial index (the ended sessions' index for the terminal ones).
    """
    wanted = [str(status) for status in statuses]
    if not wanted:
        return {}
    table = connection.ops.quote_name(JourneySession._meta.db_table)
    branch = (
        f"SELECT %s, count(*) FROM (SELECT 1 FROM {table} WHERE status = %s LIMIT %s) AS capped"
    )
    with connection.cursor() as cursor:
        cursor.execute(
            " UNION ALL ".join([branch] * len(wanted)),
            [value for status in wanted for value in (status, status, limit)],
        )
        return dict(cursor.fetchall())


def session_counts_by_node(
    *, journey_id: int, failed_since: datetime
) -> dict[str, tuple[int, int]]:
    """Per node of a journey: (live sessions at it, sessions that failed at it since
    `failed_since`), one query; nodes without either are left out."""
    rows = (
        JourneySession.objects.filter(journey_id=journey_id)
        .filter(
            Q(status__in=LIVE_STATUSES)
            | Q(status=SessionStatus.FAILED, finished_at__gte=failed_since)
        )
        .values("current_node_id")
        .annotate(
            live=Count("id", filter=Q(status__in=LIVE_STATUSES)),
            failed=Count("id", filter=Q(status=SessionStatus.FAILED)),
        )
    )
    return {row["current_node_id"]: (row["live"], row["failed"]) for row in rows}
