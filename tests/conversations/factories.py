"""factory-boy factories of the conversations app."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import factory

from conversations.models import (
    Conversation,
    Direction,
    FacebookPage,
    Message,
    Source,
)


class FacebookPageFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = FacebookPage
        django_get_or_create = ("page_id",)

    page_id = factory.Sequence(lambda n: str(900_000_000 + n))
    name = factory.Sequence(lambda n: f"Page {n}")
    access_token_encrypted = ""


class ConversationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Conversation

    page = factory.SubFactory(FacebookPageFactory)
    psid = factory.Sequence(lambda n: str(7_000_000_000 + n))
    participant_name = factory.Faker("name")


class MessageFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Message

    conversation = factory.SubFactory(ConversationFactory)
    page = factory.SelfAttribute("conversation.page")
    mid = factory.Sequence(lambda n: f"m_factory{n}")
    direction = Direction.INBOUND
    text = factory.Faker("sentence")
    sent_at = factory.Sequence(lambda n: datetime(2025, 3, 1, tzinfo=UTC) + timedelta(minutes=n))
    source = Source.SYNC
