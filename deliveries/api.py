"""The deliveries API: hosts' events, guests and messages; a user's own messages.

Every view is thin: it parses input, asks a selector (which filters by the requesting user) or a
service, and shapes the output. Another host's event or guest is a 404, never a 403, so its
existence does not leak; `GET /me/messages/` reads only the requester's deliveries, whatever the
query string says. Which role may call which view: deliveries/permissions.py and
docs/permissions.md. Refusals are `DeliveriesError`s (domain errors), which the API's exception
handler answers with their own code and status.
"""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from deliveries import permissions, selectors, services
from deliveries.models import Event, EventGuest, MessageDelivery
from evoflow.api.fields import UNKNOWN_FIELD, ApiInputSerializer, ApiModelSerializer
from evoflow.api.pagination import CursorListApi
from evoflow.models import User


def _requester(request: Request) -> User:
    user = request.user
    assert isinstance(user, User)  # IsAuthenticated is the default permission
    return user


def _event_for(request: Request, event_id: int) -> Event:
    try:
        return selectors.event_get_for_host(host=_requester(request), event_id=event_id)
    except Event.DoesNotExist:
        raise NotFound("No such event.") from None


def _guest_for(request: Request, guest_id: int) -> EventGuest:
    try:
        return selectors.guest_get_for_host(host=_requester(request), guest_id=guest_id)
    except EventGuest.DoesNotExist:
        raise NotFound("No such guest.") from None


class EventOutput(ApiModelSerializer):
    class Meta:
        model = Event
        fields = ["id", "name", "starts_at", "created_at"]


class GuestOutput(ApiModelSerializer):
    user_id = serializers.IntegerField(allow_null=True, read_only=True)
    is_removed = serializers.SerializerMethodField()

    class Meta:
        model = EventGuest
        fields = ["id", "event_id", "name", "phone", "phone_e164", "user_id", "is_removed"]

    def get_is_removed(self, guest: EventGuest) -> bool:
        return guest.removed_at is not None


@extend_schema(tags=["events"])
class EventListCreateApi(CursorListApi):
    permission_classes = [permissions.EventsPermission]

    class EventCreateInputSerializer(ApiInputSerializer):
        name = serializers.CharField(max_length=200)
        starts_at = serializers.DateTimeField()

        class Meta:
            ref_name = "EventCreate"

    @extend_schema(
        responses=EventOutput(many=True),
        operation_id="events_list",
        summary="List my events",
        description="The events the requesting user hosts, newest first.",
    )
    def get(self, request: Request) -> Response:
        events = selectors.event_list_for_host(host=_requester(request))
        return self.paginated_response(request, events, EventOutput)

    @extend_schema(
        operation_id="events_create",
        summary="Create an event",
        description="A new event hosted by the requesting user.",
        request=EventCreateInputSerializer,
        responses={201: EventOutput},
    )
    def post(self, request: Request) -> Response:
        serializer = self.EventCreateInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        event = services.event_create(host=_requester(request), **serializer.validated_data)
        return Response(EventOutput(event).data, status=status.HTTP_201_CREATED)


@extend_schema(tags=["events"])
class EventDetailApi(APIView):
    permission_classes = [permissions.EventPermission]

    @extend_schema(
        operation_id="events_retrieve",
        summary="Read an event",
        description="One of the requesting user's events (another host's is 404).",
        responses=EventOutput,
    )
    def get(self, request: Request, event_id: int) -> Response:
        return Response(EventOutput(_event_for(request, event_id)).data)


@extend_schema(tags=["events"])
class EventGuestsApi(CursorListApi):
    permission_classes = [permissions.EventGuestsPermission]

    class GuestImportRowSerializer(ApiInputSerializer):
        name = serializers.CharField(max_length=200)
        phone = serializers.CharField(max_length=40)

    @extend_schema(
        responses=GuestOutput(many=True),
        operation_id="event_guests_list",
        summary="List an event's guests",
        description="The guests of one of the requesting user's events, newest first.",
    )
    def get(self, request: Request, event_id: int) -> Response:
        event = _event_for(request, event_id)
        guests = selectors.guest_list_for_event(event=event)
        return self.paginated_response(request, guests, GuestOutput)

    @extend_schema(
        operation_id="event_guests_import",
        summary="Import guests",
        request=inline_serializer(
            "GuestImport",
            {
                "guests": serializers.ListField(
                    child=GuestImportRowSerializer(),
                    min_length=1,
                    max_length=services.MAX_GUESTS_PER_IMPORT,
                )
            },
        ),
        responses={
            201: inline_serializer(
                "GuestImportOutput",
                {"created": serializers.IntegerField(), "guests": GuestOutput(many=True)},
            )
        },
        description=(
            "Bulk import: all rows or none. A bad row gives 400 `invalid_guest_rows` with "
            "`errors`, a list of `{index, field, reason}` (index from 0)."
        ),
    )
    def post(self, request: Request, event_id: int) -> Response:
        event = _event_for(request, event_id)
        data = request.data
        unknown = set(data) - {"guests"} if isinstance(data, dict) else set()
        if unknown:
            raise serializers.ValidationError({str(key): [UNKNOWN_FIELD] for key in unknown})
        rows = data.get("guests") if isinstance(data, dict) else None
        if isinstance(rows, list):
            # A row has a name and a phone, nothing else (as the schema says).
            extra = [
                {"index": index, "field": str(key), "reason": "unknown field"}
                for index, row in enumerate(rows)
                if isinstance(row, dict)
                for key in row
                if key not in ("name", "phone")
            ]
            if extra:
                raise services.GuestImportInvalid(extra)
        if not isinstance(rows, list) or not rows:
            raise services.GuestImportInvalid(
                [{"index": None, "field": "guests", "reason": "required"}],
                detail="`guests` must be a non-empty list of {name, phone} objects.",
            )
        guests = services.event_guests_import(event=event, rows=rows)
        return Response(
            {"created": len(guests), "guests": GuestOutput(guests, many=True).data},
            status=status.HTTP_201_CREATED,
        )


@extend_schema(tags=["events"])
class GuestDetailApi(APIView):
    permission_classes = [permissions.GuestPermission]

    class GuestUpdateInputSerializer(ApiInputSerializer):
        name = serializers.CharField(max_length=200, required=False)
        phone = serializers.CharField(max_length=40, required=False)
        is_removed = serializers.BooleanField(required=False)
        user_id = serializers.IntegerField(required=False, min_value=1)
        # Moving a guest from one user to another is deliberate: ask for it by name.
        relink = serializers.BooleanField(required=False, default=False)

        class Meta:
            ref_name = "GuestUpdate"

    @extend_schema(
        operation_id="guests_retrieve",
        summary="Read a guest",
        description="A guest of one of the requesting user's events.",
        responses=GuestOutput,
    )
    def get(self, request: Request, guest_id: int) -> Response:
        return Response(GuestOutput(_guest_for(request, guest_id)).data)

    @extend_schema(
        operation_id="guests_partial_update",
        summary="Change or link a guest",
        request=GuestUpdateInputSerializer,
        responses={
            200: GuestOutput,
            409: OpenApiResponse(description="`guest_already_linked`: send `relink: true`"),
        },
        description=(
            "Linking an unlinked guest (`user_id`) gives every delivery of the guest without a "
            "user that user, in the same transaction. A guest linked to someone else needs "
            "`relink: true` (409 `guest_already_linked` without it). Naming a `user_id` needs "
            "the permission `deliveries.link_guest_to_any_user` (operators): without it every "
            "`user_id`, existing or not, is 403 `guest_link_not_allowed`."
        ),
    )
    def patch(self, request: Request, guest_id: int) -> Response:
        guest = _guest_for(request, guest_id)
        serializer = self.GuestUpdateInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        actor = _requester(request)
        target: User | None = None
        if "user_id" in data:
            # Refused before the id is looked up: the answer is the same for every id, so a
            # host cannot learn which user ids exist.
            if not actor.has_perm(permissions.LINK_GUEST_PERMISSION):
                raise permissions.GuestLinkNotAllowed()
            target = User.objects.filter(pk=data["user_id"], is_active=True).first()
            if target is None:
                raise services.UnknownUser("No active user with that id.")
            if guest.user_id not in (None, target.pk) and not data["relink"]:
                raise services.GuestAlreadyLinked(
                    f"The guest is linked to another user; send relink: true to move it and "
                    f"its deliveries to user {target.pk}."
                )
        guest = services.guest_update(
            guest=guest,
            name=data.get("name"),
            phone=data.get("phone"),
            is_removed=data.get("is_removed"),
            actor=actor,
        )
        if target is not None:
            if data["relink"]:
                services.guest_relink_user(guest=guest, user=target, actor=actor)
            else:
                services.guest_link_user(guest=guest, user=target, actor=actor)
        guest.refresh_from_db()
        return Response(GuestOutput(guest).data)


class EventMessageOutput(serializers.Serializer):
    id = serializers.IntegerField()
    event_id = serializers.IntegerField()
    body = serializers.CharField()
    created_at = serializers.DateTimeField()
    delivery_count = serializers.IntegerField()
    linked_count = serializers.IntegerField()


@extend_schema(tags=["events"])
class EventMessagesApi(CursorListApi):
    permission_classes = [permissions.EventMessagesPermission]

    class MessageSendInputSerializer(ApiInputSerializer):
        body = serializers.CharField(max_length=5000)

        class Meta:
            ref_name = "MessageSend"

    @extend_schema(
        responses=EventMessageOutput(many=True),
        operation_id="event_messages_list",
        summary="List an event's messages",
        description="The messages sent to an event's guests, newest first, with their counts.",
    )
    def get(self, request: Request, event_id: int) -> Response:
        event = _event_for(request, event_id)
        messages = selectors.message_list_for_event(event=event)
        return self.paginated_response(request, messages, EventMessageOutput)

    @extend_schema(
        operation_id="event_messages_send",
        summary="Send a message to the guests",
        description="One delivery per guest, linked to the guest's user when there is one.",
        request=MessageSendInputSerializer,
        responses={201: EventMessageOutput},
    )
    def post(self, request: Request, event_id: int) -> Response:
        event = _event_for(request, event_id)
        serializer = self.MessageSendInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        result = services.message_send(
            event=event, sender=_requester(request), body=serializer.validated_data["body"]
        )
        message = result.message
        body = {
            "id": message.pk,
            "event_id": event.pk,
            "body": message.body,
            "created_at": message.created_at,
            "delivery_count": result.delivery_count,
            "linked_count": result.linked_count,
        }
        return Response(EventMessageOutput(body).data, status=status.HTTP_201_CREATED)


class MyMessageOutput(ApiModelSerializer):
    message_id = serializers.IntegerField()
    body = serializers.CharField(source="message.body")
    sent_at = serializers.DateTimeField(source="message.created_at")
    event = EventOutput(source="message.event")

    class Meta:
        model = MessageDelivery
        fields = ["id", "message_id", "body", "sent_at", "status", "read_at", "event"]


@extend_schema(tags=["me"])
class MyMessagesApi(CursorListApi):
    @extend_schema(
        operation_id="me_messages_list",
        summary="List my messages",
        responses=MyMessageOutput(many=True),
        description="The messages delivered to the requesting user, newest first (D4).",
    )
    def get(self, request: Request) -> Response:
        # Only the cursor and page size are read from the query string; nothing can widen
        # the filter, which is the requester's id.
        deliveries = selectors.deliveries_for_user(user=_requester(request))
        return self.paginated_response(request, deliveries, MyMessageOutput)
