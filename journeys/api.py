"""The journeys REST API (docs/journeys.md): thin views over services and selectors.

Services' refusals are `JourneyError`s (domain errors): the API's exception handler answers
them with their own code and status, so no view here catches one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
    extend_schema_view,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.parsers import BaseParser, JSONParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from evoflow.api.fields import (
    ApiInputSerializer,
    ApiModelSerializer,
    OptionalTextField,
    query_filters,
)
from evoflow.api.pagination import CursorListApi
from evoflow.jsonvalues import JSON_MAX_DEPTH, UnstorableJson, json_value_check
from journeys import permissions, selectors, services
from journeys.models import Journey, JourneySession, SessionStatus
from journeys.services import JourneyNotFound, SessionNotFound


def json_value_validate(value: Any) -> None:
    try:
        json_value_check(value)
    except UnstorableJson as error:
        raise serializers.ValidationError(str(error)) from error


class JsonBodyParser(JSONParser):
    """DRF's JSON parser, with a body nested beyond the decoder's recursion limit refused as
    a validation error instead of crashing the request."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise serializers.ValidationError(
                {"non_field_errors": [f"the body nests more than {JSON_MAX_DEPTH} levels deep"]}
            ) from None


# The project's parsers, with JSON read by JsonBodyParser: every view here that takes a body.
BODY_PARSERS: list[type[BaseParser]] = [
    JsonBodyParser if parser is JSONParser else parser
    for parser in cast(list[type[BaseParser]], api_settings.DEFAULT_PARSER_CLASSES)
]


# What a flow is, as far as JSON Schema can say it; its graph rules (docs/journeys.md) are
# checked by the service and refused with 400 `invalid_flow`.
FLOW_SCHEMA = {
    "type": "object",
    "description": (
        "The journey's graph: `nodes` (`{id, type, config}`) joined by `edges` (`{source, "
        "target, handle?}`). Rules JSON Schema cannot state (known node types and their config, "
        "edges between existing nodes, one start) are answered with 400 `invalid_flow`."
    ),
    "properties": {
        "nodes": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "type": {"type": "string"},
                    "config": {"type": "object"},
                },
                "required": ["id", "type"],
            },
        },
        "edges": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "source": {"type": "string"},
                    "target": {"type": "string"},
                    "handle": {"type": "string"},
                },
                "required": ["source", "target"],
            },
        },
    },
    "required": ["nodes", "edges"],
}


@extend_schema_field(FLOW_SCHEMA)
class FlowField(serializers.JSONField):
    pass


@extend_schema_field(
    {
        "type": "array",
        "items": {"type": "object"},
        "description": "What starts the journey (docs/journeys.md); 400 `invalid_flow` if not.",
    }
)
class TriggersField(serializers.JSONField):
    pass


@extend_schema_field({"type": "object", "additionalProperties": True})
class VariablesField(serializers.JSONField):
    pass


@extend_schema_field(OpenApiTypes.UUID)
class ContactIdField(serializers.CharField):
    """A contact id (a UUID). A plain string to the serializer: the service decides what a
    valid contact id is (400 `invalid_contact_id`), so the API and every other caller answer
    alike; the schema says what it accepts."""


class JourneyOutputSerializer(ApiModelSerializer):
    flow = FlowField()
    triggers = TriggersField()
    default_variables = VariablesField()

    class Meta:
        model = Journey
        fields = (
            "id",
            "name",
            "description",
            "is_active",
            "flow",
            "triggers",
            "default_variables",
            "allow_reentry",
            "version",
            "created_at",
            "updated_at",
        )


class JourneyInputSerializer(ApiInputSerializer):
    class Meta:
        ref_name = "Journey"

    name = serializers.CharField(max_length=200)
    description = serializers.CharField(required=False, allow_blank=True)
    is_active = serializers.BooleanField(required=False)
    flow = FlowField(validators=[json_value_validate])
    triggers = TriggersField(required=False, validators=[json_value_validate])
    default_variables = VariablesField(required=False, validators=[json_value_validate])
    allow_reentry = serializers.BooleanField(required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        # The same validator as the model and the services, so the API reports the same words.
        if "flow" in attrs or "triggers" in attrs or "default_variables" in attrs:
            instance = self.instance
            services.journey_validate(
                flow=attrs.get("flow", instance.flow if instance else None),
                triggers=attrs.get("triggers", instance.triggers if instance else []),
                default_variables=attrs.get(
                    "default_variables", instance.default_variables if instance else {}
                ),
                previous_flow=instance.flow if instance else None,
            )
        return attrs


class StepOutputSerializer(serializers.Serializer):
    step_number = serializers.IntegerField()
    node_id = serializers.CharField()
    node_type = serializers.CharField()
    status = serializers.CharField()
    attempt = serializers.IntegerField()
    idempotency_key = serializers.CharField()
    started_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)
    duration_ms = serializers.FloatField(allow_null=True)
    result = serializers.JSONField(allow_null=True)
    error = OptionalTextField()


class SessionOutputSerializer(ApiModelSerializer):
    journey_id = serializers.IntegerField()
    contact_id = serializers.UUIDField()
    variables = VariablesField()

    class Meta:
        model = JourneySession
        fields: tuple[str, ...] = (
            "id",
            "journey_id",
            "contact_id",
            "status",
            "current_node_id",
            "step_count",
            "variables",
            "context",
            "wait_event",
            "wait_until",
            "error",
            "ended_reason",
            "created_at",
            "updated_at",
            "finished_at",
        )


class SessionDetailOutputSerializer(SessionOutputSerializer):
    steps = serializers.SerializerMethodField()

    class Meta(SessionOutputSerializer.Meta):
        fields: tuple[str, ...] = (*SessionOutputSerializer.Meta.fields, "steps")

    @extend_schema_field(StepOutputSerializer(many=True))
    def get_steps(self, session: JourneySession) -> list[dict[str, Any]]:
        steps = selectors.session_steps(session_id=session.pk)
        return list(StepOutputSerializer(steps, many=True).data)


@extend_schema(tags=["journeys"])
class JourneyListCreateApi(CursorListApi):
    parser_classes = BODY_PARSERS
    permission_classes = [permissions.JourneysPermission]

    @extend_schema(
        operation_id="journeys_list",
        summary="List journeys",
        description="Every journey, newest first.",
        responses=JourneyOutputSerializer(many=True),
    )
    def get(self, request: Request) -> Response:
        return self.paginated_response(request, selectors.journey_list(), JourneyOutputSerializer)

    @extend_schema(
        operation_id="journeys_create",
        summary="Create a journey",
        description="A new journey; its flow is validated (400 `invalid_flow` with `errors.flow`).",
        request=JourneyInputSerializer,
        responses={201: JourneyOutputSerializer},
    )
    def post(self, request: Request) -> Response:
        serializer = JourneyInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        permissions.http_request_nodes_check(
            user=request.user, flow=serializer.validated_data["flow"]
        )
        journey = services.journey_create(**serializer.validated_data)
        return Response(JourneyOutputSerializer(journey).data, status=status.HTTP_201_CREATED)


def _journey_or_404(journey_id: int) -> Journey:
    journey = selectors.journey_get(journey_id=journey_id)
    if journey is None:
        raise JourneyNotFound("Journey not found.")
    return journey


@extend_schema(tags=["journeys"])
class JourneyDetailApi(APIView):
    parser_classes = BODY_PARSERS
    permission_classes = [permissions.JourneyPermission]

    @extend_schema(
        operation_id="journeys_retrieve",
        summary="Read a journey",
        description="One journey (404 `journey_not_found`).",
        responses=JourneyOutputSerializer,
    )
    def get(self, request: Request, journey_id: int) -> Response:
        return Response(JourneyOutputSerializer(_journey_or_404(journey_id)).data)

    @extend_schema(
        operation_id="journeys_partial_update",
        summary="Change a journey",
        description=(
            "Changes the fields sent; a changed flow is validated (400 `invalid_flow`) and "
            "bumps `version`."
        ),
        request=JourneyInputSerializer,
        responses=JourneyOutputSerializer,
    )
    def patch(self, request: Request, journey_id: int) -> Response:
        journey = _journey_or_404(journey_id)
        serializer = JourneyInputSerializer(journey, data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        if "flow" in serializer.validated_data:
            permissions.http_request_nodes_check(
                user=request.user,
                flow=serializer.validated_data["flow"],
                previous_flow=journey.flow,
            )
        journey = services.journey_update(journey_id=journey.pk, **serializer.validated_data)
        return Response(JourneyOutputSerializer(journey).data)


@extend_schema(tags=["journeys"])
class JourneyStartApi(APIView):
    parser_classes = BODY_PARSERS
    permission_classes = [permissions.SessionStartPermission]

    class InputSerializer(ApiInputSerializer):
        contact_id = ContactIdField()
        variables = serializers.DictField(required=False, validators=[json_value_validate])

        class Meta:
            ref_name = "JourneyStart"

    @extend_schema(
        operation_id="journeys_start",
        summary="Start a journey for a contact",
        description=(
            "Starts a session of the journey for the contact (201 with its id). The contact is "
            "looked up in the CRM when it is not known yet."
        ),
        request=InputSerializer,
        responses={
            201: inline_serializer("JourneyStarted", {"session_id": serializers.IntegerField()}),
            404: OpenApiResponse(description="`journey_not_found`"),
            409: OpenApiResponse(
                description=(
                    "`journey_inactive`, `session_already_live` (the contact has a live session "
                    "of this journey) or `reentry_not_allowed`"
                )
            ),
        },
    )
    def post(self, request: Request, journey_id: int) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        session_id = services.session_start(
            journey_id=journey_id,
            contact_id=serializer.validated_data["contact_id"],
            variables=serializer.validated_data.get("variables"),
        )
        return Response({"session_id": session_id}, status=status.HTTP_201_CREATED)


@extend_schema(tags=["contact-events"])
class ContactEventApi(APIView):
    parser_classes = BODY_PARSERS
    permission_classes = [permissions.ContactEventPermission]

    class InputSerializer(ApiInputSerializer):
        name = serializers.CharField(max_length=200)
        contact_id = ContactIdField()
        properties = serializers.DictField(required=False, validators=[json_value_validate])
        message_id = serializers.CharField(max_length=200, required=False, allow_null=True)

        class Meta:
            ref_name = "ContactEvent"

    class OutputSerializer(serializers.Serializer):
        is_duplicate = serializers.BooleanField()
        started_session_ids = serializers.ListField(child=serializers.IntegerField())
        resumed_session_ids = serializers.ListField(child=serializers.IntegerField())
        skipped = serializers.ListField(child=serializers.DictField())

        class Meta:
            ref_name = "ContactEventResult"

    @extend_schema(
        operation_id="contact_events_create",
        summary="Post a contact event",
        description=(
            "An event about a contact: starts the journeys it triggers and resumes the sessions "
            "waiting for it. With a `message_id` seen before, nothing happens again "
            "(`is_duplicate`)."
        ),
        request=InputSerializer,
        responses={200: OutputSerializer},
    )
    def post(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        result = services.contact_event_ingest(**serializer.validated_data)
        return Response(self.OutputSerializer(result).data)


@extend_schema(tags=["journey-sessions"])
class SessionListApi(CursorListApi):
    permission_classes = [permissions.SessionReadPermission]

    class FilterSerializer(serializers.Serializer):
        journey = serializers.IntegerField(required=False)
        contact = serializers.UUIDField(required=False)
        status = serializers.ChoiceField(choices=SessionStatus.choices, required=False)

    @extend_schema(
        operation_id="journey_sessions_list",
        summary="List journey sessions",
        description="Sessions, newest first, optionally of one journey, contact or status.",
        parameters=[
            OpenApiParameter("journey", int, description="journey id"),
            OpenApiParameter("contact", OpenApiTypes.UUID, description="contact id"),
            OpenApiParameter("status", str, enum=SessionStatus.values),
        ],
        responses=SessionOutputSerializer(many=True),
    )
    def get(self, request: Request) -> Response:
        filters = query_filters(self.FilterSerializer, request)
        sessions = selectors.session_list(
            journey_id=filters.get("journey"),
            contact_id=filters.get("contact"),
            status=filters.get("status"),
        )
        return self.paginated_response(request, sessions, SessionOutputSerializer)


def _session_or_404(session_id: int) -> JourneySession:
    session = selectors.session_get(session_id=session_id)
    if session is None:
        raise SessionNotFound("Session not found.")
    return session


@extend_schema(tags=["journey-sessions"])
class SessionDetailApi(APIView):
    permission_classes = [permissions.SessionReadPermission]

    @extend_schema(
        operation_id="journey_sessions_retrieve",
        summary="Read a journey session",
        description="One session with its steps (404 `session_not_found`).",
        responses=SessionDetailOutputSerializer,
    )
    def get(self, request: Request, session_id: int) -> Response:
        return Response(SessionDetailOutputSerializer(_session_or_404(session_id)).data)


class _SessionActionApi(APIView):
    parser_classes = BODY_PARSERS
    permission_classes = [permissions.SessionChangePermission]

    session_action: Callable[..., JourneySession]

    def post(self, request: Request, session_id: int) -> Response:
        _session_or_404(session_id)
        session = type(self).session_action(session_id=session_id)
        return Response(SessionOutputSerializer(session).data)


def _session_action_schema(action: str, summary: str, description: str) -> Any:
    return extend_schema_view(
        post=extend_schema(
            tags=["journey-sessions"],
            operation_id=f"journey_sessions_{action}",
            summary=summary,
            description=description,
            request=None,
            responses={
                200: SessionOutputSerializer,
                404: OpenApiResponse(description="`session_not_found`"),
                409: OpenApiResponse(
                    description="`invalid_session_transition`: not possible from its status"
                ),
            },
        )
    )


@_session_action_schema("pause", "Pause a session", "Pauses a live session.")
class SessionPauseApi(_SessionActionApi):
    session_action = staticmethod(services.session_pause)


@_session_action_schema("resume", "Resume a session", "Resumes a paused session.")
class SessionResumeApi(_SessionActionApi):
    session_action = staticmethod(services.session_resume)


@_session_action_schema("cancel", "Cancel a session", "Ends a live or paused session.")
class SessionCancelApi(_SessionActionApi):
    session_action = staticmethod(services.session_cancel)
