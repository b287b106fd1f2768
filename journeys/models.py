"""Contacts, journeys, journey sessions, their step log and processed contact events.

The invariants of docs/invariants.md that live in the database:

- J1 every column of `Contact` but `id` has a database default or is nullable, so the funnel's
  `INSERT ... (id) ON CONFLICT DO NOTHING` always makes a valid stub row;
- J2 at most one live session per (journey, contact): a partial unique constraint;
- J3 session status moves only along `SESSION_TRANSITIONS`: a pgtrigger FSM trigger refuses any
  other change on every write path (ORM, `QuerySet.update`, raw SQL);
- J4 one step row per (session, step number): a unique constraint the engine relies on.
"""

from __future__ import annotations

import copy
import uuid
from typing import Any

import pgtrigger
from django.contrib.postgres.indexes import BrinIndex
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.db.models.functions import Now


class Contact(models.Model):
    """The local mirror of a CRM contact; a row with only `id` (a stub) is valid.

    Text fields default to "" in the database, so a stub is `INSERT ... (id)` and an empty
    string means "not known yet".
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    name = models.TextField(blank=True, default="", db_default="")
    email = models.TextField(blank=True, default="", db_default="")
    phone = models.TextField(blank=True, default="", db_default="")
    phone_e164 = models.TextField(blank=True, default="", db_default="")
    custom_attributes = models.JSONField(default=dict, db_default={}, blank=True)
    additional_attributes = models.JSONField(default=dict, db_default={}, blank=True)
    labels = models.JSONField(default=list, db_default=[], blank=True)
    is_blocked = models.BooleanField(default=False, db_default=False)
    # When the row was last filled from the CRM; NULL means a stub not yet enriched.
    crm_synced_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(db_default=Now(), editable=False)
    updated_at = models.DateTimeField(db_default=Now(), editable=False)

    class Meta:
        indexes = [
            models.Index(
                fields=["created_at"],
                name="journeys_contact_stub_idx",
                condition=Q(crm_synced_at__isnull=True),
            )
        ]

    def __str__(self) -> str:
        return self.name or str(self.id)

    @property
    def is_stub(self) -> bool:
        return self.crm_synced_at is None


class Journey(models.Model):
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True, default="", db_default="")
    is_active = models.BooleanField(default=True, db_default=True)
    # {"nodes": [{"id", "type", "config", "retry"?}], "edges": [{"source", "target", "handle"?}]}
    flow = models.JSONField(default=dict)
    # [{"type": "event", "event": "<name>", "filters": {...}}]
    triggers = models.JSONField(default=list, db_default=[], blank=True)
    default_variables = models.JSONField(default=dict, db_default={}, blank=True)
    allow_reentry = models.BooleanField(default=False, db_default=False)
    # Bumped on every flow change, so a running worker can tell its cached flow is stale.
    version = models.PositiveIntegerField(default=1, db_default=1)
    created_at = models.DateTimeField(db_default=Now(), editable=False)
    updated_at = models.DateTimeField(db_default=Now(), editable=False)

    class Meta:
        permissions = [
            (
                "run_http_request_nodes",
                "Can add and change http_request nodes",
            )
        ]

    def __str__(self) -> str:
        return self.name

    # The flow as loaded from the database (None for a new journey), so that `clean` can tell
    # whether a save changes it; set by `from_db`, Django's documented hook for this.
    _loaded_flow: Any = None

    @classmethod
    def from_db(cls, db: str | None, field_names: Any, values: Any, **kwargs: Any) -> Journey:
        journey = super().from_db(db, field_names, values, **kwargs)
        loaded = dict(zip(field_names, values, strict=True))
        journey._loaded_flow = copy.deepcopy(loaded.get("flow"))
        return journey

    def clean(self) -> None:
        from journeys.flows.flow import FlowInvalid, flow_validate, triggers_validate

        errors: dict[str, list[str]] = {}
        try:
            flow_validate(self.flow, previous_flow=self._loaded_flow)
        except FlowInvalid as error:
            errors["flow"] = error.messages
        try:
            triggers_validate(self.triggers)
        except FlowInvalid as error:
            errors["triggers"] = error.messages
        if not isinstance(self.default_variables, dict):
            errors["default_variables"] = ["must be a JSON object"]
        if errors:
            raise ValidationError(errors)


class SessionStatus(models.TextChoices):
    ACTIVE = "active"
    WAITING = "waiting"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


LIVE_STATUSES = (SessionStatus.ACTIVE, SessionStatus.WAITING, SessionStatus.PAUSED)
TERMINAL_STATUSES = (SessionStatus.COMPLETED, SessionStatus.FAILED, SessionStatus.CANCELLED)

# J3: every allowed status change. Terminal statuses have no way out.
SESSION_TRANSITIONS: tuple[tuple[str, str], ...] = (
    (SessionStatus.ACTIVE, SessionStatus.WAITING),
    (SessionStatus.ACTIVE, SessionStatus.PAUSED),
    (SessionStatus.ACTIVE, SessionStatus.COMPLETED),
    (SessionStatus.ACTIVE, SessionStatus.FAILED),
    (SessionStatus.ACTIVE, SessionStatus.CANCELLED),
    (SessionStatus.WAITING, SessionStatus.ACTIVE),
    (SessionStatus.WAITING, SessionStatus.PAUSED),
    (SessionStatus.WAITING, SessionStatus.COMPLETED),
    (SessionStatus.WAITING, SessionStatus.FAILED),
    (SessionStatus.WAITING, SessionStatus.CANCELLED),
    (SessionStatus.PAUSED, SessionStatus.ACTIVE),
    (SessionStatus.PAUSED, SessionStatus.WAITING),
    (SessionStatus.PAUSED, SessionStatus.CANCELLED),
)


class JourneySession(models.Model):
    journey = models.ForeignKey(Journey, on_delete=models.CASCADE, related_name="sessions")
    contact = models.ForeignKey(Contact, on_delete=models.CASCADE, related_name="sessions")
    status = models.CharField(
        max_length=16, choices=SessionStatus.choices, default=SessionStatus.ACTIVE
    )
    current_node_id = models.CharField(max_length=100, blank=True, default="")
    # Steps executed so far; the next step has number step_count + 1.
    step_count = models.PositiveIntegerField(default=0, db_default=0)
    variables = models.JSONField(default=dict, db_default={}, blank=True)
    context = models.JSONField(default=dict, db_default={}, blank=True)
    # What a waiting session waits for: an event name (wait_for_event), else only the clock.
    wait_event = models.CharField(max_length=200, blank=True, default="", db_default="")
    wait_filters = models.JSONField(default=dict, db_default={}, blank=True)
    wait_until = models.DateTimeField(null=True, blank=True)
    # A worker advancing the session holds a lease; an expired lease means the worker died.
    lease_token = models.UUIDField(null=True, blank=True, editable=False)
    lease_until = models.DateTimeField(null=True, blank=True, editable=False)
    error = models.JSONField(null=True, blank=True)
    ended_reason = models.CharField(max_length=200, blank=True, default="", db_default="")
    created_at = models.DateTimeField(db_default=Now(), editable=False)
    updated_at = models.DateTimeField(db_default=Now(), editable=False)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["journey", "contact"],
                condition=Q(status__in=[str(status) for status in LIVE_STATUSES]),
                name="journeys_one_live_session_per_contact",
            ),
        ]
        indexes = [
            models.Index(
                fields=["wait_until"],
                name="journeys_session_due_idx",
                condition=Q(status="waiting"),
            ),
            models.Index(
                fields=["lease_until"],
                name="journeys_session_active_idx",
                condition=Q(status="active"),
            ),
            models.Index(fields=["contact", "wait_event"], name="journeys_session_event_idx"),
            # The admin's "status is completed / failed / cancelled" lists, newest first. Ended
            # sessions never change again, so updates of live ones never touch this index; the
            # live statuses have the partial indexes above.
            models.Index(
                fields=["status", "-id"],
                name="journeys_session_ended_idx",
                condition=Q(status__in=[str(status) for status in TERMINAL_STATUSES]),
            ),
            # The integrity check's "sessions started since the previous run" (created_at never
            # changes, so the index never stops a HOT update of a step).
            BrinIndex(
                fields=["created_at"], name="journeys_session_created_brin", pages_per_range=32
            ),
        ]
        triggers = [
            pgtrigger.FSM(
                name="journeys_session_status_fsm",
                field="status",
                transitions=[(str(old), str(new)) for old, new in SESSION_TRANSITIONS],
            ),
        ]

    def __str__(self) -> str:
        return f"session {self.pk} ({self.status})"

    @property
    def is_live(self) -> bool:
        return self.status in LIVE_STATUSES


class StepStatus(models.TextChoices):
    STARTED = "started"
    COMPLETED = "completed"
    FAILED = "failed"


class JourneyStep(models.Model):
    """One node execution of a session: the session's timeline."""

    session = models.ForeignKey(JourneySession, on_delete=models.CASCADE, related_name="steps")
    step_number = models.PositiveIntegerField()
    node_id = models.CharField(max_length=100)
    node_type = models.CharField(max_length=32)
    status = models.CharField(max_length=16, choices=StepStatus.choices)
    attempt = models.PositiveIntegerField(default=1, db_default=1)
    # Sent with every outgoing call of the step, so a re-run repeats the call under the same key.
    idempotency_key = models.CharField(max_length=100, blank=True, default="", db_default="")
    started_at = models.DateTimeField(db_default=Now())
    finished_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.FloatField(null=True, blank=True)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True, default="", db_default="")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["session", "step_number"], name="journeys_one_row_per_step"
            ),
        ]
        indexes = [
            models.Index(
                fields=["started_at"],
                name="journeys_step_started_idx",
                condition=Q(status="started"),
            )
        ]

    def __str__(self) -> str:
        return f"step {self.step_number} {self.node_id} ({self.status})"


class ProcessedContactEvent(models.Model):
    """A contact event's `message_id`, recorded when first processed: a repeat is a no-op."""

    message_id = models.CharField(max_length=200, primary_key=True)
    name = models.CharField(max_length=200)
    contact_id = models.UUIDField()
    result = models.JSONField(default=dict, db_default={})
    processed_at = models.DateTimeField(db_default=Now())

    def __str__(self) -> str:
        return self.message_id


def json_object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
