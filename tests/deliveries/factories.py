"""Factories for the deliveries app."""

from datetime import UTC, datetime

import factory

from deliveries.models import Event, EventGuest, Message, MessageDelivery
from tests.core.factories import role_user


class EventFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Event

    name = factory.Sequence(lambda n: f"Event {n}")
    starts_at = datetime(2026, 12, 31, 19, 0, tzinfo=UTC)
    host = factory.LazyFunction(lambda: role_user("host"))


class EventGuestFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = EventGuest

    event = factory.SubFactory(EventFactory)
    name = factory.Sequence(lambda n: f"Guest {n}")
    # Valid, distinct US numbers: +1 415 555 0000 onwards (555-01xx are fictional).
    phone = factory.Sequence(lambda n: f"+1 415 555 {n % 10_000:04d}")
    user = None


class MessageFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Message

    event = factory.SubFactory(EventFactory)
    body = factory.Sequence(lambda n: f"Message {n}")
    sender = factory.LazyAttribute(lambda message: message.event.host)


class MessageDeliveryFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = MessageDelivery

    guest = factory.SubFactory(EventGuestFactory)
    message = factory.SubFactory(MessageFactory, event=factory.SelfAttribute("..guest.event"))
