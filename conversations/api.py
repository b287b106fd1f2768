"""The conversations API: conversations newest-updated first, and a conversation's messages.

Reading Messenger conversations is an operator's job: the requester needs the
`conversations.view_conversation` permission (the operators group has it), else 403. Nothing
is cached (F17 does not arise): every answer is read from PostgreSQL through indexes on
(page, updated_at, id) and (conversation, sent_at, id).
"""

from __future__ import annotations

from typing import Any

from django.utils.dateparse import parse_datetime
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import permissions, serializers
from rest_framework.exceptions import NotFound
from rest_framework.pagination import Cursor, CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from conversations import selectors
from conversations.models import Conversation, Message


class CanViewConversations(permissions.BasePermission):
    message = "Reading conversations needs the conversations.view_conversation permission."

    def has_permission(self, request: Request, view: APIView) -> bool:
        user = request.user
        return bool(
            user and user.is_authenticated and user.has_perm("conversations.view_conversation")
        )


class _CheckedCursorPagination(CursorPagination):
    """A cursor whose position is not a date-time is an invalid cursor (404, as DRF answers a
    cursor it cannot decode), not an error when the query compares it to a date column."""

    def decode_cursor(self, request: Request) -> Cursor | None:
        cursor = super().decode_cursor(request)
        if cursor is not None and cursor.position is not None:
            try:
                position = parse_datetime(str(cursor.position))
            except ValueError:
                position = None
            if position is None:
                raise NotFound(self.invalid_cursor_message)
        return cursor


class ConversationCursorPagination(_CheckedCursorPagination):
    # Newest-updated first, like the Messenger inbox; the id breaks ties.
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200
    ordering = ("-updated_at", "-id")


class MessageCursorPagination(_CheckedCursorPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500
    ordering = ("-sent_at", "-id")


class ConversationOutput(serializers.ModelSerializer):
    page_id = serializers.CharField(source="page.page_id", read_only=True)
    is_deleted = serializers.SerializerMethodField()

    class Meta:
        model = Conversation
        fields = [
            "id",
            "page_id",
            "psid",
            "thread_id",
            "participant_name",
            "last_message_text",
            "last_message_at",
            "last_message_mid",
            "message_count",
            "version",
            "is_deleted",
            "deleted_at",
            "created_at",
            "updated_at",
        ]

    def get_is_deleted(self, conversation: Conversation) -> bool:
        return conversation.deleted_at is not None


class MessageOutput(serializers.ModelSerializer):
    class Meta:
        model = Message
        fields = [
            "id",
            "mid",
            "direction",
            "is_echo",
            "app_id",
            "text",
            "attachments",
            "reply_to_mid",
            "sent_at",
            "source",
            "delivered_at",
            "read_at",
        ]


def _page_of(name: str, serializer: serializers.Serializer) -> serializers.Serializer:
    """The schema of a cursor page: `next`, `previous` (URLs or null) and `results`."""
    return inline_serializer(
        name=name,
        fields={
            "next": serializers.URLField(allow_null=True),
            "previous": serializers.URLField(allow_null=True),
            "results": serializer,
        },
    )


def _paginated(
    request: Request, view: APIView, queryset: Any, paginator: CursorPagination, serializer: type
) -> Response:
    page: list[Any] | None = paginator.paginate_queryset(queryset, request, view=view)
    return paginator.get_paginated_response(serializer(page, many=True).data)


class ConversationListApi(APIView):
    permission_classes = [CanViewConversations]

    class FilterSerializer(serializers.Serializer):
        page = serializers.RegexField(r"^[0-9]{1,64}$", required=False)
        updated_since = serializers.DateTimeField(required=False)
        include_deleted = serializers.BooleanField(required=False, default=False)

    @extend_schema(
        operation_id="conversations_list",
        parameters=[
            OpenApiParameter("page", str, description="Facebook page id"),
            OpenApiParameter("updated_since", str, description="ISO 8601 date-time"),
            OpenApiParameter("include_deleted", bool),
            OpenApiParameter("cursor", str),
            OpenApiParameter("page_size", int),
        ],
        responses=_page_of("ConversationPage", ConversationOutput(many=True)),
    )
    def get(self, request: Request) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        queryset = selectors.conversation_list(
            page_id=filters.validated_data.get("page"),
            updated_since=filters.validated_data.get("updated_since"),
            include_deleted=filters.validated_data["include_deleted"],
        )
        return _paginated(
            request, self, queryset, ConversationCursorPagination(), ConversationOutput
        )


class ConversationMessageListApi(APIView):
    permission_classes = [CanViewConversations]

    @extend_schema(
        operation_id="conversations_messages_list",
        parameters=[OpenApiParameter("cursor", str), OpenApiParameter("page_size", int)],
        responses=_page_of("MessagePage", MessageOutput(many=True)),
    )
    def get(self, request: Request, conversation_id: int) -> Response:
        conversation = selectors.conversation_get(conversation_id=conversation_id)
        if conversation is None:
            raise NotFound("No such conversation.")
        queryset = selectors.message_list(conversation=conversation)
        return _paginated(request, self, queryset, MessageCursorPagination(), MessageOutput)
