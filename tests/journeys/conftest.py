"""Fixtures of the journeys tests: an in-process CRM simulator and a worker stand-in."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from journeys import crm
from journeys.models import JourneySession, SessionStatus
from journeys.services import sessions_advance
from journeys.simulator import CrmSimulator
from tests.core.factories import role_user


@pytest.fixture
def crm_simulator(settings) -> Iterator[CrmSimulator]:
    """A CRM simulator over real HTTP, and the settings pointing the client at it."""
    simulator = CrmSimulator(seed=7)
    with simulator.running() as base_url:
        settings.CRM_BASE_URL = base_url
        crm._client_for.cache_clear()
        yield simulator
    crm._client_for.cache_clear()


@pytest.fixture
def user(db):
    """The journeys tests' API user: an operator, who may view, add and change journeys and
    sessions, http_request nodes included (what other roles may: tests/core/
    test_permission_matrix.py and tests/journeys/test_permissions.py)."""
    return role_user("operator")


@pytest.fixture(autouse=True)
def _no_enrichment_by_default(settings) -> None:
    # Enrichment tasks go to the queue; tests that want enrichment run it explicitly.
    settings.JOURNEYS_ENRICH_CONTACTS = False


def advance_all(max_rounds: int = 50) -> int:
    """What the workers would do: advance every active session until none can move. Returns
    the number of steps executed."""
    steps = 0
    for _ in range(max_rounds):
        ids = list(
            JourneySession.objects.filter(status=SessionStatus.ACTIVE).values_list("id", flat=True)
        )
        if not ids:
            return steps
        report = sessions_advance(session_ids=ids)
        steps += report.steps
        if report.claimed == 0:
            return steps
    return steps
