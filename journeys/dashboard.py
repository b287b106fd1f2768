"""The journeys tile of the operator dashboard (see `evoflow.dashboard` for the frame): sessions
by status, overdue waits and contacts not yet enriched. Registered by `JourneysConfig.ready()`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlencode

from evoflow.dashboard import (
    AreaHealth,
    Figure,
    TileRequest,
    TileSpec,
    ViewPermission,
    changelist_url,
    column_value_estimates,
    is_big_table,
    may_view_everything,
)
from evoflow.db import table_row_estimate
from journeys import selectors as journeys_selectors
from journeys.models import LIVE_STATUSES, Contact, JourneySession, SessionStatus

# A status the statistics do not list is rare, but not necessarily absent: it is counted
# exactly up to this many rows, "10,000+" beyond.
RARE_STATUS_COUNT_LIMIT = 10_000


@dataclass(frozen=True)
class JourneysTile:
    health: AreaHealth
    # None: the user may not view that model (sessions, contacts).
    sessions_by_status: tuple[Figure, ...] | None
    overdue: Figure | None
    stub_contacts: Figure | None
    area: str = "journeys"
    title: str = "Journeys"


def sessions_by_status() -> tuple[Figure, ...]:
    """A figure per status that has sessions."""
    sessions = changelist_url("journeys", "journeysession")
    rows = table_row_estimate(JourneySession)
    live = [str(status) for status in LIVE_STATUSES]
    estimated: set[str] = set()
    capped: set[str] = set()
    if rows is not None and is_big_table(rows):
        # Live sessions are counted exactly through their partial indexes; the finished ones,
        # most of a big table, come from the statistics. A finished status the statistics do
        # not list is rare: counted through the ended sessions' index, up to a limit.
        counts = journeys_selectors.sessions_count_by_status(statuses=live)
        estimates = column_value_estimates(JourneySession, "status", rows=rows)
        ended = [status for status in SessionStatus.values if status not in live]
        estimated = {status for status in ended if status in estimates}
        counts |= {status: estimates[status] for status in estimated}
        rare = journeys_selectors.sessions_count_by_status_up_to(
            statuses=[status for status in ended if status not in estimated],
            limit=RARE_STATUS_COUNT_LIMIT + 1,
        )
        capped = {status for status, count in rare.items() if count > RARE_STATUS_COUNT_LIMIT}
        counts |= {status: min(count, RARE_STATUS_COUNT_LIMIT) for status, count in rare.items()}
    else:
        counts = journeys_selectors.sessions_count_by_status()
    return tuple(
        Figure(
            key=f"sessions-{status}",
            label=str(label),
            value=counts[status],
            url=f"{sessions}?{urlencode({'status__exact': status})}",
            is_estimate=status in estimated,
            is_capped=status in capped,
            is_problem=status == SessionStatus.FAILED,
        )
        for status, label in SessionStatus.choices
        if counts.get(status)
    )


def journeys_tile(
    *, now: datetime, health: AreaHealth, may_view: ViewPermission = may_view_everything
) -> JourneysTile:
    sees_sessions = may_view(JourneySession)
    return JourneysTile(
        health=health,
        sessions_by_status=sessions_by_status() if sees_sessions else None,
        overdue=Figure(
            key="sessions-overdue",
            label="overdue waits",
            label_one="overdue wait",
            value=journeys_selectors.sessions_overdue(now=now).count(),
            url=changelist_url("journeys", "journeysession", overdue="yes"),
            is_problem=True,
        )
        if sees_sessions
        else None,
        stub_contacts=Figure(
            key="stub-contacts",
            label="stub contacts, not yet enriched",
            label_one="stub contact, not yet enriched",
            value=journeys_selectors.contacts_not_enriched().count(),
            url=changelist_url("journeys", "contact", enrichment="stub"),
        )
        if may_view(Contact)
        else None,
    )


def journeys_tile_build(request: TileRequest) -> JourneysTile:
    return journeys_tile(now=request.now, health=request.health, may_view=request.may_view)


def tile_spec() -> TileSpec:
    return TileSpec(
        area="journeys", order=10, models=(JourneySession, Contact), build=journeys_tile_build
    )
