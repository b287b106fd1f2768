"""Every read of the deliveries app.

Reads that depend on who asks take that person as an argument and filter in the query, so a
host only ever sees their own events (anything else is "not found") and a user only the
deliveries that carry their id (D4).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from deliveries.models import (
    Event,
    EventGuest,
    FeatureFlag,
    Message,
    MessageDelivery,
    UserLinkAudit,
)
from evoflow.db import counts_by_value
from evoflow.models import User


def event_list_for_host(*, host: User) -> QuerySet[Event]:
    return Event.objects.filter(host=host)


def event_get_for_host(*, host: User, event_id: int) -> Event:
    """The host's event; Event.DoesNotExist for anyone else's, so existence never leaks."""
    return Event.objects.get(pk=event_id, host=host)


def guest_list_for_event(*, event: Event) -> QuerySet[EventGuest]:
    return EventGuest.objects.filter(event=event).order_by("id")


def guest_get_for_host(*, host: User, guest_id: int) -> EventGuest:
    """A guest of one of the host's events; EventGuest.DoesNotExist otherwise."""
    return EventGuest.objects.select_related("event").get(pk=guest_id, event__host=host)


def message_list_for_event(*, event: Event) -> QuerySet[Message]:
    return Message.objects.filter(event=event).annotate(
        delivery_count=Count("deliveries"),
        linked_count=Count("deliveries", filter=Q(deliveries__user__isnull=False)),
    )


def deliveries_for_user(*, user: User) -> QuerySet[MessageDelivery]:
    """The deliveries whose user is `user` (D4): the only rows GET /me/messages/ can show."""
    return MessageDelivery.objects.filter(user=user).select_related("message", "message__event")


def deliveries_inconsistent() -> QuerySet[MessageDelivery]:
    """Deliveries without a user whose guest is active and linked: what D1 forbids."""
    return MessageDelivery.objects.filter(
        user__isnull=True, guest__user__isnull=False, guest__removed_at__isnull=True
    )


def link_audit_outcome_counts(*, since: datetime | None = None) -> dict[str, int]:
    """Audit rows per outcome since `since` (default: the last 24 hours), every outcome listed."""
    since = since or timezone.now() - timedelta(hours=24)
    return counts_by_value(
        UserLinkAudit.objects.filter(created_at__gte=since), "outcome", UserLinkAudit.Outcome.values
    )


def feature_flag_list() -> QuerySet[FeatureFlag]:
    return FeatureFlag.objects.order_by("name")


def deliveries_to_backfill_for_guests(*, guest_ids: Iterable[int]) -> QuerySet[MessageDelivery]:
    """The deliveries of these guests that have no user yet: what linking them fills in."""
    return (
        MessageDelivery.objects.filter(guest_id__in=list(guest_ids), user__isnull=True)
        .select_related("message", "guest")
        .order_by("id")
    )


def linking_off_reason() -> str | None:
    """Why linking links nothing right now, or None: the LINK_USER_BY_PHONE flag is off."""
    name = FeatureFlag.LINK_USER_BY_PHONE
    row = FeatureFlag.objects.filter(name=name).values_list("enabled", flat=True).first()
    enabled = FeatureFlag.DEFAULTS[name] if row is None else row
    if enabled:
        return None
    return (
        f"the feature flag {name} is off, so no delivery is linked "
        "(turn it on in the admin's feature flags first)"
    )
