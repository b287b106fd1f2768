"""Demo data: an event with guests, a message delivered to them, some deliveries linked; and a
second event, only with `seed_demo --with-backlog`, whose deliveries were written while linking
was switched off: the inconsistent backlog an operator practises a repair on from the
dashboard (without it, a fresh demo passes `integrity`)."""

from __future__ import annotations

from datetime import timedelta

from django.contrib.auth.hashers import make_password
from django.utils import timezone

from deliveries import services
from deliveries.models import Event, EventGuest, FeatureFlag
from evoflow.demo import ROLE_OPERATOR, DemoSeedContext
from evoflow.models import User

DEMO_EVENT_NAME = "Demo: summer launch party"
BACKLOG_EVENT_NAME = "Demo: spring gala (sent while linking was off)"
BACKLOG_GUESTS = 12
# Guests: (name, phone, username of the guest's own login or None, linked at import).
DEMO_GUESTS = (
    ("Ada Guest", "+1 415 555 0101", "guest-ada", True),
    ("Ben Guest", "(415) 555-0102", "guest-ben", False),
    ("Cleo Guest", "+44 20 7946 0958", None, False),
)


def _demo_user(*, username: str, phone: str, password: str) -> User:
    user, _ = User.objects.get_or_create(
        username=username, defaults={"email": f"{username}@example.com", "phone": phone}
    )
    user.phone = phone
    user.set_password(password)
    user.save(update_fields=["phone", "password"])
    return user


def seed(context: DemoSeedContext) -> None:
    """Idempotent: the event is created once; later runs only reset the guests' logins."""
    host = User.objects.get(username=context.account(ROLE_OPERATOR).username)
    logins = {
        username: _demo_user(username=username, phone=phone, password=context.password)
        for _, phone, username, _ in DEMO_GUESTS
        if username is not None
    }
    event = Event.objects.filter(host=host, name=DEMO_EVENT_NAME).first()
    if event is None:
        event = services.event_create(
            host=host, name=DEMO_EVENT_NAME, starts_at=timezone.now() + timedelta(days=14)
        )
        guests = services.event_guests_import(
            event=event, rows=[{"name": name, "phone": phone} for name, phone, _, _ in DEMO_GUESTS]
        )
        by_name = {guest.name: guest for guest in guests}
        for name, _, username, is_linked_first in DEMO_GUESTS:
            if username is not None and is_linked_first:
                services.guest_link_user(guest=by_name[name], user=logins[username], actor=host)
        services.message_send(event=event, sender=host, body="Welcome! Doors open at 7 pm.")
        # Ben gets his account after the first message: linking him backfills it.
        services.guest_link_user(guest=by_name["Ben Guest"], user=logins["guest-ben"], actor=host)
        services.message_send(event=event, sender=host, body="Reminder: bring your ticket.")
    guest_count = EventGuest.objects.filter(event=event).count()
    summary = (
        f"deliveries: event {event.name!r} (id {event.pk}) with {guest_count} guests; "
        "guests 'guest-ada' and 'guest-ben' read theirs at /api/v1/me/messages/"
    )
    if context.with_backlog:
        backlog = Event.objects.filter(host=host, name=BACKLOG_EVENT_NAME).first()
        if backlog is None:
            backlog = backlog_seed(host=host, name=BACKLOG_EVENT_NAME, guest_count=BACKLOG_GUESTS)
        summary += (
            f"; event {backlog.name!r} (id {backlog.pk}) holds the inconsistent backlog to "
            "repair from the dashboard"
        )
    context.summary.append(summary)


def backlog_seed(*, host: User, name: str, guest_count: int) -> Event:
    """An event whose guests were linked, and messaged, while `LINK_USER_BY_PHONE` was off.

    Every attempt is audited `skipped`, so the event ends with `guest_count` deliveries that
    have no user although their guest is linked: the inconsistency the
    `deliveries.unlinked_deliveries` check reports and its repair (the historical backfill)
    fixes. The flag is put back as it was, even when something fails.
    """
    flag = FeatureFlag.LINK_USER_BY_PHONE
    was_enabled = FeatureFlag.objects.filter(name=flag).values_list("enabled", flat=True).first()
    services.feature_flag_set(name=flag, enabled=False, actor=host)
    try:
        event = services.event_create(
            host=host, name=name, starts_at=timezone.now() - timedelta(days=60)
        )
        guests = services.event_guests_import(
            event=event,
            rows=[
                {"name": f"Gala guest {number:02d}", "phone": f"+1 415 555 03{number:02d}"}
                for number in range(1, guest_count + 1)
            ],
        )
        for guest in guests:
            user, _ = User.objects.get_or_create(
                username=f"gala-guest-{guest.pk}",
                defaults={"phone": guest.phone, "password": make_password(None)},
            )
            services.guest_link_user(guest=guest, user=user, actor=host)
        services.message_send(event=event, sender=host, body="Thank you for coming to the gala!")
    finally:
        services.feature_flag_set(
            name=flag, enabled=True if was_enabled is None else was_enabled, actor=host
        )
    return event
