"""The conversations API: routes under /api/v1/."""

from django.urls import path

from conversations.api import ConversationListApi, ConversationMessageListApi

urlpatterns = [
    path("conversations/", ConversationListApi.as_view(), name="conversation-list"),
    path(
        "conversations/<int:conversation_id>/messages/",
        ConversationMessageListApi.as_view(),
        name="conversation-message-list",
    ),
]
