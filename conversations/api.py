"""The conversations API: conversations, their messages, and the Graph sync of a page.

Reading Messenger conversations is an operator's job: the requester needs the
`conversations.view_conversation` permission (the operators group has it), else 403. Nothing
is cached (F17 does not arise): every answer is read from PostgreSQL through indexes on
(page, updated_at, id) and (conversation, sent_at, id).

Sync runs: requesting a sync and reading runs (their status, counters and progress stream) need
`conversations.add_syncrun` (the operators group has it), else 403. A run never shows its page's
token, its lease token or anything else secret. The progress stream (server-sent events) is
in conversations/streams.py.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
)
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound, ParseError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from conversations import selectors
from conversations.models import (
    SYNC_RUN_COUNTERS,
    Conversation,
    FacebookPage,
    Message,
    SyncMode,
    SyncRun,
    SyncStatus,
)
from conversations.services.sync import SyncRunning, sync_request
from evoflow.api.fields import ApiInputSerializer, ApiModelSerializer, query_filters
from evoflow.api.pagination import CursorListApi, cursor_pagination
from evoflow.api.permissions import PermissionRequired

logger = logging.getLogger(__name__)

# A Facebook page id: digits (anything else cannot name a stored page).
PAGE_ID_REGEX = r"^[0-9]{1,64}$"


class CanViewConversations(PermissionRequired):
    permission = "conversations.view_conversation"
    message = "Reading conversations needs the conversations.view_conversation permission."


class ConversationOutput(ApiModelSerializer):
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


class MessageOutput(ApiModelSerializer):
    class Meta:
        model = Message
        ref_name = "ConversationMessageOutput"
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


@extend_schema(tags=["conversations"])
class ConversationListApi(CursorListApi):
    permission_classes = [CanViewConversations]
    # Newest-updated first, like the Messenger inbox; the id breaks ties.
    pagination_class = cursor_pagination(ordering=("-updated_at", "-id"), max_page_size=200)

    class FilterSerializer(serializers.Serializer):
        page_id = serializers.RegexField(PAGE_ID_REGEX, required=False)
        updated_since = serializers.DateTimeField(required=False)
        include_deleted = serializers.BooleanField(required=False, default=False)

    @extend_schema(
        operation_id="conversations_list",
        summary="List conversations",
        description=(
            "Conversations, most recently updated first, optionally of one Facebook page "
            "(`page_id`) and updated since a time. Soft-deleted ones only with "
            "`include_deleted=true`."
        ),
        parameters=[
            OpenApiParameter("page_id", str, description="Facebook page id", pattern=PAGE_ID_REGEX),
            OpenApiParameter(
                "updated_since",
                OpenApiTypes.DATETIME,
                description="ISO 8601 date-time with a time zone",
            ),
            OpenApiParameter("include_deleted", bool),
        ],
        # A list view with a paginator: the schema wraps it in the cursor page and adds
        # `cursor` and `page_size`, as for every list.
        responses=ConversationOutput(many=True),
    )
    def get(self, request: Request) -> Response:
        filters = query_filters(self.FilterSerializer, request)
        queryset = selectors.conversation_list(
            page_id=filters.get("page_id"),
            updated_since=filters.get("updated_since"),
            include_deleted=filters["include_deleted"],
        )
        return self.paginated_response(request, queryset, ConversationOutput)


@extend_schema(tags=["conversations"])
class ConversationMessageListApi(CursorListApi):
    permission_classes = [CanViewConversations]
    pagination_class = cursor_pagination(ordering=("-sent_at", "-id"))

    @extend_schema(
        operation_id="conversations_messages_list",
        summary="List a conversation's messages",
        description="The messages of one conversation, newest first.",
        responses=MessageOutput(many=True),
    )
    def get(self, request: Request, conversation_id: int) -> Response:
        conversation = selectors.conversation_get(conversation_id=conversation_id)
        if conversation is None:
            raise NotFound("No such conversation.")
        queryset = selectors.message_list(conversation=conversation)
        return self.paginated_response(request, queryset, MessageOutput)


# -- sync runs ----------------------------------------------------------------------------------


class CanSyncPages(PermissionRequired):
    permission = "conversations.add_syncrun"
    message = "Syncing pages and reading sync runs needs the conversations.add_syncrun permission."


# What a recorded failed batch may show: where it was and why it failed (never a URL, which
# could carry a token, nor anything else the engine may add later).
FAILED_BATCH_FIELDS = (
    "kind",
    "mode",
    "folder",
    "after",
    "thread_id",
    "error_code",
    "detail",
    "attempts",
    "at",
    "retry",
)


class SyncRunCounters(serializers.Serializer):
    api_calls = serializers.IntegerField()
    throttled_waits = serializers.IntegerField()
    conversations_seen = serializers.IntegerField()
    conversations_inserted = serializers.IntegerField()
    conversations_updated = serializers.IntegerField()
    conversations_soft_deleted = serializers.IntegerField()
    conversations_skipped = serializers.IntegerField()
    messages_inserted = serializers.IntegerField()
    events_inserted = serializers.IntegerField()
    batches_succeeded = serializers.IntegerField()


def sync_run_counters(run: SyncRun) -> dict[str, int]:
    return {name: int(getattr(run, name)) for name in SYNC_RUN_COUNTERS}


def failed_batches_public(run: SyncRun) -> list[dict[str, Any]]:
    return [
        {key: batch.get(key) for key in FAILED_BATCH_FIELDS if key in batch}
        for batch in run.failed_batches or []
        if isinstance(batch, dict)
    ]


class SyncRunOutput(ApiModelSerializer):
    """A sync run: the same shape in `GET /sync-runs/{id}/`, the list and every event of
    the progress stream."""

    page_id = serializers.CharField(source="page.page_id", read_only=True)
    mode = serializers.ChoiceField(choices=SyncMode.choices, read_only=True)
    status = serializers.ChoiceField(choices=SyncStatus.choices, read_only=True)
    has_cursor = serializers.SerializerMethodField()
    counters = serializers.SerializerMethodField()
    failed_batches = serializers.SerializerMethodField()
    failed_batch_count = serializers.SerializerMethodField()
    is_live = serializers.BooleanField(read_only=True)

    class Meta:
        model = SyncRun
        fields = [
            "id",
            "page_id",
            "mode",
            "status",
            "is_live",
            "trigger",
            "request_id",
            "created_at",
            "started_at",
            "finished_at",
            "heartbeat_at",
            "resumed_from",
            "has_cursor",
            "counters",
            "failed_batch_count",
            "failed_batches",
            "skipped",
            "error_code",
            "error",
        ]

    def get_has_cursor(self, run: SyncRun) -> bool:
        return run.cursor is not None

    @extend_schema_field(SyncRunCounters)
    def get_counters(self, run: SyncRun) -> dict[str, int]:
        return sync_run_counters(run)

    @extend_schema_field(serializers.ListField(child=serializers.DictField()))
    def get_failed_batches(self, run: SyncRun) -> list[dict[str, Any]]:
        return failed_batches_public(run)

    def get_failed_batch_count(self, run: SyncRun) -> int:
        return len(run.failed_batches or [])


def _sync_run_or_404(run_id: int) -> SyncRun:
    run = SyncRun.objects.select_related("page").filter(pk=run_id).first()
    if run is None:
        raise NotFound("No such sync run.")
    return run


@extend_schema(tags=["sync"])
class PageSyncApi(APIView):
    permission_classes = [CanSyncPages]

    class InputSerializer(ApiInputSerializer):
        mode = serializers.ChoiceField(choices=SyncMode.choices, default=SyncMode.INCREMENTAL)

        class Meta:
            ref_name = "PageSync"

    class OutputSerializer(serializers.Serializer):
        sync_run_id = serializers.IntegerField()
        page_id = serializers.CharField()
        mode = serializers.ChoiceField(choices=SyncMode.choices)
        status = serializers.ChoiceField(choices=SyncStatus.choices)
        request_id = serializers.CharField()
        url = serializers.CharField()
        stream_url = serializers.CharField()

        class Meta:
            ref_name = "PageSyncAccepted"

    @extend_schema(
        operation_id="pages_sync",
        summary="Request a sync of a page",
        description=(
            "Queues a sync of one Facebook page: 202 with the new run (follow it at `url` or "
            "`stream_url`), or 409 `sync_running` with the live run's `sync_run_id`. The body "
            "is optional; when sent it is a JSON object."
        ),
        parameters=[
            OpenApiParameter("page_id", str, OpenApiParameter.PATH, description="Facebook page id")
        ],
        request=InputSerializer,
        responses={
            202: OutputSerializer,
            400: OpenApiResponse(description="validation_error: a bad mode or body"),
            403: OpenApiResponse(description="permission_denied: needs add_syncrun"),
            404: OpenApiResponse(description="not_found: no page with this Facebook page id"),
            409: OpenApiResponse(
                description=(
                    "sync_running (with the live run's `sync_run_id`), or "
                    "reauthorization_required (the page needs a new access token)"
                ),
                examples=[
                    OpenApiExample(
                        "sync_running",
                        value={
                            "code": SyncRunning.code,
                            "detail": "A sync of page 123 is already queued or running.",
                            "sync_run_id": 42,
                        },
                    )
                ],
            ),
        },
    )
    def post(self, request: Request, page_id: str) -> Response:
        try:
            data = request.data
        except (ParseError, RecursionError) as error:
            raise serializers.ValidationError(
                {"non_field_errors": ["the body is not a JSON object"]}
            ) from error
        if not isinstance(data, dict):
            raise serializers.ValidationError(
                {"non_field_errors": ["the body is not a JSON object"]}
            )
        serializer = self.InputSerializer(data=data)
        serializer.is_valid(raise_exception=True)
        page = (
            FacebookPage.objects.filter(page_id=page_id).first()
            if PAGE_ID_PATTERN.fullmatch(page_id)
            else None
        )
        if page is None:
            raise NotFound("No such page.")
        # A page that needs re-authorisation is SyncRefused: 409 reauthorization_required.
        run, created = sync_request(
            page=page, mode=serializer.validated_data["mode"], trigger="api"
        )
        if not created:
            raise SyncRunning(
                f"A sync of page {page.page_id} is already {run.status} (run {run.pk}).",
                extra={"sync_run_id": run.pk},
            )
        body = {
            "sync_run_id": run.pk,
            "page_id": page.page_id,
            "mode": run.mode,
            "status": run.status,
            "request_id": run.request_id,
            "url": request.build_absolute_uri(f"/api/v1/sync-runs/{run.pk}/"),
            "stream_url": request.build_absolute_uri(f"/api/v1/sync-runs/{run.pk}/stream/"),
        }
        return Response(body, status=status.HTTP_202_ACCEPTED)


@extend_schema(tags=["sync"])
class SyncRunListApi(CursorListApi):
    permission_classes = [CanSyncPages]
    # Newest first; ids only grow, so the cursor is stable while runs are added.
    pagination_class = cursor_pagination(ordering="-id", max_page_size=200)

    class FilterSerializer(serializers.Serializer):
        page_id = serializers.RegexField(PAGE_ID_REGEX, required=False)
        status = serializers.ChoiceField(choices=SyncStatus.choices, required=False)
        mode = serializers.ChoiceField(choices=SyncMode.choices, required=False)

    @extend_schema(
        operation_id="sync_runs_list",
        summary="List sync runs",
        description="Sync runs, newest first, optionally of one page, status or mode.",
        parameters=[
            OpenApiParameter("page_id", str, description="Facebook page id", pattern=PAGE_ID_REGEX),
            OpenApiParameter("status", str, enum=SyncStatus.values),
            OpenApiParameter("mode", str, enum=SyncMode.values),
        ],
        responses=SyncRunOutput(many=True),
    )
    def get(self, request: Request) -> Response:
        filters = query_filters(self.FilterSerializer, request)
        runs = SyncRun.objects.select_related("page")
        if "page_id" in filters:
            runs = runs.filter(page__page_id=filters["page_id"])
        if "status" in filters:
            runs = runs.filter(status=filters["status"])
        if "mode" in filters:
            runs = runs.filter(mode=filters["mode"])
        return self.paginated_response(request, runs, SyncRunOutput)


@extend_schema(tags=["sync"])
class SyncRunDetailApi(APIView):
    permission_classes = [CanSyncPages]

    @extend_schema(
        operation_id="sync_runs_retrieve",
        summary="Read a sync run",
        description="One sync run: its status, counters and failed batches.",
        responses=SyncRunOutput,
    )
    def get(self, request: Request, run_id: int) -> Response:
        return Response(SyncRunOutput(_sync_run_or_404(run_id)).data)


# A Facebook page id: digits (anything else cannot name a stored page).
PAGE_ID_PATTERN = re.compile(r"[0-9]{1,64}")
