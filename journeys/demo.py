"""Demo data: a welcome journey with sessions for a few demo contacts (from the CRM simulator).

The contacts exist only in the CRM (the local simulator derives them from their ids), so the
demo shows the funnel creating stubs and the enrichment task filling them in.
"""

from __future__ import annotations

import uuid
from typing import Any

from evoflow.demo import DemoSeedContext
from journeys import services
from journeys.models import Journey

DEMO_JOURNEY_NAME = "Demo: welcome journey"
_NAMESPACE = uuid.UUID("6f1c1a52-1d33-4c8e-9a55-8d3d0f2f6c10")
DEMO_CONTACT_IDS = tuple(str(uuid.uuid5(_NAMESPACE, f"demo-contact-{n}")) for n in range(1, 6))


def demo_flow() -> dict[str, Any]:
    return {
        "nodes": [
            {"id": "start", "type": "entry"},
            {
                "id": "welcome",
                "type": "send_message",
                "config": {"conversation_id": "demo-1", "content": "Welcome, {{contact.name}}!"},
            },
            {"id": "tag", "type": "add_label", "config": {"label": "welcomed"}},
            {"id": "pause", "type": "wait", "config": {"minutes": 2}},
            {
                "id": "await_order",
                "type": "wait_for_event",
                "config": {"event": "ordered", "timeout_seconds": 86400},
            },
            {
                "id": "big_order",
                "type": "condition",
                "config": {
                    "field": "variables.event.properties.total",
                    "operator": "greater_than",
                    "value": 100,
                },
            },
            {"id": "vip", "type": "update_contact", "config": {"custom_attributes": {"vip": True}}},
            {"id": "done", "type": "exit", "config": {"reason": "ordered"}},
            {"id": "no_order", "type": "exit", "config": {"reason": "no order within a day"}},
        ],
        "edges": [
            {"source": "start", "target": "welcome"},
            {"source": "welcome", "target": "tag"},
            {"source": "tag", "target": "pause"},
            {"source": "pause", "target": "await_order"},
            {"source": "await_order", "target": "big_order", "handle": "event"},
            {"source": "await_order", "target": "no_order", "handle": "timeout"},
            {"source": "big_order", "target": "vip", "handle": "true"},
            {"source": "big_order", "target": "done", "handle": "false"},
            {"source": "vip", "target": "done"},
        ],
    }


def seed(context: DemoSeedContext) -> None:
    """Idempotent: the journey is created once; contacts already enrolled are skipped."""
    journey = Journey.objects.filter(name=DEMO_JOURNEY_NAME).order_by("id").first()
    if journey is None:
        journey = services.journey_create(
            name=DEMO_JOURNEY_NAME,
            description="Welcome message, a label, a short pause, then wait for an order.",
            flow=demo_flow(),
            triggers=[{"type": "event", "event": "signed_up"}],
        )
    started = services.sessions_start_many(journey_id=journey.pk, contact_ids=DEMO_CONTACT_IDS)
    context.summary.append(
        f"journeys: '{journey.name}' (id {journey.pk}), "
        f"{len(started.session_ids)} {'session' if len(started.session_ids) == 1 else 'sessions'}"
        f" started, {started.skipped} already enrolled"
    )
