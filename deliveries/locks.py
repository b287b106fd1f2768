"""Locks of the deliveries app, taken in one place so every path agrees on their keys.

The linking triggers (their bodies are in `deliveries/sql/`) take the same transaction-level
advisory lock per event: delivery inserts shared, guest links exclusive. A service that changes
who a guest's deliveries belong to takes it exclusively too, so no delivery inserted
concurrently can be left on the previous user.
"""

from __future__ import annotations

from evoflow.db import advisory_xact_lock


def event_link_lock_key(event_id: int) -> str:
    # Must match the triggers' hashtextextended('deliveries.event:' || event_id::text, 0).
    return f"deliveries.event:{event_id}"


def event_link_lock(event_id: int) -> None:
    """Wait for, then hold until commit, the event's link lock (exclusive)."""
    advisory_xact_lock(event_link_lock_key(event_id))
