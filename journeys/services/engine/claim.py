"""Claiming sessions for a run, and loading what their nodes read.

`sessions_claim` takes the lease of the active sessions among the ids that no one else holds
(one UPDATE ... FOR UPDATE SKIP LOCKED); `flows_load` and `contacts_load` then read the claimed
sessions' flows and contacts once for the whole run; `contacts_enrich_before` fills in stub
contacts from the CRM before a node reads them.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.db import connection, transaction

from evoflow.http import UpstreamUnavailable
from journeys.flows.flow import Flow, FlowInvalid, Node, flow_parse
from journeys.models import Contact
from journeys.services.contacts import contact_enrich
from journeys.services.engine.context import AdvanceRun, RunningSession

logger = logging.getLogger(__name__)

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


def sessions_claim(session_ids: Sequence[int], token: uuid.UUID) -> list[RunningSession]:
    """Lease the claimable sessions among `session_ids` to `token`, in id order."""
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


def flows_load(sessions: Sequence[RunningSession]) -> dict[int, Flow | FlowInvalid]:
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


def contacts_load(
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


def _next_nodes_reading_contact(
    run: AdvanceRun, sessions: Sequence[RunningSession]
) -> dict[uuid.UUID, Node]:
    nodes: dict[uuid.UUID, Node] = {}
    for session in sessions:
        flow = run.flow_of(session)
        if isinstance(flow, Flow):
            node = flow.nodes.get(session.current_node_id)
            if node is not None and node.reads_contact:
                nodes[session.contact_id] = node
    return nodes


def contacts_enrich_before(run: AdvanceRun, sessions: Sequence[RunningSession]) -> None:
    """Enrich the stubs whose next node reads `contact.*`, outside any transaction.

    A contact that exists only in the CRM would otherwise run its first nodes with empty
    fields (the enrichment task runs on its own schedule). A CRM that is down or does not
    know the contact leaves the stub as it is: the session goes on with it.
    """
    wanted = [
        contact_id
        for contact_id, node in _next_nodes_reading_contact(run, sessions).items()
        if node.reads_contact and contact_id in run.stub_ids
    ]
    if not wanted or not settings.JOURNEYS_ENRICH_CONTACTS:
        return
    run.stub_ids.difference_update(wanted)  # one attempt per task run
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
    run.contacts.update(contacts_load(wanted, set()))
