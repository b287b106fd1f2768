"""Journey definitions: create and update, with the flow validated on every write.

The entry points are durable transactions; each `*_in_transaction` twin runs the same code
inside a transaction the caller already holds (the admin's change form).
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from journeys.flows.flow import FlowInvalid, flow_validate, triggers_validate
from journeys.models import Journey
from journeys.services.funnel import InvalidFlow, JourneyNotFound

EDITABLE_FIELDS = (
    "name",
    "description",
    "is_active",
    "flow",
    "triggers",
    "default_variables",
    "allow_reentry",
)


def journey_validate(
    *,
    flow: Any,
    triggers: Any = None,
    default_variables: Any = None,
    previous_flow: Any = None,
) -> None:
    """The one validator behind the model, the services, the API and the admin.

    `previous_flow` is the journey's stored flow when it is being changed (see
    `flow_validate`: an unchanged flow is not held to the HTTP host allow-list again).
    """
    messages: list[str] = []
    try:
        flow_validate(flow, previous_flow=previous_flow)
    except FlowInvalid as error:
        messages.extend(error.messages)
    if triggers is not None:
        try:
            triggers_validate(triggers)
        except FlowInvalid as error:
            messages.extend(f"triggers: {message}" for message in error.messages)
    if default_variables is not None and not isinstance(default_variables, dict):
        messages.append("default_variables: must be a JSON object")
    if messages:
        raise InvalidFlow("; ".join(messages), messages)


def _full_clean(journey: Journey) -> None:
    try:
        journey.full_clean()
    except ValidationError as error:
        messages = [
            f"{field}: {message}" if field != "__all__" else message
            for field, field_messages in error.message_dict.items()
            for message in field_messages
        ]
        raise InvalidFlow("; ".join(messages), messages) from error


@transaction.atomic(durable=True)
def journey_create(
    *,
    name: str,
    flow: dict[str, Any],
    description: str = "",
    is_active: bool = True,
    triggers: list[dict[str, Any]] | None = None,
    default_variables: dict[str, Any] | None = None,
    allow_reentry: bool = False,
) -> Journey:
    return journey_create_in_transaction(
        name=name,
        flow=flow,
        description=description,
        is_active=is_active,
        triggers=triggers,
        default_variables=default_variables,
        allow_reentry=allow_reentry,
    )


def journey_create_in_transaction(
    *,
    name: str,
    flow: dict[str, Any],
    description: str = "",
    is_active: bool = True,
    triggers: list[dict[str, Any]] | None = None,
    default_variables: dict[str, Any] | None = None,
    allow_reentry: bool = False,
) -> Journey:
    """`journey_create` inside the caller's transaction (the admin's change form holds one)."""
    journey_validate(flow=flow, triggers=triggers or [], default_variables=default_variables or {})
    journey = Journey(
        name=name,
        description=description,
        is_active=is_active,
        flow=flow,
        triggers=triggers or [],
        default_variables=default_variables or {},
        allow_reentry=allow_reentry,
    )
    _full_clean(journey)
    journey.save()
    journey.refresh_from_db()
    return journey


@transaction.atomic(durable=True)
def journey_update(*, journey_id: int, **changes: Any) -> Journey:
    """Change the given fields; a new flow bumps the version running workers compare with."""
    return journey_update_in_transaction(journey_id=journey_id, **changes)


def journey_update_in_transaction(*, journey_id: int, **changes: Any) -> Journey:
    """`journey_update` inside the caller's transaction (the admin's change form holds one);
    the row lock it takes lasts until that transaction ends."""
    unknown = set(changes) - set(EDITABLE_FIELDS)
    if unknown:
        raise InvalidFlow(
            f"unknown fields: {sorted(unknown)}", [f"unknown fields: {sorted(unknown)}"]
        )
    journey = Journey.objects.select_for_update().filter(pk=journey_id).first()
    if journey is None:
        raise JourneyNotFound(f"journey {journey_id} does not exist")
    previous_flow = journey.flow
    for field, value in changes.items():
        setattr(journey, field, value)
    journey_validate(
        flow=journey.flow,
        triggers=journey.triggers,
        default_variables=journey.default_variables,
        previous_flow=previous_flow,
    )
    _full_clean(journey)
    update_fields = [*changes, "updated_at"]
    if "flow" in changes:
        journey.version += 1
        update_fields.append("version")
    journey.updated_at = timezone.now()
    journey.save(update_fields=update_fields)
    return journey
