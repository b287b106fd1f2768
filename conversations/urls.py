"""The conversations API: routes under /api/v1/."""

from django.urls import path

from conversations.api import (
    ConversationListApi,
    ConversationMessageListApi,
    PageSyncApi,
    SyncRunDetailApi,
    SyncRunListApi,
)
from conversations.streams import SyncRunStreamApi

urlpatterns = [
    path("conversations/", ConversationListApi.as_view(), name="conversation-list"),
    path(
        "conversations/<int:conversation_id>/messages/",
        ConversationMessageListApi.as_view(),
        name="conversation-message-list",
    ),
    path("pages/<str:page_id>/sync/", PageSyncApi.as_view(), name="page-sync"),
    path("sync-runs/", SyncRunListApi.as_view(), name="sync-run-list"),
    path("sync-runs/<int:run_id>/", SyncRunDetailApi.as_view(), name="sync-run-detail"),
    path("sync-runs/<int:run_id>/stream/", SyncRunStreamApi.as_view(), name="sync-run-stream"),
]
