"""Meta's Messenger webhook under /webhooks/."""

from django.urls import path

from conversations.webhook_views import messenger_webhook

urlpatterns = [
    path("messenger/", messenger_webhook, name="messenger-webhook"),
]
