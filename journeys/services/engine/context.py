"""What one advance run carries from step to step: `AdvanceRun`, its sessions and its report.

One `sessions_advance` call makes one `AdvanceRun`: its lease token, and what it loads once for
all of its sessions (their flows and contacts), its step limit, its time budget and its report.
Every step function of the engine takes the run and the session it works on.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from journeys.flows.flow import Flow, FlowInvalid
from journeys.flows.nodes import NodeState
from journeys.models import SessionStatus
from journeys.services.funnel import SessionWrite


@dataclass
class RunningSession:
    """A claimed session as the run knows it, moved on in memory as its writes persist."""

    id: int
    journey_id: int
    journey_version: int
    contact_id: uuid.UUID
    current_node_id: str
    step_count: int
    variables: dict[str, Any]
    context: dict[str, Any]

    def apply(self, write: SessionWrite) -> bool:
        """Carry a persisted write into the in-memory session; True while it stays active."""
        self.current_node_id = write.current_node_id
        self.step_count = write.step_count
        self.variables = write.variables
        self.context = write.context
        return write.status == SessionStatus.ACTIVE


@dataclass
class AdvanceReport:
    claimed: int = 0
    steps: int = 0
    completed: int = 0
    waiting: int = 0
    failed: int = 0
    lost: int = 0  # cancelled, paused or taken over while this worker held them
    handed_over: int = 0
    session_ids_handed_over: list[int] = field(default_factory=list)

    def count(self, write: SessionWrite) -> None:
        """Count a persisted write by the status it left its session in."""
        if write.status == SessionStatus.COMPLETED:
            self.completed += 1
        elif write.status == SessionStatus.WAITING:
            self.waiting += 1
        elif write.status == SessionStatus.FAILED:
            self.failed += 1


@dataclass
class AdvanceRun:
    """One `sessions_advance` call: its lease token and what it loaded for its sessions."""

    token: uuid.UUID
    # The flow of each session's journey, by journey id (FlowInvalid fails its sessions).
    flows: dict[int, Flow | FlowInvalid] = field(default_factory=dict)
    # The contacts' fields by id, kept up to date with the changes the run's calls make.
    contacts: dict[uuid.UUID, dict[str, Any]] = field(default_factory=dict)
    # Contacts that are still stubs (never enriched); each gets one enrichment attempt per run.
    stub_ids: set[uuid.UUID] = field(default_factory=set)
    max_steps: int = 0
    # time.monotonic() past which the run hands its remaining sessions over to a new task.
    deadline: float = math.inf
    report: AdvanceReport = field(default_factory=AdvanceReport)

    def flow_of(self, session: RunningSession) -> Flow | FlowInvalid:
        return self.flows[session.journey_id]

    def runnable_flow_of(self, session: RunningSession) -> Flow:
        """The session's flow, for a session already past `steps.pure_write` (so valid)."""
        flow = self.flows[session.journey_id]
        assert isinstance(flow, Flow)
        return flow

    def state_of(self, session: RunningSession) -> NodeState:
        """What the session's current node may read."""
        return NodeState(
            contact_id=str(session.contact_id),
            contact=self.contacts.get(session.contact_id, {}),
            variables=session.variables,
            session_id=session.id,
            step_number=session.step_count + 1,
        )

    def is_out_of_time(self) -> bool:
        return time.monotonic() > self.deadline
